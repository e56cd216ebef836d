"""`beamvec plan`: what a run would do and cost, without calling any API.

Takes exactly the flags of `beamvec run` (same parser, same --config
handling), lists and reads the inputs, and prepares every record as the
pipeline would: the same reader, normalization, truncation, token counts,
duplicate-id and in-shard dedup rules, and the same batching. Shards an
existing --output already holds (committed, input unchanged, same
configuration) are skipped, as a run would skip them, and vectors a changed
shard can reuse are not counted as sent. Nothing is written; no backend is
called (no preflight): tokens are exact for the local model and a
3-characters-per-token over-estimate for API backends.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from beamvec import __version__, pricing
from beamvec import records as r
from beamvec.batching import batches
from beamvec.commands import (
    Parser,
    dump_json,
    fmt_int,
    fmt_seconds,
    iter_batches,
    progress,
    progress_done,
)
from beamvec.errors import UsageError
from beamvec.job import (
    committed_shards,
    config_fingerprint,
    is_committed,
    resolve_inputs,
)
from beamvec.options import BeamvecOptions, expand_config, parse_pipeline_options
from beamvec.prepare import PrepareConfig, prepare
from beamvec.records import DeadLetter, Record, Shard
from beamvec.shard_job import DEDUP_CAP
from beamvec.sink import MANIFEST, SUCCESS, Output, read_footer
from beamvec.sources import ReaderConfig, read_shard

DESCRIPTION = """\
Scan the inputs and print what `beamvec run` would do with the same flags:
shards, records, characters, tokens, expected dead letters, API requests,
duration under the configured quota, estimated cost, and what --output
already holds. Calls no API and writes nothing.

examples:
  beamvec plan --input 'corpus/*.jsonl' --output out/
  beamvec plan --input 'gs://bucket/docs/*.jsonl.gz' --output gs://bucket/vectors \\
      --backend gemini --quota-rpm 3000 --quota-tpm 1000000 --json

Costs come from the one price table in beamvec/pricing.py: list prices as
published in 2026, estimates only. Every `beamvec run` flag is accepted here;
--config FILE reads flags from YAML (flags on the command line win).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser("beamvec plan", DESCRIPTION, allow_abbrev=False)
    BeamvecOptions._add_argparse_args(parser)
    parser.add_argument("--config", metavar="FILE", help="read flags from a YAML file")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    return parser


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    try:
        expanded = expand_config(argv)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read --config: {exc}; pass a readable YAML mapping of flags") from exc
    try:
        flags, _beam_flags = build_parser().parse_known_args(expanded)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    if not flags.input:
        raise UsageError("no --input given: pass a glob such as --input 'corpus/*.jsonl'")
    options = parse_pipeline_options([a for a in expanded if a != "--json"])
    plan = make_plan(options)
    print(dump_json(plan) if flags.json else format_plan(plan))
    return 0


# --------------------------------------------------------------------------- scanning


def scan_shard(
    shard: Shard,
    reader: ReaderConfig,
    prepare_config: PrepareConfig,
    backend: Any,
    storage_options: dict[str, Any],
    reusable: set[str],
) -> dict[str, Any]:
    """One shard prepared as process_shard prepares it, counted, nothing embedded."""
    limits = backend.limits
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()

    def to_send() -> Iterator[Record]:
        seen_ids: set[str] = set()
        known: set[str] = set()
        for raw in read_shard(shard, reader, storage_options):
            counts["read"] += 1
            item = prepare(raw, prepare_config, backend.count_tokens, backend.truncate)
            if isinstance(item, DeadLetter):
                reasons[item.reason] += 1
                continue
            if item.id in seen_ids:
                reasons[r.DUPLICATE_ID] += 1
                continue
            seen_ids.add(item.id)
            counts["records"] += 1
            counts["characters"] += len(item.text)
            counts["tokens"] += item.tokens
            counts["truncated"] += item.truncated
            if item.content_hash in reusable:
                counts["reused"] += 1
            elif item.content_hash in known:
                counts["deduplicated"] += 1
            else:
                if len(known) < DEDUP_CAP:
                    known.add(item.content_hash)
                counts["sent"] += 1
                counts["sent_tokens"] += item.tokens
                counts["sent_characters"] += len(item.text)
                counts["billable_characters"] += sum(1 for c in item.text if not c.isspace())
                yield item

    for batch in batches(to_send(), limits.max_items, limits.max_request_tokens):
        counts["requests"] += 1
        counts["largest_request_tokens"] = max(
            counts["largest_request_tokens"], sum(x.tokens for x in batch)
        )
    return {
        "name": shard.name,
        "input": shard.path,
        **{k: counts[k] for k in (
            "read", "records", "characters", "tokens", "truncated", "reused", "deduplicated",
            "sent", "sent_tokens", "sent_characters", "billable_characters", "requests",
        )},
        "largest_request_tokens": counts["largest_request_tokens"],
        "dead_letters": sum(reasons.values()),
        "dead_letters_by_reason": dict(sorted(reasons.items())),
    }


