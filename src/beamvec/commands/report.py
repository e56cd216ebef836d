"""`beamvec report OUTPUT`: one self-contained HTML page about an output and its runs.

Rate against the configured quota, 429s and retries (from one run's timeline,
``_runs/<run_id>/timeline.jsonl``: ``--run``, else the newest run long enough
to chart, saying so when a newer one was too short), per-shard durations with the
stragglers marked, dead letters by reason with examples, tokens and cost,
a histogram of vector norms over a sample, and the run history. Reads only.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from html import escape

import fsspec
import numpy as np

from beamvec.commands import (
    Parser,
    add_storage_option,
    fmt_int,
    parse,
    storage_options,
)
from beamvec.commands import report_html as h
from beamvec.commands.report_data import LOOK_BACK, DeadLetters, ReportData, collect, intervals
from beamvec.contract import (
    CommitRecord,
    RunConfig,
    RunRecord,
    ShardCounts,
    total,
)
from beamvec.driver.timeline import Sample
from beamvec.errors import UsageError
from beamvec.pricing import estimate_cost, format_usd

DESCRIPTION = """\
Write one self-contained HTML report of an output (no network needed to view it):
rate against the quota, 429s and retries over time, per-shard durations,
dead letters by reason with examples, tokens and estimated cost, a histogram
of vector norms, and the history of the last runs.

examples:
  beamvec report out/                       # writes report.html
  beamvec report gs://bucket/vectors --out /tmp/nightly.html
  beamvec report out/ --run 20261206T020000Z-1a2b3c   # an earlier run's charts
