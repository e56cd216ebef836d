"""Scale out, measured: splits, uneven layouts, a no-op rerun at 100,000 shards.

1. Splits on the local model: one JSONL file of 8,000 stdlib docstring
   sentences (1 to 3 sentences a record), `--local-threads 1`, the
   multi-process DirectRunner with 1 and then 2 worker processes, default
   `--split-bytes` (256 KiB for the local model; a file under 600 KB gets a
   quarter of its size, so that it is cut into at least 4 splits). Wall
   seconds, records/s, the speed-up, and the two outputs compared row by row
   (same ids, vectors allclose at atol 1e-5), read back with pyarrow.
2. Uneven vs even layout against the API emulator (its own process: 600
   requests a minute over a 60-s window, 200 +/- 20 ms, 100 texts a call, 768
   dims), 2 worker processes, `--quota-rpm 600`: one 20,000-record file plus
   100 files of 100 records, vs the same 30,000 records in 110 even files.
   Every text must reach the emulator exactly once (its /stats text_counts),
   and every record must have one row.
3. A no-op rerun over 100,000 committed one-record shards, and `plan`: the
   committed output is synthesized with beamvec's own code (the worker's
   Parquet writer, footers and commit records, then merge_manifest + finalize)
   unless `beamvec run` over the first 2,000 shards extrapolates to under
   `--real-limit` seconds for all of them. Then `beamvec run` (it must say
   "nothing to do") and `beamvec plan --json` are timed, and `plan` on the
   same inputs with an empty output (it samples past 2,000 shards); the
   pipeline proto size for the 100,000 shards is measured as tests/pipeline/test_scale.py
   does. Sizes of `_manifest.json` and of the `_commits/` table.

Seconds are wall seconds of each process (`beamvec run` also prints its own
wall time, from flag parsing to summary: given as "job s"). No figure is
asserted: the exit code is 1 only when a run failed or rows/texts do not
reconcile. `--quick` is a smoke run (800 records, 3,000 texts, 2,000 shards).

    python benchmarks/scale_benchmark.py [--quick] [--only splits layout noop] [--keep]
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from quota_benchmark import DIM, KEY, MODEL, PREFLIGHT, EmulatorProcess, text_of  # noqa: E402

ROOT = HERE.parent
BIN = Path(sys.executable).parent
BEAMVEC = str(BIN / "beamvec")
LOCAL_SPLIT = 256 * 1024
QUIET_HARNESS = ("--default_sdk_harness_log_level=WARNING",)


@dataclass(frozen=True)
class Timed:
    code: int
    seconds: float  # the process, interpreter start included
    job_seconds: float | None  # the run summary's own wall time
    stdout: str
    stderr: str


def job_s(run: Timed) -> float:
    """The run's own wall time when it printed one, else the process's."""
    return run.seconds if run.job_seconds is None else run.job_seconds


def timed(argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 1800) -> Timed:
    started = time.perf_counter()
    done = subprocess.run(list(argv), capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    seconds = time.perf_counter() - started
    match = re.search(r"wall time\s+([\d.]+) s", done.stdout)
    return Timed(done.returncode, seconds, float(match.group(1)) if match else None, done.stdout, done.stderr)


def failed(what: str, run: Timed) -> str:
    return f"{what} failed (exit {run.code}): {(run.stderr or run.stdout).strip()[-1500:]}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], note: bool = False) -> str:
    """A markdown table: the first column (and with ``note`` the last) left-aligned."""
    align = ["---"] + ["---:"] * (len(header) - 1 - note) + ["---"] * note
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


# -- 1. splits on the local model ----------------------------------------------------------


def sentences(limit: int) -> list[str]:
    """Sentences of the standard library's docstrings (parsed, never imported)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found: dict[str, None] = {}
    for path in sorted(stdlib.rglob("*.py")):
        if any(p in {"test", "tests", "idlelib", "site-packages", "lib2to3"} for p in path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True) or ""
                for para in doc.split("\n\n"):
                    for s in re.split(r"(?<=[.!?])\s+", " ".join(para.split())):
                        if 20 <= len(s) <= 400 and s[0].isalpha():
                            found[s] = None
        if len(found) >= limit:
            break
    return list(found)