def _reusable_hashes(output: Output, shard: Shard, fingerprint: str) -> set[str]:
    """Content hashes of the vectors a changed shard would reuse from its previous output."""
    path = output.vectors(shard.name)
    if not output.fs.exists(path) or read_footer(output.fs, path).get("config_fingerprint") != fingerprint:
        return set()
    hashes: set[str] = set()
    for batch in iter_batches(output, path, ["content_hash"]):
        hashes.update(batch.column(0).to_pylist())
    return hashes


def _existing_output(
    url: str | None, storage_options: dict[str, Any], fingerprint: str, force: bool
) -> tuple[Output | None, dict[str, Any], dict[str, dict[str, Any]]]:
    """(output, what it holds, committed shards) of --output, read-only."""
    if not url:
        return None, {"url": None, "exists": False}, {}
    output = Output(url, storage_options)
    manifest = output.read_json(output.path(MANIFEST))
    committed = committed_shards(output, manifest)
    info: dict[str, Any] = {
        "url": output.url,
        "exists": bool(manifest) or bool(committed),
        "manifest": manifest is not None,
        "complete": bool(output.fs.exists(output.path(SUCCESS))) if manifest or committed else False,
        "shards": len(committed),
        "records": 0,
        "embedded": 0,
        "dead_lettered": 0,
        "model": None,
        "conflict": None,
    }
    if manifest:
        totals = manifest.get("totals", {})
        info.update(
            records=totals.get("read", 0), embedded=totals.get("embedded", 0),
            dead_lettered=totals.get("dead_lettered", 0), model=manifest.get("model"),
            backend=manifest.get("backend"), dimension=manifest.get("dimension"),
        )
        theirs = manifest.get("config_fingerprint")
        if theirs and theirs != fingerprint:
            info["conflict"] = (
                f"{output.url} holds vectors made with another configuration (backend "
                f"{manifest.get('backend')}, model {manifest.get('model')}, dimension "
                f"{manifest.get('dimension')}, task {manifest.get('task_type')})"
                + ("; --force: a run would replace them" if force else
                   "; a run would be refused: write to a new --output, or pass --force to replace them")
            )
    else:  # a first run crashed before its manifest: count what its shards committed
        for done in committed.values():
            info["records"] += done.get("read", 0)
            info["embedded"] += done.get("embedded", 0)
            info["dead_lettered"] += done.get("dead_lettered", 0)
    return output, info, committed


