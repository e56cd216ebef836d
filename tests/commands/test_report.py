"""`beamvec report`: an HTML page from a real output (two runs against the
emulator, with 429s, 503s and dead letters), rendered in headless Chromium."""

from __future__ import annotations

import functools
import json
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beamvec.cli import main
from beamvec.commands import report
from beamvec.commands import report_html as h
from beamvec.contract import CommitRecord, ShardCounts
from beamvec.driver import job
from beamvec.driver.timeline import Timeline
from beamvec.emulator.server import Emulator

from helpers import NoCapture, beam_run

KEY = "fakekey-FAKE-report-key-0000000000000000"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHARTS = ("rate-requests", "rate-texts", "throttling", "in-flight", "shard-durations", "dead-letters",
          "norms", "runs")


def _shard(path: Path, ids: range, extra: list[str] = ()) -> None:
    lines = [json.dumps({"id": f"r{i}", "text": f"report test sentence {i} about topic {i % 13}",
                         "lang": "en" if i % 2 else "de"}) for i in ids]
    path.write_text("\n".join([*lines, *extra]) + "\n")


@pytest.fixture(scope="module")
def nightly(tmp_path_factory):
    """An output after two nights: a small first run, then three more shards,
    one of them large (the straggler), against a server that allows fewer
    requests than the configured quota (429s) and fails some (503s)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GEMINI_API_KEY", KEY)
    mp.setattr(job, "Timeline", functools.partial(Timeline, interval=0.25))
    root = tmp_path_factory.mktemp("report")
    corpus, out = root / "corpus", root / "out"
    corpus.mkdir()
    _shard(corpus / "day1.jsonl", range(0, 200), [json.dumps({"id": "blank", "text": "  "})])
    with Emulator(api_key=KEY, rpm=4, window_s=1.0, fail_503=0.08, latency_ms=40, seed=3) as emu:
        args = ["--input", str(corpus / "*.jsonl"), "--output", str(out), "--backend", "gemini",
                "--api-base-url", emu.url, "--output-dimensionality", "128",
                "--quota-rpm", "300", "--max-in-flight", "4"]
        cap = NoCapture()
        code, _, err = beam_run(cap, *args)
        assert code == 0, err
        _shard(corpus / "day2-big.jsonl", range(1000, 2600), ['{"id": "broken", "text": '])
        _shard(corpus / "day2-a.jsonl", range(3000, 3200), [json.dumps({"id": "r3000", "text": "again"})])
        _shard(corpus / "day2-b.jsonl", range(4000, 4200))
        code, _, err = beam_run(cap, *args)
        assert code == 0, err
    mp.undo()
    return out


@pytest.mark.slow
def test_report_holds_every_chart_and_the_numbers(nightly, tmp_path, capsys):
    html_path = tmp_path / "r.html"
    assert report.main([str(nightly), "--out", str(html_path)]) == 0
    html = html_path.read_text()
    for chart in CHARTS:
        assert re.search(rf'<svg class="chart" id="{chart}"', html), chart
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    manifest = json.loads((nightly / "_manifest.json").read_text())
    data = report.collect(str(nightly), {})
    assert data.manifest is not None and len(data.manifest.runs) == 2 and data.run_id and data.samples
    assert data.dead.by_reason == {"empty_text": 1, "invalid_json": 1, "duplicate_id": 1}
    assert data.dead.examples["duplicate_id"][0]["id"] == "r3000"
    assert len(data.norms) == manifest["totals"]["embedded"] == 200 + 1600 + 200 + 200
    last = data.samples[-1]
    # the preflight sends one text from the driver before the pipeline (and the timeline) starts
    assert last.texts_sent == 2000 - 1 and last.requests_429 > 0 and last.retries >= last.requests_429
    assert "quota 300/min" in html
    # The slowest shard is drawn first, red when over twice the median. Which
    # shard that is, and by how much, is measured (cross-shard requests make
    # small shards wait too): the rule itself is pinned below with fixed numbers.
    seconds = {name: shard["seconds"] for name, shard in manifest["shards"].items()}
    slowest = max(seconds, key=seconds.__getitem__)
    straggler = seconds[slowest] > 2 * statistics.median(seconds.values())
    first_bar = re.search(r'id="shard-durations".*?<rect class="bar"[^>]*fill="([^"]+)"><title>([^:]+):', html)
    assert first_bar.group(2) == slowest
    assert first_bar.group(1) == (h.RED if straggler else h.PURPLE)


def test_a_shard_over_twice_the_median_is_drawn_first_and_red():
    def bars(seconds: dict[str, float]) -> list[tuple[str, str]]:
        records = [CommitRecord(name, f"in/{name}.jsonl", "", ShardCounts(), seconds=s)
                   for name, s in seconds.items()]
        return re.findall(r'<rect class="bar"[^>]*fill="([^"]+)"><title>([^:]+):', report._shards(records))

    drawn = bars({"a": 1.0, "b": 1.2, "slow": 2.5, "c": 0.9})
    assert drawn[0] == ("#d62728", "slow")  # 2.5 s > 2 x 1.1 s: red (matplotlib's tab:red)
    assert {fill for fill, _ in drawn[1:]} == {h.PURPLE}
    drawn = bars({"a": 1.0, "b": 1.2, "slow": 2.1, "c": 0.9})  # under twice the median: not a straggler
    assert drawn[0] == (h.PURPLE, "slow")


@pytest.mark.slow
def test_report_without_a_timeline_says_so(nightly, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(nightly, old)
    shutil.rmtree(old / "_runs")
    html = report.render(report.collect(str(old), {}))
    assert html.count("no timeline recorded") == 2
    for chart in ("shard-durations", "dead-letters", "norms", "runs"):
        assert f'<svg class="chart" id="{chart}"' in html


@pytest.mark.slow
def test_report_of_an_output_whose_manifest_predates_its_config_fields(nightly, tmp_path):
    """An older manifest has no quota window (nor quota, nor inputs): the
    page says the 60-s default and dashes, rather than failing."""
    old = tmp_path / "old"
    shutil.copytree(nightly, old)
    manifest = json.loads((old / "_manifest.json").read_text())
    manifest["config"] = {}
    (old / "_manifest.json").write_text(json.dumps(manifest))
    html = report.render(report.collect(str(old), {}))
    assert "- requests, - tokens per 60 s" in html


def test_report_of_something_else_says_what_to_do(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is this a beamvec output" in err and len(err.strip().splitlines()) == 1


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (.ci/run installs it)")
def test_report_renders_in_headless_chromium(nightly, tmp_path):
    html_path = tmp_path / "report.html"
    assert report.main([str(nightly), "--out", str(html_path)]) == 0
    url = html_path.as_uri()

    dom = _chromium("--dump-dom", url, profile=tmp_path / "p1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    for chart in CHARTS:
        match = re.search(rf'<svg class="chart" id="{chart}".*?</svg>', dom.stdout, re.S)
        assert match, f"chart {chart} missing from the rendered DOM"
        marks = re.findall(r'<path class="series" d="M[\d.]+,[\d.]+ L|<rect class="bar"', match.group(0))
        assert marks, f"chart {chart} has no drawn marks"

    png = tmp_path / "report.png"
    shot = _chromium(f"--screenshot={png}", "--window-size=1400,3000", url, profile=tmp_path / "p2")
    assert png.exists(), shot.stderr[-2000:]
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert pixels.shape == (3000, 1400, 3)
    html = html_path.read_text()

    def painted(color: str) -> int:
        rgb = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(pixels - rgb).sum(axis=2) <= 40).sum())

    # Each mark colour is on screen beyond its legend swatches (10 x 10 px each):
    # lines and bars were painted, not just laid out.
    colours = {"requests": h.GREEN, "quota, 429s, stragglers": h.RED, "retries": h.ORANGE,
               "in flight, norms": h.TEAL, "shards, 5xx": h.PURPLE, "dead letters, throttled": h.PINK,
               "runs, records read": h.BROWN, "texts sent, ok": h.BLUE}
    for name, color in colours.items():
        swatches = html.count(f'width="10" height="10" fill="{color}"')
        assert painted(color) > 100 * swatches + 150, (name, painted(color), swatches)
    assert (pixels != 255).any(axis=2).sum() > 0.05 * 1400 * 3000
    # docs/report.png, the README's picture, is a copy of this PNG (see docs/operators.md)


def _short_run(out: Path, run_id: str, samples: list[dict]) -> None:
    """A run that left a timeline of ``samples`` (a 3-second incremental run leaves one or none)."""
    folder = out / "_runs" / run_id
    folder.mkdir(parents=True)
    (folder / "timeline.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))


@pytest.mark.slow
def test_a_run_too_short_to_chart_is_named_and_the_newest_long_one_is_charted(nightly, tmp_path):
    """A 3-second incremental run once left every chart empty. The page
    charts the newest run long enough, says why, and lists the runs."""
    out = tmp_path / "out"
    shutil.copytree(nightly, out)
    longer = sorted(p.name for p in (out / "_runs").iterdir() if (p / "timeline.jsonl").exists())
    assert len(longer) == 2
    _short_run(out, "29991231T235959Z-abcdef", [])  # sorts last: the newest
    data = report.collect(str(out), {})
    assert data.run_id == longer[-1] and data.samples
    assert data.run_note.startswith("run 29991231T235959Z-abcdef was too short to chart: its timeline holds no sample")
    assert f"showing {longer[-1]}" in data.run_note
    html = report.render(data)
    assert "was too short to chart" in html and "--run" in html
    for run_id in [*longer, "29991231T235959Z-abcdef"]:
        assert run_id in html  # the history lists every run that can be charted
    for chart in ("rate-requests", "rate-texts", "throttling", "in-flight"):
        assert f'<svg class="chart" id="{chart}"' in html


@pytest.mark.slow
def test_report_charts_the_run_asked_for(nightly, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(nightly, out)
    first, second = sorted(p.name for p in (out / "_runs").iterdir() if (p / "timeline.jsonl").exists())
    data = report.collect(str(out), {}, run=first)
    assert data.run_id == first and data.run_note == ""
    # The first night embedded 200 of 201 records (one blank): its timeline, not the second's.
    assert data.samples[-1].records <= 201 < report.collect(str(out), {}, run=second).samples[-1].records
    _short_run(out, "29991231T235959Z-abcdef", [{"t": 0.0, "records": 3}])
    data = report.collect(str(out), {}, run="29991231T235959Z-abcdef")
    html = report.render(data)
    assert html.count("was too short to chart") == 2  # both timeline panels say it, in place of a chart
    assert main(["report", str(out), "--run", "nope", "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "--run nope" in err and second in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_report_tokens_sent_agree_with_the_run_table(nightly):
    """The page's "tokens sent" (17,675) once disagreed with its own run
    table (27,874 + 666). Each figure says what it sums, and the runs'
    sum is the run table's column."""
    data = report.collect(str(nightly), {})
    html = report.render(data)
    runs = data.manifest.runs
    by_runs = sum(r.sent_tokens + r.batch_sent_tokens for r in runs)
    assert f"<td>tokens sent by the last {len(runs)} runs (online + batch)</td><td>{by_runs:,}</td>" in html
    table = re.search(r"<table><thead><tr>(.*?)</tr></thead><tbody>(.*?)</tbody>", html.split("Run history")[1], re.S)
    headers = re.findall(r"<th>(.*?)</th>", table.group(1))
    column = headers.index("tokens sent")
    cells = [re.findall(r"<td>(.*?)</td>", row)[column] for row in re.findall(r"<tr>(.*?)</tr>", table.group(2))]
    assert sum(int(c.replace(",", "")) for c in cells) == by_runs
