"""`beamvec plan`: what a run would do and cost, without calling any API.

Takes exactly the flags of `beamvec run` (same parser, same --config
handling), lists and reads the inputs, and routes every record through the
run's own ``routing.Router``: the same reader, normalization, truncation,
token counts, duplicate-id rule, reuse lookup (the output, --reuse-from) and
memory of texts already sent in this run, with a null embedder. Shards the
output already holds are skipped, as a run would skip them. Nothing is
written; no backend is called: tokens are exact for the local model and an
unbiased per-script estimate for API backends (``TOKEN_BASIS`` says what it
rests on and its expected error).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from beamvec import __version__, pricing
from beamvec.commands import Parser, dump_json, fmt_seconds, warn
from beamvec.commands.plan_sample import (
    EXACT_SHARDS,
    SAMPLE_SHARDS,
    Sample,
    choose,
    relative_error_95,
)
from beamvec.commands.plan_scan import Lookups, Scan, scan
from beamvec.commands.plan_schema import (
    SCHEMA,
    Cost,
    CountsPart,
    Duration,
    ExistingOutput,
    ModelPart,
    Plan,
    Sampled,
    TimeAndCostPart,
)
from beamvec.commands.plan_text import format_plan
from beamvec.contract import Description, OutputState, damaged_message, read_state, total
from beamvec.driver.batch_phase import TURNAROUND, check_batch_flags
from beamvec.driver.options import BeamvecOptions, expand_config, parse_pipeline_options
from beamvec.driver.resolve import (
    JobInputs,
    Work,
    conflict,
    resolve_inputs,
    retry_reasons,
    retry_refusals,
    reuse_lookup,
    split_bytes,
    split_work,
    uncovered_by_force,
)
from beamvec.driver.reuse_choice import ReuseChoice, plan_reuse, planned_join
from beamvec.errors import UsageError
from beamvec.records import Shard
from beamvec.route.lookup import build_batch_index, check_reuse_source
from beamvec.route.router import Lookup, NoLookup
from beamvec.sources import splittable
from beamvec.write.sink import Output

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


#: What an API backend's token figure rests on, and how far off it is expected to be.
TOKEN_ERROR = 0.10
TOKEN_BASIS = (
    "estimated per script from Google's published ratios (English about 4 characters a "
    "token, Chinese, Japanese and Korean about 1 a character, digits 1 each: "
    f"beamvec.backends.tokens); expected within ±{TOKEN_ERROR:.0%} on prose, more on code, "
    "URLs and rare scripts; the API counts the real ones"
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser("beamvec plan", DESCRIPTION, allow_abbrev=False)
    BeamvecOptions._add_argparse_args(parser)
    parser.add_argument("--config", metavar="FILE", help="read flags from a YAML file")
    # --json is one of the run flags: here it prints the plan as JSON.
    parser.add_argument("--exact", action="store_true",
                        help=f"read every shard even past {EXACT_SHARDS:,} (else a sample, scaled)")
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
    options = parse_pipeline_options([a for a in expanded if a != "--exact"])
    plan = make_plan(options, flags.exact)
    # docs/cli.md: the JSON's fields are only ever added; "schema" names the version
    print(dump_json({"schema": SCHEMA, **plan}) if flags.json else format_plan(plan))
    return 0


def _existing_output(
    url: str | None, storage_options: dict[str, Any], ours: Description, force: bool,
    shards: Sequence[Shard] = (),
) -> tuple[Output | None, ExistingOutput, OutputState | None]:
    """(output, what it holds, its state) of --output, read-only; and whether
    a run would be refused there, by the rules `run` applies (inputs.conflict,
    inputs.uncovered_by_force)."""
    if not url:
        return None, {"url": None, "exists": False}, None
    output = Output(url, storage_options)
    state = read_state(output)
    manifest = state.manifest
    info: ExistingOutput = {
        "url": output.url,
        "exists": bool(manifest) or bool(state.committed),
        "manifest": manifest is not None,
        "complete": (state.success and not state.damaged) if manifest or state.committed else False,
        "damaged": sorted(state.damaged),
        "shards": len(state.committed),
        "records": 0,
        "embedded": 0,
        "dead_lettered": 0,
        "model": None,
        "conflict": None,
        "refused": False,
    }
    for path, why in state.damaged.items():  # a run would embed those shards again
        warn(damaged_message(path, why))
    counts = total(rec.counts for rec in state.committed.values())
    info.update(records=counts.read, embedded=counts.embedded, dead_lettered=counts.dead_lettered)
    if state.description is not None:
        info.update(model=state.description.model, backend=state.description.backend,
                    dimension=state.description.dimension)
    why = conflict(state, ours)
    uncovered = uncovered_by_force(state, shards) if why and force else None
    if uncovered:
        info.update(conflict=f"{output.url} {why}; a run would be refused: {uncovered}", refused=True)
    elif why:
        info.update(conflict=f"{output.url} {why}" + (
            "; --force: a run would replace them" if force else
            "; a run would be refused: write to a new --output, or pass --force to replace them"
        ), refused=not force)
    return output, info, state


def make_plan(options: PipelineOptions, exact_flag: bool = False) -> Plan:
    """Everything `beamvec plan` prints, as one JSON-ready dict."""
    inputs = resolve_inputs(options)
    bv, description = inputs.bv, inputs.description
    check_batch_flags(bv)
    output, existing, state = _existing_output(
        bv.output, inputs.storage_options, description, bv.force, inputs.shards
    )
    replacing = bv.force or existing.get("conflict") is not None
    empty = OutputState(None, {}, {}, False)
    work = split_work(inputs.shards, state or empty, description.config_fingerprint, replacing,
                      retry_reasons(bv.retry_dead_letters))
    for url in bv.reuse_from or ():
        check_reuse_source(description, Output(url, inputs.storage_options))
    own = output if output is not None and not replacing else None
    # the run's choice (reuse_choice.plan_reuse): the join's lookups by shard, or one index
    choice = plan_reuse(inputs, own, state, work.todo)
    sample = choose(work.todo, exact_flag)
    scanned = scan(inputs, sample, _lookups(inputs, choice, output, own, state, work, sample), bv.quiet)
    return {
        **_about_model(inputs),
        "shards": len(inputs.shards),
        "shards_to_embed": len(work.todo),
        "shards_skipped": len(work.skipped),
        **_counts(scanned, choice, bv.on_long_text),
        **_time_and_cost(inputs, scanned),
        "output": existing,
        "per_shard": scanned.per_shard,
        "sampled": None if sample.exact else _sampled(sample, scanned),
        "unsplittable": _unsplittable(inputs, work.todo),
        "skipped": work.skipped,
    }


def _lookups(
    inputs: JobInputs, choice: ReuseChoice, output: Output | None, own: Output | None,
    state: OutputState | None, work: Work, sample: Sample,
) -> Lookups:
    """What is embedded already, looked up the way the run will."""
    fingerprint = inputs.description.config_fingerprint
    joined = planned_join(inputs, choice, own, sample.shards) if choice.join else {}
    lookup: Lookup = (  # nothing to read, nothing to look up (a no-op plan stays fast)
        reuse_lookup(inputs, own, state) if choice.by == "index" else NoLookup()
    )
    batch = build_batch_index(own, fingerprint, inputs.backend.limits.dimension) if own is not None else None
    refusals = retry_refusals(output, state, work.todo, fingerprint, retry_reasons(inputs.bv.retry_dead_letters))
    return Lookups(lookup, joined, batch, refusals)


def _about_model(inputs: JobInputs) -> ModelPart:
    """What embeds, and what its token counts rest on."""
    backend, limits = inputs.backend, inputs.backend.limits
    exact = backend.name == "local"
    return {
        "beamvec_version": __version__,
        "backend": backend.name,
        "model": backend.model,
        "dimension": limits.dimension,
        "task_type": backend.task_type,
        "config_fingerprint": inputs.description.config_fingerprint,
        "tokens_exact": exact,
        "token_basis": "exact: the local model's tokenizer" if exact else TOKEN_BASIS,
        "tokens_expected_error": 0.0 if exact else TOKEN_ERROR,
        "limits": {
            "texts_per_request": limits.max_items,
            "tokens_per_request": limits.max_request_tokens,
            "tokens_per_text": limits.max_text_tokens,
        },
    }


def _counts(scanned: Scan, choice: ReuseChoice, on_long_text: str) -> CountsPart:
    """Records, texts and tokens: read, dead-lettered, reused, sent."""
    totals = scanned.totals
    return {
        "read": totals["read"],
        "records": totals["records"],
        "characters": totals["characters"],
        "tokens": totals["tokens"],
        "truncated": totals["truncated"],
        "on_long_text": on_long_text,
        "dead_letters": totals["dead_letters"],
        "dead_letters_by_reason": dict(sorted(scanned.reasons.items())),
        "reused": totals["reused"] + totals["batch_sent"],
        "reuse_by": choice.by,
        "reuse_why": choice.why,
        "deduplicated": totals["deduplicated"],
        "sent": totals["sent"],
        "sent_tokens": totals["sent_tokens"],
        "sent_characters": totals["sent_characters"],
        "billable_characters": totals["billable_characters"],
        "requests": scanned.requests,
    }


def _time_and_cost(inputs: JobInputs, scanned: Scan) -> TimeAndCostPart:
    """How long the quota lets it take (or the Batch API's turnaround), and what it costs."""
    bv, backend, totals = inputs.bv, inputs.backend, scanned.totals
    return {
        "batch_api": {
            "turnaround": TURNAROUND,
            "jobs": -(-totals["sent"] // max(1, bv.batch_max_requests_per_file)),
            "requests_per_file": bv.batch_max_requests_per_file,
        } if bv.batch_api else None,
        "duration": estimate_duration(
            scanned.requests, totals["sent_tokens"], bv.quota_rpm, bv.quota_tpm, bv.quota_window or 60.0,
            scanned.largest_request,
        ),
        "cost": cost_dict(
            pricing.estimate_cost(
                backend.name, backend.model, totals["sent_tokens"], totals["billable_characters"]
            )
        ),
    }


def _sampled(sample: Sample, scanned: Scan) -> Sampled:
    """How a sampled plan was scaled, and how far off its texts to send may be."""
    return {
        "shards_read": len(sample.shards), "of": sample.of, "scaled_by_bytes": round(sample.factor, 3),
        "sent_error_95": relative_error_95(
            scanned.per_shard, [max(0, s.size) for s in sample.shards], "sent", sample.of
        ),
        "note": f"more than {EXACT_SHARDS:,} shards to embed: {SAMPLE_SHARDS:,} read at random and "
                "scaled by input bytes (plan --exact reads them all); repeats across unread "
                "shards count as sent, so the estimate errs high",
    }


def _unsplittable(inputs: JobInputs, todo: Sequence[Shard]) -> list[str]:
    """Large files one worker must read whole (compressed, no split points)."""
    limit = split_bytes(inputs.bv, inputs.backend.name)
    return [s.path for s in todo if limit and s.size > limit and not splittable(s, inputs.reader)]


def estimate_duration(
    requests: int, tokens: int, rpm: float | None, tpm: float | None, window_s: float,
    largest_request: int = 0,
) -> Duration:
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


def cost_dict(cost: pricing.CostEstimate) -> Cost:
    return {
        "currency": pricing.CURRENCY,
        "standard": None if cost.standard is None else round(cost.standard, 9),
        "batch_mode": None if cost.batch is None else round(cost.batch, 9),
        "unit": cost.unit,
        "units": cost.units,
        "basis": cost.basis,
        "prices_checked": pricing.CHECKED,
    }