def make_plan(options: PipelineOptions) -> dict[str, Any]:
    """Everything `beamvec plan` prints, as one JSON-ready dict."""
    inputs = resolve_inputs(options)
    bv, storage_options, backend = inputs.bv, inputs.storage_options, inputs.backend
    shards, reader, prepare_config = inputs.shards, inputs.reader, inputs.prepare
    limits = backend.limits
    description = backend.describe()
    fingerprint = config_fingerprint(description, reader, prepare_config)
    output, existing, committed = _existing_output(bv.output, storage_options, fingerprint, bv.force)
    replacing = bv.force or existing.get("conflict") is not None

    todo: list[Shard] = []
    skipped: list[str] = []
    for shard in shards:
        if not replacing and is_committed(committed.get(shard.name), shard, fingerprint):
            skipped.append(shard.name)
        else:
            todo.append(shard)

    results = []
    for i, shard in enumerate(todo, start=1):
        progress(f"beamvec plan: reading shard {i}/{len(todo)} {shard.name}", bv.quiet)
        reusable = (
            _reusable_hashes(output, shard, fingerprint)
            if output is not None and not replacing and shard.name in committed else set()
        )
        results.append(scan_shard(shard, reader, prepare_config, backend, storage_options, reusable))
    progress_done(bv.quiet)

    totals: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for res in results:
        for key, value in res.items():
            if isinstance(value, int) and key != "largest_request_tokens":
                totals[key] += value
        reasons.update(res["dead_letters_by_reason"])

    exact = backend.name == "local"
    window = bv.quota_window or 60.0
    plan: dict[str, Any] = {
        "beamvec_version": __version__,
        "backend": backend.name,
        "model": backend.model,
        "dimension": limits.dimension,
        "task_type": backend.task_type,
        "config_fingerprint": fingerprint,
        "tokens_exact": exact,
        "token_basis": (
            "exact: the local model's tokenizer" if exact else
            f"estimated: {backend.name} tokens at 3 characters each (an over-estimate; "
            "the API counts the real ones)"
        ),
        "limits": {
            "texts_per_request": limits.max_items,
            "tokens_per_request": limits.max_request_tokens,
            "tokens_per_text": limits.max_text_tokens,
        },
        "shards": len(shards),
        "shards_to_embed": len(todo),
        "shards_skipped": len(skipped),
        "read": totals["read"],
        "records": totals["records"],
        "characters": totals["characters"],
        "tokens": totals["tokens"],
        "truncated": totals["truncated"],
        "on_long_text": bv.on_long_text,
        "dead_letters": totals["dead_letters"],
        "dead_letters_by_reason": dict(sorted(reasons.items())),
        "reused": totals["reused"],
        "deduplicated": totals["deduplicated"],
        "sent": totals["sent"],
        "sent_tokens": totals["sent_tokens"],
        "sent_characters": totals["sent_characters"],
        "billable_characters": totals["billable_characters"],
        "requests": totals["requests"],
        "duration": estimate_duration(
            totals["requests"], totals["sent_tokens"], bv.quota_rpm, bv.quota_tpm, window,
            max((res["largest_request_tokens"] for res in results), default=0),
        ),
        "cost": cost_dict(
            pricing.estimate_cost(
                backend.name, backend.model, totals["sent_tokens"], totals["billable_characters"]
            )
        ),
        "output": existing,
        "per_shard": results,
        "skipped": skipped,
    }
    return plan


def estimate_duration(
    requests: int, tokens: int, rpm: float | None, tpm: float | None, window_s: float,
    largest_request: int = 0,
) -> dict[str, Any]:
    """The shortest time the quota allows for this work: requests and tokens
    are metered per ``window_s`` (60 s for the real APIs)."""
    if not rpm and not tpm:
        return {
            "quota_rpm": None, "quota_tpm": None, "seconds": None, "bound": None,
            "note": "no quota configured (--quota-rpm/--quota-tpm): duration depends on the "
            "backend's speed and --max-in-flight; pass your project's quota to estimate it",
        }
    by_requests = requests / rpm * window_s if rpm else 0.0
    by_tokens = tokens / tpm * window_s if tpm else 0.0
    seconds = max(by_requests, by_tokens)
    bound = "requests" if by_requests >= by_tokens else "tokens"
    shortest = fmt_seconds(seconds)
    note = (shortest if shortest.startswith("under") else f"at least {shortest}")
    note += f": {bound} per {window_s:g} s are the bound"
    if tpm and largest_request > tpm:
        note += (f"; the largest request ({largest_request:,} tokens) exceeds --quota-tpm "
                 f"({tpm:,.0f}): raise it or that request waits past one window")
    return {
        "quota_rpm": rpm, "quota_tpm": tpm, "window_s": window_s,
        "seconds": round(seconds, 1), "bound": bound, "note": note,
    }


def cost_dict(cost: pricing.CostEstimate) -> dict[str, Any]:
    return {
        "currency": pricing.CURRENCY,
        "standard": None if cost.standard is None else round(cost.standard, 9),
        "batch_mode": None if cost.batch is None else round(cost.batch, 9),
        "unit": cost.unit,
        "units": cost.units,
        "basis": cost.basis,
        "prices_checked": pricing.CHECKED,
    }


