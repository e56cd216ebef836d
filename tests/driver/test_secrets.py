"""The API key never leaves the driver's environment: not in the pipeline that is
shipped to workers, the pipeline options, the logs, the terminal, the manifest
or the Parquet files.

Beam ships DoFns as base64(bz2(pickle)) inside the pipeline proto, so a plain
substring search of ``to_runner_api()`` bytes would find nothing even if the
key were there. ``layers()`` peels every base64 run and compressed stream,
recursively, and each check proves it can see through them with a marker
that *is* pickled into the DoFns (part of the output path).

The pipeline checked is the one ``beamvec.driver.job.run_job`` builds: ``beam.Pipeline``
is replaced by a subclass that records ``to_runner_api()`` when ``run()`` is
called. By then run_job has run the backend's preflight, so the GenaiBackend
in the pipeline is loaded and holds the key in memory (asserted): the state
in which pickling it would leak.
"""

from __future__ import annotations

import base64
import bz2
import json
import logging
import pickle
import re
import secrets
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.pipeline import PipelineVisitor

from beamvec.backends.genai import GenaiBackend
from beamvec.cli import main
from beamvec.emulator.server import Emulator
from beamvec.pipeline.transforms import EmbedCorpus

from helpers import ROOT, assert_reconciled, read_output

CONFIGS = ROOT / "runner_configs"


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    value = "fakekey-TESTSECRET-" + secrets.token_hex(16)
    monkeypatch.setenv("GEMINI_API_KEY", value)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    return value


@pytest.fixture
def marker() -> str:
    """Not a secret: part of the output path, so it is pickled into the DoFns."""
    return "visiblemarker" + secrets.token_hex(8)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    for shard in range(2):
        lines = [json.dumps({"id": f"s{shard}-{i}", "text": f"secret-free sentence {i} of shard {shard}"})
                 for i in range(12)]
        lines += ['{"id": "broken", "text": ', '{"id": "blank", "text": " "}']
        (root / f"part-{shard}.jsonl").write_text("\n".join(lines) + "\n")
    return root


# -- seeing through Beam's encodings --------------------------------------------

_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]{16,}={0,2}")


def _decompressed(raw: bytes) -> Iterator[bytes]:
    """What a bz2 or zlib stream at the start of ``raw`` holds (trailing bytes ignored)."""
    for opener in (bz2.BZ2Decompressor, zlib.decompressobj):
        try:
            data = opener().decompress(raw)
        except (OSError, zlib.error, ValueError):
            continue
        if data:
            yield data


