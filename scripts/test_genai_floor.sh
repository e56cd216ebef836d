#!/usr/bin/env bash
# The gemini/vertex backends at the google-genai versions where the SDK's routing changes.
#
# The project venv (`make test`) holds the newest google-genai 3.x; this builds small
# venvs with the lowest version pyproject.toml's `genai` extra allows (2.x, what
# google-cloud-aiplatform and so apache-beam[gcp] accept), with 3.3.0 (the last that
# sends a Vertex gemini-embedding-001 to :predict, one text a call) and with 3.4.0 (the
# first that sends it to :batchEmbedContents), and runs the SDK-facing tests against
# beamvec's emulator there. CI runs it after `make test` (.ci/run).
#
# How the small venv stays small (seconds, not the minutes a full install takes):
# google-genai==<version> is installed WITH its own dependencies (resolved by pip against
# that release's requirements: httpx instead of httpx2, websockets<17, ...) into the new
# venv; everything else (Beam, numpy, pyarrow, pytest, ...) comes from the project venv
# through one .pth line, which appends its site-packages AFTER the new venv's own, so
# the small venv's google-genai and its dependencies win. The .pth line is written only
# after pip is done, so pip never sees (or uninstalls) the project venv's google-genai.
# beamvec itself is imported from this checkout's src/ (PYTHONPATH), the tests from tests/.
#
# Usage: scripts/test_genai_floor.sh [PROJECT_VENV]   (default .venv)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MAIN_VENV="$(cd "${1:-$ROOT/.venv}" && pwd)"
MAIN_PY="$MAIN_VENV/bin/python"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
start=$SECONDS
say() { printf '[genai floor %(%H:%M:%S)T +%ds] %s\n' -1 "$((SECONDS - start))" "$*"; }

# The floor, read from pyproject.toml so this never drifts from what we declare.
FLOOR="$("$MAIN_PY" - "$ROOT/pyproject.toml" <<'EOF'
import sys, tomllib
from packaging.requirements import Requirement

extra = tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]["genai"]
(req,) = [Requirement(r) for r in extra if Requirement(r).name == "google-genai"]
(low,) = [s.version for s in req.specifier if s.operator == ">="]
print(low)
EOF
)"
say "lowest google-genai allowed by pyproject.toml: $FLOOR"

# One small venv per version, the SDK-facing tests run there against the emulator.
check_version() {
    local want="$1"; shift
    local small="$WORK/venv-$want"
    "$MAIN_PY" -m venv --without-pip "$small"
    "$MAIN_PY" -m pip --python "$small/bin/python" install -q "google-genai==$want" 2>&1 \
        | grep -v '^WARNING: Location' || true
    local site
    site="$("$small/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    "$MAIN_PY" -c 'import site; print("\n".join(site.getsitepackages()))' > "$site/_project_venv.pth"
    say "google-genai $want: small venv ready"

    # What the tests will import: google-genai at $want, beamvec from src/, Beam from the project.
    PYTHONPATH="$ROOT/src" "$small/bin/python" - "$want" "$ROOT/src" <<'EOF2'
import sys
from importlib.metadata import version

import apache_beam
from packaging.version import Version
import beamvec
from google import genai

want, src = sys.argv[1], sys.argv[2]
assert Version(genai.__version__) == Version(version("google-genai")) == Version(want), want
assert beamvec.__file__.startswith(src), beamvec.__file__
print(f"  google-genai {genai.__version__} ({genai.__file__})")
print(f"  beamvec from {beamvec.__file__}; apache-beam {apache_beam.__version__}")
EOF2
    "$MAIN_PY" -m pip --python "$small/bin/python" check 2>&1 | grep -i genai && {
        echo "google-genai $want's requirements are not met in its small venv" >&2; exit 1; } || true
    (cd "$ROOT" && PYTHONPATH="$ROOT/src" "$small/bin/python" -m pytest -q -p no:cacheprovider "$@")
    say "google-genai $want: done"
}

# The floor runs every SDK-facing test; 3.3 (the last release that sends a Vertex
# gemini-embedding-001 to :predict) and 3.4 (the first that sends it to
# :batchEmbedContents) run the backend's tests, where routing is checked. The newest
# release is the project venv's own (make test).
check_version "$FLOOR" \
    tests/backends/test_genai_backend.py tests/backends/test_google_errors.py tests/emulator/test_emulator_batch.py \
    tests/batchapi/test_batch_api.py \
    "tests/backends/test_genai_pipeline.py::test_gemini_backend_end_to_end" \
    "tests/backends/test_genai_pipeline.py::test_vertex_backend_and_multimodal_model"
for want in 3.3.0 3.4.0; do
    check_version "$want" tests/backends/test_genai_backend.py
done
say "done"