# --------------------------------------------------------------------------- printing


def format_plan(p: dict[str, Any]) -> str:
    task = p["task_type"] or "-"
    lines = [
        "beamvec plan  (no API called, nothing written)",
        f"  backend        {p['backend']}: {p['model']}, {p['dimension']} dims, task {task}",
        f"  shards         {p['shards']:,}  ({p['shards_to_embed']:,} to embed, "
        f"{p['shards_skipped']:,} already committed and unchanged: skipped, not read)",
        f"  records read   {p['read']:,}",
        f"  to embed       {p['records']:,} records, {p['characters']:,} characters, "
        f"{p['tokens']:,} tokens",
        f"                 tokens {p['token_basis']}",
    ]
    if p["truncated"]:
        lines.append(
            f"  truncated      {p['truncated']:,} over {p['limits']['tokens_per_text']:,} tokens "
            "(flagged; --on-long-text=dead-letter to refuse them)"
        )
    lines.append(f"  dead letters   {p['dead_letters']:,} expected")
    for reason, count in p["dead_letters_by_reason"].items():
        lines.append(f"    {reason:<14} {count:,}")
    saved = []
    if p["deduplicated"]:
        saved.append(f"{p['deduplicated']:,} repeat a text of their shard")
    if p["reused"]:
        saved.append(f"{p['reused']:,} reuse vectors already in the output")
    lines.append(
        f"  to send        {p['sent']:,} texts, {p['sent_tokens']:,} tokens"
        + (f"  ({'; '.join(saved)})" if saved else "")
    )
    lim = p["limits"]
    lines.append(
        f"  requests       {p['requests']:,}  (at most {lim['texts_per_request']:,} texts and "
        f"{lim['tokens_per_request']:,} tokens each; batches never cross shards)"
    )
    d = p["duration"]
    if d["seconds"] is None:
        lines.append(f"  duration       {d['note']}")
    else:
        quota = ", ".join(
            part for part in (
                f"{d['quota_rpm']:,.0f} requests" if d["quota_rpm"] else "",
                f"{d['quota_tpm']:,.0f} tokens" if d["quota_tpm"] else "",
            ) if part
        )
        lines.append(f"  duration       {d['note']} (quota: {quota} per {d['window_s']:g} s)")
    c = p["cost"]
    if c["standard"] is None:
        lines.append(f"  cost           unknown: {c['basis']}")
    elif p["backend"] == "local":
        lines.append(f"  cost           $0  ({c['basis']})")
    else:
        counted = f"{c['units']:,} {c['unit']}s"
        lines.append(
            f"  cost           {_approx(c['standard'])} for {counted} "
            "(online requests, what beamvec sends)"
        )
        if c["batch_mode"] is not None:
            lines.append(
                f"                 {_approx(c['batch_mode'])} at the batch-mode price "
                "(provider batch API; beamvec does not use it)"
            )
        lines.append(f"                 {c['basis']}")
    o = p["output"]
    if o["url"] is None:
        lines.append("  output         no --output given: nothing to compare with")
    elif not o["exists"]:
        lines.append(f"  output         {o['url']}: empty or not there yet")
    else:
        state = "complete (_SUCCESS)" if o["complete"] else "incomplete (no _SUCCESS)"
        lines.append(
            f"  output         {o['url']} already holds {fmt_int(o['shards'])} shards, "
            f"{fmt_int(o['records'])} records ({fmt_int(o['embedded'])} embedded, "
            f"{fmt_int(o['dead_lettered'])} dead-lettered); {state}"
        )
        if not o.get("manifest"):
            lines.append("                 no _manifest.json: a run crashed before writing it; "
                         "the next run finishes it")
    if o.get("conflict"):
        lines.append(f"  WARNING        {o['conflict']}")
    if p["shards_to_embed"] == 0 and p["shards"]:
        lines.append("  nothing to do: every shard is committed (pass --force to redo them)")
    return "\n".join(lines)


def _approx(usd: float) -> str:
    text = pricing.format_usd(usd)
    return text if text.startswith("<") else "~" + text
