"""`beamvec plan`'s text form: what a person reads before a run."""

from __future__ import annotations

from beamvec import pricing
from beamvec.commands import fmt_int
from beamvec.commands.plan_schema import Plan


def format_plan(p: Plan) -> str:
    """One line per fact, in the order a run meets them."""
    return "\n".join([*_reading(p), *_sending(p), _duration(p), *_cost(p), *_output(p), *_warnings(p)])


def _reading(p: Plan) -> list[str]:
    """What is read, and what of it becomes a dead letter."""
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
    return lines


def _sending(p: Plan) -> list[str]:
    """What is sent, what is saved, and in how many requests or batch jobs."""
    saved = []
    if p["deduplicated"]:
        saved.append(f"{p['deduplicated']:,} repeat a text sent in this run")
    if p["reused"]:
        saved.append(f"{p['reused']:,} reuse vectors already embedded")
    lines = [
        f"  to send        {p['sent']:,} texts, {p['sent_tokens']:,} tokens"
        + (f"  ({'; '.join(saved)})" if saved else "")
    ]
    lim = p["limits"]
    if p.get("batch_api"):
        b = p["batch_api"]
        lines.append(f"  batch jobs     {b['jobs']:,}  (one input file of at most "
                     f"{b['requests_per_file']:,} requests each; repeats sent once)")
    else:
        lines.append(
            f"  requests       {p['requests']:,}  (at most {lim['texts_per_request']:,} texts and "
            f"{lim['tokens_per_request']:,} tokens each, filled across shards)"
        )
    return lines


def _duration(p: Plan) -> str:
    d = p["duration"]
    if p.get("batch_api"):
        return (f"  duration       Batch API turnaround {p['batch_api']['turnaround']}; "
                "not bound by the online quota")
    if d["seconds"] is None:
        return f"  duration       {d['note']}"
    quota = ", ".join(
        part for part in (
            f"{d['quota_rpm']:,.0f} requests" if d["quota_rpm"] else "",
            f"{d['quota_tpm']:,.0f} tokens" if d["quota_tpm"] else "",
        ) if part
    )
    return f"  duration       {d['note']} (quota: {quota} per {d['window_s']:g} s)"


def _cost(p: Plan) -> list[str]:
    c = p["cost"]
    if c["standard"] is None:
        return [f"  cost           unknown: {c['basis']}"]
    if p["backend"] == "local":
        return [f"  cost           $0  ({c['basis']})"]
    counted = f"{c['units']:,} {c['unit']}s"
    if p.get("batch_api") and c["batch_mode"] is not None:
        return [
            f"  cost           {_approx(c['batch_mode'])} for {counted} at the Batch API price "
            f"(--batch-api; {_approx(c['standard'])} online)",
            f"                 {c['basis']}",
        ]
    lines = [
        f"  cost           {_approx(c['standard'])} for {counted} "
        "(online requests, what beamvec sends)"
    ]
    if c["batch_mode"] is not None:
        batch_how = "--batch-api" if p["backend"] == "gemini" else "provider batch API; not supported by beamvec"
        lines.append(
            f"                 {_approx(c['batch_mode'])} at the batch-mode price ({batch_how})"
        )
    lines.append(f"                 {c['basis']}")
    return lines


def _output(p: Plan) -> list[str]:
    """What --output holds already."""
    o = p["output"]
    if o["url"] is None:
        return ["  output         no --output given: nothing to compare with"]
    if not o["exists"]:
        return [f"  output         {o['url']}: empty or not there yet"]
    state = "complete (_SUCCESS)" if o["complete"] else "incomplete (no _SUCCESS)"
    lines = [
        f"  output         {o['url']} already holds {fmt_int(o['shards'])} shards, "
        f"{fmt_int(o['records'])} records ({fmt_int(o['embedded'])} embedded, "
        f"{fmt_int(o['dead_lettered'])} dead-lettered); {state}"
    ]
    if not o.get("manifest"):
        lines.append("                 no _manifest.json: a run crashed before writing it; "
                     "the next run finishes it")
    return lines


def _warnings(p: Plan) -> list[str]:
    """A sampled estimate, files one worker reads whole, a refusal, nothing to do."""
    lines = []
    if p.get("sampled"):
        smp = p["sampled"]
        err = smp["sent_error_95"]
        lines.append(
            f"  SAMPLED        {smp['shards_read']:,} of {smp['of']:,} shards read, counts scaled by "
            f"input bytes" + (f" (texts to send ±{err:.1%} at 95 %)" if err is not None else "")
            + "; plan --exact reads them all"
        )
    for path in p.get("unsplittable", [])[:5]:
        lines.append(f"  WARNING        {path} is large and compressed: it cannot be split, one "
                     "worker reads it whole; store it uncompressed or in several files to spread it")
    if p["output"].get("conflict"):
        lines.append(f"  WARNING        {p['output']['conflict']}")
    if p["shards_to_embed"] == 0 and p["shards"]:
        lines.append("  nothing to do: every shard is committed (pass --force to redo them)")
    return lines


def _approx(usd: float) -> str:
    text = pricing.format_usd(usd)
    return text if text.startswith("<") else "~" + text