def layers(blob: bytes, depth: int = 0) -> Iterator[bytes]:
    """``blob`` and everything base64 runs and compressed streams inside it decode to."""
    yield blob
    if depth >= 4:
        return
    for match in _BASE64_RUN.finditer(blob):
        run = match.group()
        # A run may start with a byte of the protobuf framing before it: try each alignment.
        for start in range(4):
            chunk = run[start:]
            chunk = chunk[: len(chunk) // 4 * 4]
            try:
                raw = base64.b64decode(chunk, validate=True)
            except ValueError:
                continue
            yield raw
            for data in _decompressed(raw):
                yield from layers(data, depth + 1)
        for data in _decompressed(run):
            yield from layers(data, depth + 1)


def found_in(needle: str, *blobs: bytes | str) -> bool:
    target = needle.encode()
    for blob in blobs:
        data = blob.encode() if isinstance(blob, str) else blob
        if any(target in layer for layer in layers(data)):
            return True
    return False


def test_layers_sees_through_beams_pickles(marker: str) -> None:
    from apache_beam.internal import pickler

    payload = pickler.dumps({"hidden": marker})  # base64(bz2(cloudpickle))
    framed = b"\x12\x8a\x01A" + payload + b"R\x05beam:"  # as inside a serialized proto
    assert marker.encode() not in framed
    assert found_in(marker, framed)
    assert not found_in("fakekey-TESTSECRET-absent", framed)


# -- what a run leaves behind -------------------------------------------------


def output_blobs(root: Path) -> list[bytes]:
    """Every file under ``root`` as bytes, and each Parquet file's footer and rows."""
    blobs = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        blobs.append(path.read_bytes())
        if path.suffix == ".parquet":
            pf = pq.ParquetFile(path)
            blobs.append(repr(pf.metadata.metadata).encode())
            blobs.append(repr(pf.schema_arrow).encode())
            blobs.append(json.dumps(pf.read().to_pylist(), default=str).encode())
    return blobs


def log_blobs(caplog: pytest.LogCaptureFixture) -> list[str]:
    blobs = [caplog.text]
    for record in caplog.records:
        blobs.append(record.getMessage())
        blobs.append(repr(record.args))
        if record.exc_text:
            blobs.append(record.exc_text)
    return blobs


class Captured:
    """What ``run_job``'s pipeline looked like when ``run()`` was called."""

    def __init__(self) -> None:
        self.proto: bytes = b""
        self.options: str = ""
        self.options_pickle: bytes = b""
        self.transforms: list[EmbedCorpus] = []
        self.before_run: Callable[[], None] | None = None


class _FindEmbedCorpus(PipelineVisitor):
    def __init__(self) -> None:
        self.found: list[EmbedCorpus] = []

    def enter_composite_transform(self, transform_node: Any) -> None:
        if isinstance(transform_node.transform, EmbedCorpus):
            self.found.append(transform_node.transform)


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Captured:
    record = Captured()
    real = beam.Pipeline

    class CapturingPipeline(real):  # type: ignore[misc, valid-type]
        def run(self, test_runner_api: Any = "AUTO") -> Any:
            record.proto = self.to_runner_api().SerializeToString()
            record.options = json.dumps(
                self._options.get_all_options(retain_unknown_options=True), default=str
            )
            record.options_pickle = pickle.dumps(self._options)
            finder = _FindEmbedCorpus()
            self.visit(finder)
            record.transforms = finder.found
            if record.before_run:
                record.before_run()
            return super().run(test_runner_api)

    monkeypatch.setattr(beam, "Pipeline", CapturingPipeline)
    return record


def assert_nowhere(secret: str, *blobs: bytes | str) -> None:
    for i, blob in enumerate(blobs):
        assert not found_in(secret, blob), f"the secret is in blob {i}: {str(blob)[:200]!r}"


# -- the runs ---------------------------------------------------------------------


@pytest.mark.slow
def test_local_run_leaks_nothing(
    key: str, marker: str, corpus: Path, tmp_path: Path, captured: Captured,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    out = tmp_path / f"out-{marker}"
    code = main([
        "run", "--runner=DirectRunner", "--input", str(corpus / "*.jsonl"), "--output", str(out),
        "--storage-option", "auto_mkdir=true",
    ])
    stdout, stderr = capfd.readouterr()
    assert code == 0, stderr
    result = read_output(str(out))
    assert_reconciled(result)
    assert result["dead"], "the bad records should have been dead-lettered"
    assert found_in(marker, captured.proto), "the check cannot see inside the pickled DoFns"
    assert_nowhere(
        key, captured.proto, captured.options, captured.options_pickle, stdout, stderr,
        *log_blobs(caplog), *output_blobs(out),
    )


def _gemini_flags(corpus: Path, out: Path, emulator: Emulator, *extra: str) -> list[str]:
    return [
        "run", "--config", str(CONFIGS / "portable.yaml"),  # the Runner API path
        "--input", str(corpus / "*.jsonl"), "--output", str(out),
        "--backend", "gemini", "--api-base-url", emulator.url, "--api-version", "v1beta",
        "--output-dimensionality", "16", "--storage-option", "auto_mkdir=true", *extra,
    ]


@pytest.mark.slow
@pytest.mark.parametrize("failing", [False, True], ids=["embedded", "all-batches-fail"])
def test_gemini_run_leaks_nothing(
    key: str, marker: str, corpus: Path, tmp_path: Path, captured: Captured,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], failing: bool,
) -> None:
    """The key is used for real here: the emulator refuses any other. With
    ``failing``, every embedding call after the preflight gets a 500, so the
    error messages end up in the dead letters."""
    caplog.set_level(logging.DEBUG)
    out = tmp_path / f"out-{marker}"
    with Emulator(api_key=key) as emulator:
        if failing:
            captured.before_run = lambda: emulator.update(fail_500=1.0)
        code = main(_gemini_flags(corpus, out, emulator, "--max-attempts", "1"))
        requests = emulator.stats()["requests"]
    stdout, stderr = capfd.readouterr()
    assert code == 0, stderr
    assert requests >= 2  # preflight and at least one batch, with the key
    result = read_output(str(out))
    assert_reconciled(result)
    reasons = {row["reason"] for table in result["dead"].values() for row in table.to_pylist()}
    if failing:
        # only the preflight's text, embedded before the failures began
        assert sum(t.num_rows for t in result["vectors"].values()) == 1
        assert "embed_failed" in reasons
    else:
        assert sum(t.num_rows for t in result["vectors"].values()) == 24
    (transform,) = captured.transforms
    assert isinstance(transform.backend, GenaiBackend)
    # Loaded by the preflight on this machine: the key sits in the object being pickled.
    assert transform.backend._secret == key
    assert found_in(marker, captured.proto), "the check cannot see inside the pickled DoFns"
    assert_nowhere(
        key, captured.proto, captured.options, captured.options_pickle, stdout, stderr,
        *log_blobs(caplog), *output_blobs(out),
    )


def test_rejected_key_is_not_echoed(
    key: str, corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A wrong key stops the run at the preflight with one line that does not repeat it."""
    caplog.set_level(logging.DEBUG)
    with Emulator(api_key="fakekey-THE-RIGHT-KEY-" + secrets.token_hex(8)) as emulator:
        code = main(_gemini_flags(corpus, tmp_path / "out", emulator))
    stdout, stderr = capfd.readouterr()
    assert code == 1
    assert "key" in stderr.lower()
    assert_nowhere(key, stdout, stderr, *log_blobs(caplog))


@pytest.mark.slow
def test_storage_option_credentials_are_refused_before_anything_ships(
    corpus: Path, tmp_path: Path, captured: Captured, capsys: pytest.CaptureFixture[str],
) -> None:
    secret = "storage-secret-" + secrets.token_hex(8)
    for option in (f"token={secret}", f"secret={secret}", f"client_kwargs.aws_secret_access_key={secret}"):
        code = main([
            "run", "--runner=DirectRunner", "--input", str(corpus / "*.jsonl"),
            "--output", str(tmp_path / "out"), "--storage-option", option,
        ])
        _, err = capsys.readouterr()
        assert code == 2 and "credential" in err and secret not in err
    assert captured.proto == b"" and not (tmp_path / "out").exists()

