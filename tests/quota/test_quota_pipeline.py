"""Quota, backoff and faults end to end against the emulator: nothing lost,
nothing embedded twice, the shared quota respected in every window."""

from __future__ import annotations

import pytest

from beamvec.emulator.server import Emulator
from beamvec.quota import Limiter
from beamvec.records import content_hash

from helpers import (
    assert_reconciled,
    beam_run,
    billed_texts,
    jsonl,
    read_output,
    vectors_by_id,
    write_jsonl,
)

KEY = "fakekey-FAKE-quota-key-00000000000000000"
pytestmark = pytest.mark.slow  # every test runs the whole pipeline against the emulator


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    root = tmp_path / "corpus"
    root.mkdir()
    texts = {f"r{i}": f"quota test sentence number {i}" for i in range(2000)}
    items = list(texts.items())
    for s in range(4):
        (root / f"s{s}.jsonl").write_text(jsonl(dict(items[s::4])))
    return root, texts


def _args(root, out, emu, *extra):
    return [
        "--input", str(root / "*.jsonl"), "--output", str(out), "--backend", "gemini",
        "--api-base-url", emu.url, "--output-dimensionality", "768", *extra,
    ]


def _exactly_once(emu, texts):
    counts = billed_texts(emu)
    assert set(counts) == {content_hash(t) for t in texts.values()}
    assert max(counts.values()) == 1


def test_429_storm_ends_with_everything_embedded_once(corpus, tmp_path, capsys):
    root, texts = corpus
    # The server allows 4 requests a second; beamvec is told nothing of it.
    with Emulator(api_key=KEY, rpm=4, window_s=1.0) as emu:
        code, stdout, err = beam_run(capsys, *_args(root, tmp_path / "o", emu, "--max-in-flight", "6"))
        stats = emu.stats()
        assert code == 0, err
        _exactly_once(emu, texts)
    assert stats["by_status"].get("429", stats["by_status"].get(429, 0)) > 0
    out = read_output(str(tmp_path / "o"))
    assert_reconciled(out)
    assert out["manifest"]["totals"]["dead_lettered"] == 0


def test_the_workers_limiter_is_told_when_the_preflight_was_sent(corpus, tmp_path, capsys, monkeypatch):
    """The driver's preflight is a request in the server's window when the
    worker starts: the limiter it builds is told how long ago it was sent,
    once, after the server saw it (an order of events, not a clock)."""
    root, texts = corpus
    told: list[tuple[float, int]] = []  # (seconds ago, requests the server had seen)
    sent_before = Limiter.sent_before

    with Emulator(api_key=KEY, rpm=600, window_s=6.0) as emu:

        def spy(self: Limiter, seconds_ago: float) -> None:
            told.append((seconds_ago, emu.stats(with_texts=False)["requests"]))
            sent_before(self, seconds_ago)

        monkeypatch.setattr(Limiter, "sent_before", spy)
        code, _, err = beam_run(capsys, *_args(root, tmp_path / "o", emu, "--quota-rpm", "600"))
        _exactly_once(emu, texts)
    assert code == 0, err
    assert len(told) == 1
    seconds_ago, seen = told[0]
    assert seconds_ago >= 0.0 and seen >= 1  # the preflight had reached the server


def test_two_processes_share_the_quota(corpus, tmp_path, capsys):
    root, texts = corpus
    window, quota = 2.0, 6
    with Emulator(api_key=KEY, rpm=quota, window_s=window) as emu:
        code, _, err = beam_run(
            capsys, *_args(root, tmp_path / "o", emu,
                           "--quota-rpm", str(quota), "--quota-window", str(window), "--max-in-flight", "4"),
            "--direct_running_mode=multi_processing", "--direct_num_workers=2",
        )
        stats = emu.stats()
        assert code == 0, err
        _exactly_once(emu, texts)
    # 20 requests (+1 preflight from the driver) at 6 per 2 s: several windows.
    # Each process paces its half; on a loaded machine a request its limiter
    # let go can still reach the server late, beside the next one, so allow a
    # late arrival per process. Unshared, two processes would send 12 a window.
    late = 2
    assert stats["peak_window_requests"]["all"] <= quota + 1 + late
    assert stats["by_status"].get("429", stats["by_status"].get(429, 0)) <= late
    assert_reconciled(read_output(str(tmp_path / "o")))


def test_503s_and_hangs_are_retried(corpus, tmp_path, capsys):
    root, texts = corpus
    with Emulator(api_key=KEY, fail_503=0.2, hang=0.1, hang_s=3.0, reset=0.05, seed=11) as emu:
        code, _, err = beam_run(
            capsys, *_args(root, tmp_path / "o", emu, "--request-timeout", "1.5",
                           "--max-attempts", "25", "--max-in-flight", "4"),
        )
        stats = emu.stats()
        assert code == 0, err
        _exactly_once(emu, texts)
    assert stats["faults"]
    out = read_output(str(tmp_path / "o"))
    assert_reconciled(out)
    assert out["manifest"]["totals"]["dead_lettered"] == 0


def test_texts_a_stricter_server_counts_too_long_are_dead_lettered_without_bisection(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    texts = {f"r{i}": f"short text {i}" for i in range(100)}
    bad = {"r7", "r42", "r93"}
    for rid in bad:
        texts[rid] = "this one is far too long for the server " * 10  # ~400 chars
    write_jsonl(tmp_path / "in" / "a.jsonl", texts)
    # A server stricter than the client's limits: 50 tokens (200 chars) a text.
    with Emulator(api_key=KEY, max_text_tokens=50) as emu:
        code, _, err = beam_run(capsys, *_args(tmp_path / "in", tmp_path / "o", emu))
        requests = emu.stats()["requests"]
    assert code == 0, err
    out = read_output(str(tmp_path / "o"))
    assert_reconciled(out)
    assert set(vectors_by_id(out)) == set(texts) - bad
    (dead,) = out["dead"].values()
    rows = dead.to_pylist()
    assert {r["id"] for r in rows} == bad
    assert {r["reason"] for r in rows} == {"text_too_long"} and {r["status"] for r in rows} == {400}
    # the longest sent alone, then the rest: two calls a text, never a bisection
    # (a bisection of 100 texts for 3 culprits takes about 20 calls)
    assert requests <= 2 + 2 * len(bad) + 1


@pytest.mark.parametrize("told", [True, False])
def test_a_one_second_window_costs_few_429s(corpus, tmp_path, capsys, told):
    """The server meters 10 requests a second. Told that quota, beamvec spaces
    its requests evenly (no one-second burst); told nothing, it finds the
    limit from the first 429s. 20 requests either way: a few seconds."""
    root, texts = corpus
    flags = ("--quota-rpm", "10", "--quota-window", "1") if told else ()
    with Emulator(api_key=KEY, rpm=10, window_s=1.0, latency_ms=50) as emu:
        code, _, err = beam_run(
            capsys, *_args(root, tmp_path / "o", emu, *flags, "--max-in-flight", "4"),
        )
        stats = emu.stats()
        assert code == 0, err
        _exactly_once(emu, texts)
    throttled = stats["by_status"].get("429", stats["by_status"].get(429, 0))
    # told: evenly spaced, at most a late arrival or two; told nothing: the
    # requests in flight when the window first fills, and little after
    assert throttled <= (2 if told else 4 + 3)
    if told:  # evenly spaced: counting the rejected, no window saw more than the quota
        # and the late arrivals bounded above
        assert stats["peak_window_requests"]["all"] <= 10 + 2
    assert_reconciled(read_output(str(tmp_path / "o")))
