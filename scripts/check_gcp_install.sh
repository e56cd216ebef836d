#!/usr/bin/env bash
# Does beamvec install beside Beam's Google Cloud extra, and does the gemini backend
# work there?
#
# A fresh venv gets `apache-beam[gcp]==2.78.0` and beamvec's `genai` extra (built from
# a copy of this checkout, so the working tree is never written to) in ONE resolver
# run, as a user would type it. Then it checks:
#   * google-cloud-aiplatform >= 1.150 (Beam's gcp extra caps it < 2; aiplatform
#     1.153+ allows google-genai 2.x, which beamvec accepts beside 3.x), and that pip
#     did not fall back to an old aiplatform to satisfy google-genai;
#   * `pip check` is clean;
#   * the gemini and vertex pipeline tests pass against beamvec's emulator on 127.0.0.1.
#
# Usage: scripts/check_gcp_install.sh [VENV_DIR]   (default: a new temp dir, removed after)
# Env:   PYTHON (default python3), BEAM_VERSION (default 2.78.0).
# It downloads ~400 MB the first time (pip's cache makes later runs faster); it is not
# part of `make test` -- see README "Install".
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
BEAM_VERSION="${BEAM_VERSION:-2.78.0}"
MIN_AIPLATFORM="1.150"
WORK="$(mktemp -d)"
VENV="${1:-$WORK/venv}"
trap 'rm -rf "$WORK"' EXIT

say() { printf '[check_gcp_install %(%H:%M:%S)T] %s\n' -1 "$*"; }

say "copying the checkout (the build must not write into it)"
mkdir -p "$WORK/src"
tar -C "$ROOT" --exclude=.venv --exclude=.git --exclude=build --exclude=dist \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=demo --exclude=results -cf - . \
    | tar -C "$WORK/src" -xf -

say "creating $VENV with $($PYTHON --version 2>&1)"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q --upgrade pip

start=$SECONDS
say "pip install apache-beam[gcp]==$BEAM_VERSION beamvec[genai] pytest"
"${PIP[@]}" install -q "apache-beam[gcp]==$BEAM_VERSION" "$WORK/src[genai]" "pytest>=8" 2>&1 \
    | grep -v -e '^WARNING: Location' || true
say "install took $((SECONDS - start)) s"

"$VENV/bin/python" - "$MIN_AIPLATFORM" <<'EOF'
import sys
from importlib.metadata import version

from packaging.version import Version

got = {name: version(name) for name in
       ("apache-beam", "google-cloud-aiplatform", "google-genai", "tenacity", "pyarrow", "beamvec")}
for name, v in got.items():
    print(f"  {name}=={v}")
if Version(got["google-cloud-aiplatform"]) < Version(sys.argv[1]):
    sys.exit(f"google-cloud-aiplatform {got['google-cloud-aiplatform']} < {sys.argv[1]}: "
             "pip backtracked it to satisfy beamvec's google-genai range")
if Version(got["google-genai"]).major not in (2, 3):
    sys.exit(f"google-genai {got['google-genai']} is outside beamvec's 2.x-3.x range")
EOF
"${PIP[@]}" check

# What Dataflow stages and its workers install: Beam's stager builds an sdist from
# --setup_file (`python -m build --no-isolation --sdist`, so build and setuptools>=77
# in the launching env); a worker whose image holds apache-beam[gcp] pip installs
# --requirements_file and then that sdist. Done here in the same venv.
say "staging setup.py as Dataflow does, installing the staged sdist and worker-requirements.txt"
"${PIP[@]}" install -q build "setuptools>=77" 2>&1 | grep -v -e '^WARNING: Location' || true
AIPLATFORM="$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("google-cloud-aiplatform"))')"
mkdir -p "$WORK/staging"
"$VENV/bin/python" - "$WORK/src/setup.py" "$WORK/staging" <<'EOF'
import sys
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.stager import Stager

Stager.create_job_resources(PipelineOptions(["--setup_file", sys.argv[1]]), sys.argv[2],
                            log_submission_env_dependencies=False)
EOF
SDIST="$(ls "$WORK"/staging/*.tar.gz)"
say "staged: $(basename "$SDIST")"
"${PIP[@]}" install -q -r "$WORK/src/runner_configs/worker-requirements.txt" 2>&1 \
    | grep -v -e '^WARNING: Location' || true
"${PIP[@]}" install -q --force-reinstall --no-deps "$SDIST" 2>&1 | grep -v -e '^WARNING: Location' || true
"${PIP[@]}" check
(cd "$WORK" && "$VENV/bin/beamvec" --help > "$WORK/help.txt")
grep -q '^  run ' "$WORK/help.txt" && say "beamvec --help: $(sed -n 1p "$WORK/help.txt")"
(cd "$WORK" && "$VENV/bin/python" - "$AIPLATFORM" <<'EOF'
import sys
from importlib.metadata import version
from pathlib import Path

import beamvec
from beamvec.backends.local import default_tokenizer_path

assert version("google-cloud-aiplatform") == sys.argv[1], "worker-requirements.txt moved aiplatform"
tokenizer = Path(default_tokenizer_path())
assert "site-packages" in beamvec.__file__ and tokenizer.is_file(), (beamvec.__file__, tokenizer)
print(f"  beamvec {version('beamvec')} from {Path(beamvec.__file__).parent}; "
      f"tokenizer.json {tokenizer.stat().st_size} bytes; google-genai {version('google-genai')}")
EOF
)

say "gemini/vertex pipeline and backend tests against the emulator"
start=$SECONDS
# From the copy: `tests/` for the helpers, beamvec imported from the venv (not src/).
cd "$WORK/src"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    tests/backends/test_genai_pipeline.py::test_gemini_backend_end_to_end \
    tests/backends/test_genai_pipeline.py::test_vertex_backend_and_multimodal_model \
    tests/backends/test_genai_backend.py
"$VENV/bin/python" -c "import beamvec; assert 'site-packages' in beamvec.__file__, beamvec.__file__"
say "tests took $((SECONDS - start)) s; OK"
