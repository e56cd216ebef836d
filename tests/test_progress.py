"""Progress: counters add up across threads; the reporter prints lines off a terminal."""

from __future__ import annotations

import io
import json
import threading

from beamvec.progress import PROGRESS, Progress, Reporter, format_line

from helpers import run_cli


def test_counters_add_up_across_threads():
    progress = Progress()
    progress.watch(lambda: {"retries": 2, "throttled_429": 1})
    threads = [threading.Thread(target=lambda: [progress.add_records() for _ in range(1000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    progress.shard_done(100)
    state = progress.read()
    assert (state["records"], state["shards"], state["bytes"], state["retries"]) == (4000, 1, 100, 2)


def test_line_has_rate_eta_retries_and_429s():
    line = format_line({"records": 500, "shards": 1, "bytes": 250, "retries": 3, "throttled_429": 2}, 4, 1000, 10.0)
    assert "500 records" in line and "shards 1/4" in line and "25%" in line
    assert "50.0 records/s" in line and "ETA 30 s" in line and "retries 3" in line and "429s 2" in line


def test_reporter_prints_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    with Reporter(2, 100, stream=stream, interval=0.01):
        PROGRESS.add_records(7)
        threading.Event().wait(0.1)
    lines = stream.getvalue().splitlines()
    assert lines and all(line.startswith("beamvec: ") for line in lines)
    assert "7 records" in lines[-1] and "\r" not in stream.getvalue()


def test_run_shows_progress_unless_quiet(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text(
        "".join(json.dumps({"id": str(i), "text": f"sentence {i} " * 4}) + "\n" for i in range(300))
    )
    args = ["run", "--input", str(tmp_path / "in" / "*"), "--runner=DirectRunner", "--progress-interval", "0.05"]
    code, _, err = run_cli(capsys, *args, "--output", str(tmp_path / "o"))
    assert code == 0
    lines = [line for line in err.splitlines() if line.startswith("beamvec: ")]
    assert lines and "records/s" in lines[-1] and "shards" in lines[-1]
    code, _, err = run_cli(capsys, *args, "--output", str(tmp_path / "q"), "--quiet")
    assert code == 0 and "beamvec: " not in err


def test_the_reporter_shows_the_share_done_forward_only():
    """Reading 100 more records before any is written lowers the estimate
    (half the records read are written, not all); the line keeps what it showed."""
    reporter = Reporter(1, 1000, stream=io.StringIO())
    PROGRESS.reset()
    PROGRESS.add_records(100)
    PROGRESS.add_done(100)
    PROGRESS.add_bytes(500)
    assert "(50% of input bytes done)" in reporter._line()
    PROGRESS.add_records(100)
    PROGRESS.add_bytes(100)
    state = PROGRESS.read()
    assert "(30% of input bytes done)" in format_line(state, 1, 1000, 1.0)  # the estimate dips
    assert "(50% of input bytes done)" in reporter._line()
    PROGRESS.add_done(100)
    assert "(60% of input bytes done)" in reporter._line()
    PROGRESS.reset()