"""

MAX_SHARD_BARS = 40  # the slowest shards drawn; the rest summarized
STRAGGLER = 2.0  # a shard slower than this many times the median stands out
NO_TIMELINE = ("no timeline recorded: the run predates timelines, or ran on a remote runner "
               "(timelines are recorded where workers run in the driver's process)")


def build_parser() -> Parser:
    parser = Parser("beamvec report", DESCRIPTION)
    parser.add_argument("output", metavar="OUTPUT", help="output root written by `beamvec run`")
    parser.add_argument("--out", default="report.html", help="where to write the HTML (default report.html)")
    parser.add_argument("--run", metavar="RUN_ID", default=None,
                        help="chart this run (an id under OUTPUT/_runs/, listed in the report); "
                        "default: the newest run long enough to chart")
    add_storage_option(parser)
    return parser


def main(argv: Sequence[str]) -> int:
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    options = storage_options(args.storage_option)
    page = render(collect(args.output, options, run=args.run))
    try:
        with fsspec.open(args.out, "wb") as fh:
            fh.write(page.encode())
    except OSError as exc:
        raise UsageError(f"cannot write --out {args.out}: {exc}; pick a writable path") from exc
    print(f"beamvec report: wrote {args.out} ({len(page) / 1024:,.0f} KiB)")
    return 0


# --------------------------------------------------------------------------- page


def render(data: ReportData) -> str:
    d, m = data.description, data.manifest
    what = f"{d.backend} {d.model} · {d.dimension} dims" if d else "no description (backend, model) found"
    subtitle = (f"{data.url} · {what} · "
                f"{'complete' if data.complete else 'INCOMPLETE (no _SUCCESS)'} · "
                f"updated {(m.updated_at if m else '') or '?'}")
    sections = [
        ("Summary", _summary(data)),
        ("Rate against the quota" + (f" (run {data.run_id})" if data.run_id else ""), _rate(data)),
        ("429s, retries and requests in flight", _throttling(data)),
        ("Shard durations", _shards(m.shards.values() if m else ())),
        ("Dead letters", _dead(data.dead)),
        ("Tokens and estimated cost", _cost(data)),
        ("Vector norms", _norms(data)),
        ("Run history", _runs(m.runs if m else ()) + _timelines(data)),
    ]
    return h.page("beamvec run report", subtitle, sections)


def _summary(data: ReportData) -> str:
    m = data.manifest
    config = m.config if m else RunConfig()
    totals = m.totals() if m else {}
    return h.key_values([
        ("vector files", fmt_int(data.vector_files)),
        ("vectors", fmt_int(totals.get("embedded"))),
        ("records read", fmt_int(totals.get("read"))),
        ("dead letters", fmt_int(totals.get("dead_lettered"))),
        ("task type", (data.description.task_type if data.description else None) or "-"),
        ("quota", f"{_or_dash(config.quota_rpm)} requests, {_or_dash(config.quota_tpm)} "
                  f"tokens per {config.quota_window or 60.0:g} s"),
        ("inputs", ", ".join(config.inputs) or "-"),
    ])


def _or_dash(value: object) -> str:
    return "-" if value is None else f"{value:,.0f}" if isinstance(value, int | float) else str(value)


def _per(pairs: list[tuple[Sample, Sample]], value, scale: float) -> list[float]:
    """Per-interval rates; never below 0 (``requests_ok`` counts a request when it is
    sent, so one that fails later takes it back)."""
    return [max(0.0, (value(b) - value(a)) * scale / (b.t - a.t)) for a, b in pairs]


def _note(data: ReportData) -> str:
    return f'<p class="note">{escape(data.run_note)}</p>' if data.run_note else ""


def _rate(data: ReportData) -> str:
    pairs = intervals(data.samples)
    if not pairs:
        return h.empty_panel("rate-requests", "requests per minute", data.run_note or NO_TIMELINE)
    ts = [b.t for _, b in pairs]
    config = data.manifest.config if data.manifest else RunConfig()
    quota = config.quota_rpm
    ref = None
    if quota:
        per_minute = quota * 60.0 / (config.quota_window or 60.0)
        ref = h.RefLine(f"quota {per_minute:,.0f}/min", per_minute)
    requests = h.line_chart("rate-requests", "requests per minute (all answers) vs the quota", [
        h.Series("requests/min", ts, _per(pairs, lambda s: s.requests, 60.0), h.GREEN),
        h.Series("ok/min", ts, _per(pairs, lambda s: s.requests_ok, 60.0), h.BLUE),
    ], ref=ref)
    texts = h.line_chart("rate-texts", "texts per second", [
        h.Series("sent", ts, _per(pairs, lambda s: s.texts_sent, 1.0), h.BLUE),
        h.Series("reused", ts, _per(pairs, lambda s: s.texts_reused, 1.0), h.GREY),
        h.Series("records read", ts, _per(pairs, lambda s: s.records, 1.0), h.BROWN),
    ])
    return f'{_note(data)}<div class="grid2">{requests}{texts}</div>'


def _throttling(data: ReportData) -> str:
    pairs = intervals(data.samples)
    if not pairs:
        return h.empty_panel("throttling", "429s and retries", data.run_note or NO_TIMELINE)
    ts = [b.t for _, b in pairs]
    last = data.samples[-1]
    errors = h.line_chart("throttling", "429s, 5xx and retries per minute", [
        h.Series("429/min", ts, _per(pairs, lambda s: s.requests_429, 60.0), h.RED),
        h.Series("5xx/min", ts, _per(pairs, lambda s: s.requests_5xx, 60.0), h.PURPLE),
        h.Series("retries/min", ts, _per(pairs, lambda s: s.retries, 60.0), h.ORANGE),
    ])
    flight = h.line_chart("in-flight", "requests in flight; seconds waiting for the quota, per second", [
        h.Series("in flight", ts, [float(b.in_flight) for _, b in pairs], h.TEAL),
        h.Series("throttled s per s", ts, _per(pairs, lambda s: s.throttled_ms, 0.001), h.PINK),
    ])
    totals = (f"<p>over the run: {last.requests:,} requests, {last.requests_429:,} answered 429, "
              f"{last.requests_5xx:,} 5xx, {last.requests_other:,} other failures, {last.retries:,} "
              f"retries, {last.throttled_ms / 1000:,.1f} s waiting for the quota limiter</p>")
    return f'<div class="grid2">{errors}{flight}</div>{totals}'


def _shards(records: Iterable[CommitRecord]) -> str:
    timed = sorted(((r.name, r.seconds) for r in records), key=lambda item: -item[1])
    if not timed:
        return h.empty_panel("shard-durations", "seconds per shard", "no shard durations in the manifest")
    median = statistics.median(v for _, v in timed)
    shown = timed[:MAX_SHARD_BARS]
    chart = h.bar_chart(
        "shard-durations", f"seconds per shard, slowest first (red: over {STRAGGLER:g}x the median)",
        [n for n, _ in shown], [v for _, v in shown], "seconds", highlight_above=STRAGGLER * median,
    )
    stragglers = sum(v > STRAGGLER * median for _, v in timed)
    note = (f"<p>{len(timed):,} shards; median {median:,.1f} s, slowest {timed[0][1]:,.1f} s; "
            f"{stragglers:,} over {STRAGGLER:g}x the median"
            + (f"; the {len(shown)} slowest drawn" if len(timed) > len(shown) else "") + "</p>")
    return chart + note


def _dead(dead: DeadLetters) -> str:
    if not dead.by_reason:
        return h.empty_panel("dead-letters", "dead letters by reason", "no dead letters")
    reasons = list(dead.by_reason)
    chart = h.bar_chart("dead-letters", "dead letters by reason", reasons,
                        [float(dead.by_reason[r]) for r in reasons], "records", color=h.PINK)
    rows = [
        (reason, ex.get("id") or "-", ex.get("source_shard"), (ex.get("message") or "")[:120],
         (ex.get("raw") or "")[:80])
        for reason in reasons for ex in dead.examples.get(reason, [])
    ]
    return chart + h.table(["reason", "id", "shard", "message", "raw (start)"], rows)


def _cost(data: ReportData) -> str:
    m = data.manifest
    counts = total(s.counts for s in m.shards.values()) if m else ShardCounts()
    sent_tokens, sent_chars = counts.sent_tokens, counts.sent_characters
    d = data.description
    cost = estimate_cost(d.backend if d else "", d.model if d else "", sent_tokens, sent_chars)
    runs = m.runs if m else ()
    spent = [r.estimated_cost_usd for r in runs if r.estimated_cost_usd is not None]
    # The shards hold what made today's vectors; the runs, everything ever
    # sent (vectors since redone or pruned included): two different sums, named so.
    return h.key_values([
        ("tokens in the output's vectors", fmt_int(counts.tokens if m else None)),
        ("tokens sent to make these vectors (online + batch)",
         fmt_int(sent_tokens + counts.batch_sent_tokens if m else None)),
        (f"tokens sent by the last {len(runs)} runs (online + batch)",
         fmt_int(sum(r.sent_tokens + r.batch_sent_tokens for r in runs)) if runs else "-"),
        ("characters sent (no whitespace)", fmt_int(sent_chars)),
        ("estimated cost of these vectors", f"{format_usd(cost.standard)} online"
         + (f", {format_usd(cost.batch)} in batch mode" if cost.batch is not None else "")),
        (f"estimated cost of the last {len(runs)} runs", format_usd(sum(spent)) if spent else "unknown"),
        ("basis", cost.basis),
    ])


def _norms(data: ReportData) -> str:
    norms = data.norms[np.isfinite(data.norms)]
    if not len(norms):
        return h.empty_panel("norms", "vector norms", "no vectors to sample")
    low, high = float(norms.min()), float(norms.max())
    if high - low < 1e-3:  # unit vectors: a window around 1 shows the spread, if any
        low, high = low - 5e-4, high + 5e-4
    counts, edges = np.histogram(norms, bins=30, range=(low, high))
    labels = [f"{(a + b) / 2:.4f}" for a, b in zip(edges, edges[1:], strict=False)]
    chart = h.column_chart("norms", f"L2 norms of {len(norms):,} sampled vectors", labels,
                           [float(c) for c in counts], "norm")
    return (chart + f"<p>min {norms.min():.4f}, mean {norms.mean():.4f}, max {norms.max():.4f}; "
            f"{int((np.abs(norms - 1) > 1e-3).sum()):,} of the sample further than 0.001 from 1</p>")


def _runs(runs: Sequence[RunRecord]) -> str:
    if not runs:
        return h.empty_panel("runs", "runs", "no run history in the manifest")
    last = runs[-14:]
    labels = [(r.started_at or "?")[:16].replace("T", " ") for r in last]
    chart = h.column_chart("runs", f"vectors embedded per run (last {len(last)})", labels,
                           [float(r.embedded) for r in last], "run started (UTC)", color=h.BROWN)
    rows = [
        (r.started_at or "?", r.finished_at or "?", fmt_int(r.shards), fmt_int(r.read),
         fmt_int(r.embedded), fmt_int(r.sent + r.batch_sent), fmt_int(r.reused), fmt_int(r.dead_lettered),
         fmt_int(r.sent_tokens + r.batch_sent_tokens),
         format_usd(r.estimated_cost_usd) if r.estimated_cost_usd is not None else "-")
        for r in reversed(runs)
    ]
    return chart + h.table(
        ["started", "finished", "shards", "read", "embedded", "sent", "reused", "dead letters",
         "tokens sent", "est. cost"], rows,
    )


def _timelines(data: ReportData) -> str:
    if not data.timelines:
        return ""
    shown = list(reversed(data.timelines[-LOOK_BACK:]))
    return (f"<p>timelines kept for {len(data.timelines):,} runs (newest first, charted: "
            f"{escape(data.run_id or '-')}); chart another with <code>beamvec report OUTPUT --run ID</code>: "
            f"{escape(', '.join(shown))}</p>")
