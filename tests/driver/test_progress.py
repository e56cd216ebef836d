"""Progress: counters add up across threads; the reporter prints lines off a terminal."""

from __future__ import annotations

import io
import json
import threading

import pytest

from beamvec.progress import (
    PROGRESS,
    Estimate,
    Progress,
    Reporter,
    Window,
    done_fraction,
    format_line,
)

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
    state = {"records": 500, "shards": 1, "bytes": 250, "retries": 3, "throttled_429": 2}
    line = format_line(state, 4, 0.25, Estimate(50.0, 30.0))
    assert "500 records" in line and "shards 1/4" in line and "25%" in line
    assert "50.0 records/s" in line and "ETA 30 s" in line and "retries 3" in line and "429s 2" in line
    assert "ETA --" in format_line(state, 4, 0.25, Estimate(0.0, None))


def _simulate(progress_at, seconds: float, step: float = 0.5) -> list[tuple[float, Estimate, float]]:
    """A Window fed every ``step`` s with the share done ``progress_at(t)``
    and records written in proportion (1,000 in all)."""
    window, seen = Window(), []
    t = 0.0
    while t < seconds:
        share = progress_at(t)
        seen.append((t, window.add(t, 1000 * share, share), share))
        t += step
    return seen


@pytest.mark.parametrize("stall", [0.0, 10.0, 40.0])
def test_eta_converges_on_a_run_of_known_length(stall):
    """A 60 s run of steady work after ``stall`` s of start-up (model load,
    a reused stretch): once a window of work is seen, the ETA is within a
    fifth of the time truly left, or within 2 s at the very end. An ETA
    from the average since the start is off by the stall's share."""
    total = stall + 60.0

    def share(t: float) -> float:
        return min(1.0, max(0.0, (t - stall) / 60.0))

    checked = 0
    for t, estimate, done in _simulate(share, total):
        if t < stall + 20.0 or done >= 1.0:
            continue
        left = total - t
        assert estimate.eta is not None and abs(estimate.eta - left) <= max(0.2 * left, 2.0), (t, estimate)
        assert estimate.rate == pytest.approx(1000 / 60.0, rel=0.05)  # records/s now, not on average
        checked += 1
    assert checked > 20


def test_rate_does_not_halve_while_the_run_goes_on():
    """The rate since the start once halved as the run went on (49.8,
    then 24.9): at a steady 50 records/s the window says 50 at any time."""
    seen = _simulate(lambda t: min(1.0, t / 400.0), 400.0)
    rates = [e.rate for t, e, _ in seen if t >= 30]
    assert min(rates) == pytest.approx(1000 / 400, rel=0.01) and max(rates) == pytest.approx(1000 / 400, rel=0.01)


def test_a_stalled_run_has_no_eta_after_a_window_of_nothing():
    window = Window(seconds=10)
    window.add(0.0, 0, 0.0)
    assert window.add(5.0, 100, 0.5).eta == pytest.approx(5.0)
    assert window.add(16.0, 100, 0.5).eta is None  # nothing moved for a whole window
    assert window.add(16.0, 100, 0.5).rate == 0.0


def test_quota_waits_of_threads_count_as_wall_time():
    """Four threads each waiting the same 10 s wait 10 s of the run, not 40
    (a 78.7 s run once said "throttled 517.6 s")."""
    progress = Progress()
    for _ in range(4):
        progress.waited(10.0, now=110.0)  # [100, 110] four times
    progress.waited(5.0, now=112.0)  # [107, 112]: 2 s more
    progress.waited(1.0, now=111.0)  # inside what is counted
    progress.waited(3.0, now=120.0)  # [117, 120]: 3 s more
    assert progress.read()["throttled_wall_ms"] == pytest.approx(15_000.0)


def test_reporter_prints_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    with Reporter(2, 100, stream=stream, interval=0.01):
        PROGRESS.add_records(7)
        threading.Event().wait(0.1)
    lines = stream.getvalue().splitlines()
    assert lines and all(line.startswith("beamvec: ") for line in lines)
    assert "7 records" in lines[-1] and "\r" not in stream.getvalue()


@pytest.mark.slow
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
    assert done_fraction(state, 1000) == pytest.approx(0.3)  # the estimate dips
    assert "(50% of input bytes done)" in reporter._line()
    PROGRESS.add_done(100)
    assert "(60% of input bytes done)" in reporter._line()
    PROGRESS.reset()