def docstring_corpus(path: Path, records: int) -> None:
    """``records`` texts of 1, 2 or 3 consecutive sentences (lengths vary)."""
    pool = sentences(records * 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    at = 0
    with path.open("w", encoding="utf-8") as fh:
        for i in range(records):
            k = 1 + i % 3
            text = " ".join(pool[(at + j) % len(pool)] for j in range(k))
            at += k
            fh.write(json.dumps({"id": f"d{i}", "text": f"{text} (#{i})"}, ensure_ascii=False) + "\n")


def read_vectors(out: Path) -> tuple[dict[str, object], int, int]:
    """id -> vector, from every vector file; the number of rows and of files."""
    import numpy as np
    import pyarrow.parquet as pq

    rows: dict[str, object] = {}
    count = 0
    files = sorted((out / "vectors").glob("*.parquet"))
    for file in files:
        t = pq.read_table(file, columns=["id", "vector"])
        ids = t.column("id").to_pylist()
        width = t.schema.field("vector").type.list_size
        matrix = np.asarray(t.column("vector").combine_chunks().flatten()).reshape(len(ids), width)
        rows.update(zip(ids, matrix, strict=True))
        count += len(ids)
    return rows, count, len(files)


def bench_splits(args: argparse.Namespace, tmp: Path, report: list[str]) -> bool:
    import numpy as np

    records = 800 if args.quick else args.records
    corpus = tmp / "splits" / "docs.jsonl"
    docstring_corpus(corpus, records)
    size = corpus.stat().st_size
    extra: list[str] = []
    note = f"default --split-bytes ({LOCAL_SPLIT // 1024} KiB)"
    if size < 600_000:
        chunk = max(1024, size // 4)
        extra = [f"--split-bytes={chunk}"]
        note = f"--split-bytes {chunk:,} (the file is under 600 KB: a quarter of it, for at least 4 splits)"
    rows, outs = [], {}
    ok = True
    for workers in (1, 2):
        out = tmp / "splits" / f"out-{workers}"
        print(f"  splits: {workers} worker process(es) ...", flush=True)
        run = timed([BEAMVEC, "run", "--input", str(corpus), "--output", str(out), "--runner=DirectRunner",
                     "--quiet", "--local-threads", "1", "--direct_running_mode=multi_processing",
                     f"--direct_num_workers={workers}", *QUIET_HARNESS, *extra])
        if run.code != 0:
            report.append(failed(f"beamvec run with {workers} worker(s)", run))
            return False
        outs[workers] = read_vectors(out)
        rows.append((workers, run))
    (one, count1, files1), (two, count2, files2) = outs[1], outs[2]
    same_ids = set(one) == set(two) and len(one) == count1 == count2 == records
    diff = max((float(np.max(np.abs(one[k] - two[k]))) for k in one if k in two), default=float("nan"))
    close = same_ids and all(np.allclose(one[k], two[k], atol=1e-5) for k in one)
    ok = same_ids and close
    base = rows[0][1]
    lines = []
    for workers, run in rows:
        job = job_s(run)
        lines.append([f"{workers} worker process{'es' if workers > 1 else ''}, --local-threads 1",
                      f"{run.seconds:.1f}", f"{job:.1f}", f"{records / job:,.1f}",
                      f"{job_s(base) / job:.2f}", str(files1 if workers == 1 else files2)])
    report += [
        f"### 1. One {records:,}-record JSONL file ({size / 1e6:.2f} MB) on the local model, "
        f"multi-process DirectRunner, {note}\n",
        table(["", "wall s", "job s", "records/s (job)", "speed-up", "part files"], lines),
        "",
        f"Rows: {count1:,} and {count2:,}; same ids: {'yes' if same_ids else 'NO'}; vectors allclose "
        f"(atol 1e-5): {'yes' if close else 'NO'} (largest difference {diff:.2e}). Target: 2 workers ≥ 1.5 × 1.",
        "",
    ]
    return ok


# -- 2. uneven vs even layout against the emulator ------------------------------------------


def write_jsonl(path: Path, indexes: Sequence[int]) -> None:
    path.write_text("".join(json.dumps({"id": f"t{i}", "text": text_of(i)}) + "\n" for i in indexes))


def layouts(root: Path, big: int, small: int, files: int) -> tuple[Path, Path]:
    total = big + small * files
    uneven, even = root / "uneven", root / "even"
    uneven.mkdir(parents=True)
    even.mkdir(parents=True)
    write_jsonl(uneven / "big.jsonl", range(big))
    for f in range(files):
        write_jsonl(uneven / f"small-{f:03d}.jsonl", range(big + f * small, big + (f + 1) * small))
    for f in range(files + 10):
        write_jsonl(even / f"even-{f:03d}.jsonl", range(f, total, files + 10))
    return uneven, even


def bench_layout(args: argparse.Namespace, tmp: Path, report: list[str]) -> bool:
    from beamvec.records import content_hash

    big, small, files = (2_000, 10, 100) if args.quick else (20_000, 100, 100)
    total = big + small * files
    uneven, even = layouts(tmp / "layout", big, small, files)
    want = {content_hash(text_of(i)) for i in range(total)}
    env = {**os.environ, "GEMINI_API_KEY": KEY}
    results, ok = [], True
    for label, corpus in (("uneven", uneven), ("even", even)):
        out = tmp / "layout" / f"out-{label}"
        print(f"  layout: {label} ...", flush=True)
        with EmulatorProcess(600, 60.0, 0.0, 200.0, 20.0) as emu:  # a fresh quota window per run
            run = timed([BEAMVEC, "run", "--input", str(corpus / "*.jsonl"), "--output", str(out),
                         "--backend", "gemini", "--api-base-url", emu.url, "--model", MODEL,
                         "--output-dimensionality", str(DIM), "--quota-rpm", "600", "--runner=DirectRunner",
                         "--direct_running_mode=multi_processing", "--direct_num_workers=2", "--quiet",
                         *QUIET_HARNESS, *args.layout_flags], env=env, timeout=900)
            stats = emu.stats(texts=True)
        if run.code != 0:
            report.append(failed(f"beamvec run, {label} layout", run))
            return False
        counts = dict(stats.get("text_counts", {}))
        counts.pop(content_hash(PREFLIGHT), None)
        once = set(counts) == want and all(c == 1 for c in counts.values())
        rows, count, parts = read_vectors(out)
        big_parts = len(list((out / "vectors").glob("big*.parquet")))
        exact = once and count == total and set(rows) == {f"t{i}" for i in range(total)}
        ok &= exact
        results.append((label, run, stats, exact, parts, big_parts))
    even_s = job_s(results[1][1])
    lines = []
    for label, run, stats, exact, parts, big_parts in results:
        job = job_s(run)
        what = (f"one {big:,}-record file + {files} files of {small}" if label == "uneven"
                else f"{files + 10} even files")
        lines.append([f"{label}: {what}", f"{run.seconds:.1f}", f"{job:.1f}", f"{total / job:,.0f}",
                      f"{job / even_s:.2f}", f"{stats['requests']:,}", str(stats["by_status"].get("429", 0)),
                      str(parts) + (f" ({big_parts} of the big file)" if label == "uneven" else ""),
                      "yes" if exact else "NO"])
    report += [
        f"### 2. Uneven vs even layout: {total:,} texts, emulator 600 requests / 60 s, 200 ± 20 ms, "
        f"{DIM} dims; 2 worker processes, --quota-rpm 600{' ' + ' '.join(args.layout_flags) if args.layout_flags else ''}\n",
        table(["", "wall s", "job s", "texts/s (job)", "÷ even", "requests", "429s", "part files",
               "each text once, one row each"], lines, note=True),
        "",
        f"Ratio uneven / even (job seconds): {job_s(results[0][1]) / even_s:.2f}; "
        "target ≤ 1.15. The limit is 1,000 texts/s.",
        "",
    ]
    return ok


# -- 3. no-op rerun and plan over 100,000 committed shards ---------------------------------


def tiny_inputs(root: Path, shards: int, first: int) -> None:
    """``shards`` one-record files: the first ``first`` under a/, the rest under b/."""
    for sub in ("a", "b"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(shards):
        sub = "a" if i < first else "b"
        (root / sub / f"s{i:06d}.jsonl").write_text(json.dumps({"id": f"t{i}", "text": text_of(i)}) + "\n")


def synthesize(glob: str, out: Path) -> tuple[float, int]:
    """A committed output for every shard of ``glob``, written as a local run
    would: vector files with footers, then the manifest. Vectors are unit
    vectors seeded by the text's hash (nothing reads them here)."""
    import numpy as np

    from beamvec.contract import (
        CommitRecord,
        Footer,
        RunRecord,
        ShardCounts,
        finalize,
        merge_manifest,
        vector_path,
    )
    from beamvec.driver.resolve import parse_options, resolve_inputs
    from beamvec.records import Embedded, RawRecord, Split
    from beamvec.route.prepare import prepare
    from beamvec.write.sink import Output, ParquetShardWriter, vector_schema, vector_table

    started = time.perf_counter()
    inputs = resolve_inputs(parse_options(["--input", glob, "--output", str(out)]))
    backend, dim = inputs.backend, inputs.backend.limits.dimension
    output = Output(str(out), run_id="synthesized")
    records = []
    for n, shard in enumerate(inputs.shards):
        t0 = time.time()
        split = Split.whole(shard)
        line = json.loads(Path(shard.path).read_text())
        rec = prepare(RawRecord(1, line["id"], line["text"]), inputs.prepare, backend.count_tokens, backend.truncate)
        seed = int(rec.content_hash[:8], 16)
        vec = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
        vec /= np.linalg.norm(vec)
        writer = ParquetShardWriter(output, vector_path(output, split.name), vector_schema(dim))
        writer.write(vector_table([Embedded(rec, vec)], shard.path, dim))
        counts = ShardCounts(read=1, embedded=1, sent=1, sent_tokens=rec.tokens, sent_characters=len(rec.text),
                             billable_characters=len("".join(rec.text.split())), tokens=rec.tokens,
                             truncated=int(rec.truncated))
        record = CommitRecord(
            name=split.name, input=shard.path, input_fingerprint=split.fingerprint, counts=counts,
            input_size=shard.size, input_version=shard.version,
            config_fingerprint=inputs.description.config_fingerprint, seconds=round(time.time() - t0, 3),
        )
        writer.commit(Footer(inputs.description, record).to_json())
        records.append(replace(record, vector_bytes=output.fs.size(writer.final)))
        if n % 10_000 == 9_999:
            print(f"    {n + 1:,} vector files", flush=True)
    run = RunRecord(finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), shards=len(records),
                    read=len(records), embedded=len(records), tokens=sum(r.counts.tokens for r in records),
                    sent=len(records), config_fingerprint=inputs.description.config_fingerprint)
    manifest = merge_manifest(None, records, inputs.run_config, inputs.description, run)
    missing = finalize(output, manifest, [s.name for s in inputs.shards])
    output.finish_staging()
    if missing:
        raise SystemExit(f"synthesized output is missing {len(missing)} shards")
    return time.perf_counter() - started, len(records)


def proto_child(glob: str, out: str) -> int:
    """Build `beamvec run`'s pipeline and print its serialized size (tests/pipeline/test_scale.py's way)."""
    import apache_beam as beam

    from beamvec.cli import main

    class Stop(Exception):
        pass

    real = beam.Pipeline

    class Measuring(real):  # type: ignore[misc, valid-type]
        def run(self, test_runner_api: object = "AUTO") -> object:
            print(f"PROTO {len(self.to_runner_api().SerializeToString())}", flush=True)
            raise Stop

    beam.Pipeline = Measuring
    with contextlib.suppress(Stop):  # the CLI may also catch it and return an exit code
        main(["run", "--runner=DirectRunner", "--quiet", "--input", glob, "--output", out])
    return 0


def bench_noop(args: argparse.Namespace, tmp: Path, report: list[str]) -> bool:
    shards = 2_000 if args.quick else args.shards
    first = min(2_000, shards)
    root = tmp / "noop"
    print(f"  noop: writing {shards:,} one-record inputs ...", flush=True)
    tiny_inputs(root / "in", shards, first)
    full, sample = str(root / "in" / "*" / "*.jsonl"), str(root / "in" / "a" / "*.jsonl")
    committed = root / "out"
    lines: list[list[str]] = []
    print(f"  noop: beamvec run over the first {first:,} ...", flush=True)
    trial = timed([BEAMVEC, "run", "--input", sample, "--output", str(root / "trial"), "--runner=DirectRunner",
                   "--quiet"])
    if trial.code != 0:
        report.append(failed("beamvec run on the first shards", trial))
        return False
    projected = trial.seconds * shards / first
    lines.append([f"`beamvec run`, local model, first {first:,} shards (a real run)", f"{trial.seconds:.1f}",
                  f"projected for {shards:,}: {projected:,.0f} s"])
    if projected <= args.real_limit:
        how = "a real `beamvec run` on the local model"
        run = timed([BEAMVEC, "run", "--input", full, "--output", str(committed), "--runner=DirectRunner",
                     "--quiet"], timeout=args.real_limit * 3)
        if run.code != 0:
            report.append(failed("beamvec run over every shard", run))
            return False
        made = run.seconds
    else:
        how = ("synthesized with beamvec's own writer, footers and commit records (the real run projects past "
               f"{args.real_limit:.0f} s)")
        print(f"  noop: synthesizing the committed output ({how}) ...", flush=True)
        made, _ = synthesize(full, committed)
    lines.append([f"making the committed output: {how}", f"{made:.1f}", ""])
    manifest_bytes = (committed / "_manifest.json").stat().st_size
    commits = sorted((committed / "_commits").glob("*.parquet"))
    commits_bytes = sum(p.stat().st_size for p in commits)
    ok = True
    print("  noop: no-op rerun, plans, proto ...", flush=True)
    rerun = timed([BEAMVEC, "run", "--input", full, "--output", str(committed), "--runner=DirectRunner", "--quiet"])
    nothing = rerun.code == 0 and "nothing to do" in rerun.stdout
    ok &= nothing
    lines.append([f"`beamvec run` again (no-op): {'says nothing to do' if nothing else 'DID NOT say nothing to do'}",
                  f"{rerun.seconds:.1f}", "" if rerun.job_seconds is None else f"its own wall time: {rerun.job_seconds:.1f} s"])
    for label, out in (("committed output", committed), ("empty output (fresh inputs)", root / "fresh")):
        plan = timed([BEAMVEC, "plan", "--json", "--input", full, "--output", str(out)])
        if plan.code != 0:
            report.append(failed(f"beamvec plan, {label}", plan))
            ok = False
            continue
        p = json.loads(plan.stdout)
        sampled = p.get("sampled")
        how_read = (f"read {sampled['shards_read']:,} of {sampled['of']:,} shards, ±{sampled['sent_error_95']:.1%} "
                    "(95 %) on texts to send" if sampled else "exact")
        lines.append([f"`beamvec plan --json`, {label}", f"{plan.seconds:.1f}",
                      f"{p['shards_to_embed']:,} to embed, {p['shards_skipped']:,} skipped; {how_read}"])
    proto = timed([sys.executable, str(Path(__file__).resolve()), "_proto", full, str(root / "proto")])
    size = re.search(r"PROTO (\d+)", proto.stdout)
    report += [
        f"### 3. {shards:,} one-record shards on local disk\n",
        table(["", "wall s", ""], lines, note=True),
        "",
        f"`_manifest.json`: {manifest_bytes:,} bytes; commits table: {len(commits)} file(s), "
        f"{commits_bytes:,} bytes ({commits_bytes / max(1, shards):.1f} bytes a shard). "
        f"Pipeline proto for {shards:,} shards: "
        + (f"{int(size.group(1)):,} bytes" if size else f"not measured ({(proto.stderr or proto.stdout)[-300:]})")
        + ".",
        "",
    ]
    return ok and size is not None


SECTIONS = {"splits": bench_splits, "layout": bench_layout, "noop": bench_noop}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 800 records, 3,000 texts, 2,000 shards")
    parser.add_argument("--only", nargs="*", choices=sorted(SECTIONS), default=[])
    parser.add_argument("--records", type=int, default=8_000, help="records of the split benchmark")
    parser.add_argument("--shards", type=int, default=100_000, help="shards of the no-op benchmark")
    parser.add_argument("--real-limit", type=float, default=600.0,
                        help="make the committed output with a real run when it projects under this (s)")
    parser.add_argument("--layout-flags", nargs="*", default=[], help="extra `beamvec run` flags for the layouts")
    parser.add_argument("--keep", action="store_true", help="keep the corpora and outputs")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="beamvec-scale-bench-"))
    started, load = time.monotonic(), os.getloadavg()[0]
    report: list[str] = []
    ok = True
    for name, bench in SECTIONS.items():
        if not args.only or name in args.only:
            ok &= bench(args, tmp, report)
    print("\n" + "\n".join(report))
    print(f"Whole benchmark: {time.monotonic() - started:.0f} s on {os.cpu_count()} cores; load average "
          f"{load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.")
    if args.keep or not ok:
        print(f"corpora and outputs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_proto":
        sys.exit(proto_child(sys.argv[2], sys.argv[3]))
    sys.exit(main())
