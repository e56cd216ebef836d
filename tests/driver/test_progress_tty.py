"""The live bar on a terminal: `beamvec run` in a pseudo-terminal,
one large file, progress read back frame by frame."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

FRAME = re.compile(r"beamvec: \[([#.]{20})\] ([\d,]+) records.*?\((\d+)% of input bytes done\).*?(ETA [\d,]+ s|ETA --)")


def _run_in_pty(args: list[str], timeout: float = 300.0) -> str:
    primary, secondary = os.openpty()
    proc = subprocess.Popen(args, stdin=secondary, stdout=secondary, stderr=secondary, close_fds=True)
    os.close(secondary)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([primary], [], [], timeout)
            if not ready:
                break
            try:
                data = os.read(primary, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        proc.wait(timeout=60)
        os.close(primary)
    assert proc.returncode == 0, b"".join(chunks)[-2000:]
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
def test_a_single_large_file_shows_a_moving_bar_and_an_early_eta(tmp_path: Path) -> None:
    corpus = tmp_path / "in"
    corpus.mkdir()
    with (corpus / "big.jsonl").open("w") as fh:
        for i in range(4000):
            fh.write(json.dumps({"id": str(i), "text": f"line {i} of one large file about topic {i % 13}"}) + "\n")
    screen = _run_in_pty([
        sys.executable, "-m", "beamvec.cli", "run", "--runner=DirectRunner",
        "--input", str(corpus / "*.jsonl"), "--output", str(tmp_path / "out"),
        "--split-bytes", "0", "--progress-interval", "0.1",
    ])
    frames = [FRAME.search(part) for part in screen.split("\r")]
    frames = [f for f in frames if f]
    assert len(frames) >= 3, screen[-2000:]
    percents = [int(f.group(3)) for f in frames]
    assert percents == sorted(percents) and percents[-1] > percents[0]  # it moves, forward only
    with_eta = [int(f.group(3)) for f in frames if f.group(4) != "ETA --"]
    assert with_eta and with_eta[0] <= 10  # an ETA from the first tenth of the input on
    bars = [f.group(1) for f in frames]
    assert bars[-1].count("#") > bars[0].count("#")
    assert "\x1b[2K" in screen  # the line is rewritten in place, not scrolled
    assert "complete: _SUCCESS written" in screen
