"""Filling the quota in every shape, side by side in one run.

The emulator (`beamvec emulator`, its own process, 127.0.0.1 only) holds a
quota of 600 requests a minute, metered over the shape's window (600 per 60 s,
60 per 6 s, 10 per 1 s), takes 100 texts a call and answers after 200 ms
(+/- 20 ms) with 768-dim vectors. beamvec is told `--quota-rpm 600` (per
minute, as real quotas are stated) and never the server's window. Shapes, each
against a fresh emulator, its rows one after the other (stats reset between):

* the server meters over 60 s: beamvec; beamvec with 2 worker processes;
  RunInference + GeminiModelHandler; beamvec with no --quota-rpm;
* over 6 s and over 1 s: beamvec; RunInference; beamvec with no --quota-rpm
  (it finds the limit from the 429s); two beamvec jobs at once, each told
  --quota-rpm 600 and nothing of the other, half the texts each;
* tiny shards (texts/50 shards of 50, texts/20 shards of 20), 6-s window:
  beamvec; RunInference;
* two jobs for six minutes (18 x texts, in twice the shards), 60-s window: the
  two-jobs row again, long enough for the window to turn over six times (a
  20,000-text run fits in the first window: the server never pushes back).
* over 6 s: token-bound (`--tpm`, default 1,000,000 a minute, no
  request limit; beamvec told `--quota-tpm` the same, or nothing), an English
  and a Chinese corpus, the emulator counting tokens its own way; and bound by
  requests, each window kind (sliding, fixed, bucket) with each retry hint
  (to the millisecond, whole seconds, none). Shapes need the emulator's
  `--quota-window`/`--retry-hint`; where it has none they are skipped, said so.
  For token shapes the limit in texts/s is the TPM over the tokens a text
  counted at the emulator. The TPM is high enough that a 6-s window holds
  twenty or more requests of 100 texts: at 400,000 a minute one held under
  nine Chinese requests, and since a window counts a request whole, no client
  could fill more than 0.89 of it (the table prints this ceiling).

RunInference is what a user would write with Beam alone: Beam's
`GeminiModelHandler`, a request_fn calling `client.models.embed_content`,
batches of 100 (its `request()` overridden so that each text gets its own
vector: the stock one returns ONE result per batch). The limit: 600 requests a
minute x 100 texts = 1,000 texts/s.

texts/s is texts / the pipeline's wall time, measured inside its process from
the moment the job starts (flags parsed, beamvec's planning and preflight call,
Beam's pipeline startup, Parquet and manifest included; interpreter start and
imports excluded). "steady" is texts / the time from the first to the last
texts the emulator embedded, sampled on its /stats every 0.1 s: the rate while
requests flow, without the startup. 429s, requests and the exactly-once check
come from the emulator; dead letters from the output manifest; CPU seconds of
the pipeline process (with its workers) and of the emulator from the kernel.
Every vector written is checked against the emulator's function of its text.

Each run is stopped after 3 minutes. The whole benchmark takes about 15
minutes on 2 cores; `--quick` (4,000 texts) about a quarter of that, and
`--only 'server meters over 1 s'` measures one shape. Exits 1 if a run failed, lost or repeated a
text, or paired a vector with the wrong text; never on speed.

    python benchmarks/quota_benchmark.py [--quick] [--only WORD ...] [--texts 20000] [--fail-503 0.05]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL = "gemini-embedding-001"
DIM = 768
KEY = "fakekey-FAKE-benchmark-key-0000000000000000"  # the emulator takes any key
PREFLIGHT = "beamvec preflight"  # the one text beamvec's preflight call embeds
RUN_TIMEOUT_S = 180  # one run of 20,000 texts, hard stop; longer runs: 3 s a thousand texts
SAMPLE_EVERY = 10  # the baseline checks every 10th vector against the emulator's function

_SUBJECTS = ("The harbour master", "A night-shift nurse", "Our quiet neighbour", "The river pilot",
             "An old bookbinder", "The station clerk", "A travelling cellist", "The glass blower")
_VERBS = ("repaired", "painted", "counted", "described", "carried", "measured", "sold", "forgot")
_OBJECTS = ("a copper kettle", "seven blue lanterns", "the winter ledger", "a cracked compass",
            "two wool blankets", "the orchard map", "a brass telescope", "the last timetable")
_PLACES = ("near the north gate", "before the storm", "after the market closed", "in the old mill",
           "beside the canal", "under the clock tower", "at the ferry landing", "during the fair")


_CJK = ("港务长", "夜班护士", "安静的邻居", "河上的领航员", "老装订匠", "车站职员", "旅行的大提琴手", "吹玻璃的人")
_CJK_VERBS = ("修好了", "画下了", "数清了", "描述了", "搬走了", "量好了", "卖掉了", "忘记了")
_CJK_OBJECTS = ("一把铜壶", "七盏蓝灯笼", "冬季账本", "一个裂开的罗盘", "两条羊毛毯", "果园地图", "一架黄铜望远镜",
                "最后一张时刻表")


def text_of(i: int, script: str = "latin") -> str:
    """The i-th sentence (English, or Chinese with ``script="cjk"``): distinct for every i, deterministic."""
    if script == "cjk":
        return (f"{_CJK[i % 8]}在调查的第{i}天{_CJK_VERBS[i // 8 % 8]}{_CJK_OBJECTS[i // 64 % 8]}，"
                f"就在北门附近，暴风雨之前，市场关门之后。")
    return (f"{_SUBJECTS[i % 8]} {_VERBS[i // 8 % 8]} {_OBJECTS[i // 64 % 8]} "
            f"{_PLACES[i // 512 % 8]} on day {i} of the survey.")


def id_of(i: int) -> str:
    return f"t{i}"


def index_of(rid: str) -> int:
    return int(rid[1:])


def make_corpus(root: Path, texts: int, shards: int, only: range | None = None, script: str = "latin") -> None:
    """``texts`` sentences dealt round-robin into ``shards`` files (or only the shards in ``only``)."""
    root.mkdir(parents=True)
    for s in only if only is not None else range(shards):
        lines = [json.dumps({"id": id_of(i), "text": text_of(i, script)}, ensure_ascii=False)
                 for i in range(s, texts, shards)]
        (root / f"part-{s:03d}.jsonl").write_text("\n".join(lines) + "\n")


# -- the emulator, in its own process ------------------------------------------


class EmulatorProcess:
    def __init__(self, rpm: int | None, window_s: float, fail_503: float, latency_ms: float,
                 jitter_ms: float, extra: Sequence[str] = ()) -> None:
        self.argv = [str(BIN / "beamvec"), "emulator", "--host", "127.0.0.1", "--port", "0",
                     *(["--rpm", str(rpm)] if rpm else []), "--window-s", str(window_s),
                     "--latency-ms", str(latency_ms), "--jitter-ms", str(jitter_ms),
                     "--fail-503", str(fail_503), "--seed", "7", *extra]
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> EmulatorProcess:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        if not match:
            self.__exit__()
            raise RuntimeError(f"the emulator did not start: {line!r}")
        self.url = match.group(1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def stats(self, texts: bool = False) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/stats?texts={int(texts)}", timeout=30) as resp:
            return json.loads(resp.read())

    def cpu_seconds(self) -> float | None:
        """CPU time the emulator process has used (Linux /proc), or None."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, AttributeError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.url}/stats/reset", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()


class Sampler:
    """Polls /stats every 0.1 s while a run goes: when texts started and stopped flowing."""

    def __init__(self, emulator: EmulatorProcess, ignore: int) -> None:
        self.emulator = emulator
        self.ignore = ignore  # texts that are not the corpus (the preflight call)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                done = self.emulator.stats()["texts_embedded"]
            except OSError:
                done = None
            if done is not None:
                self.samples.append((time.monotonic(), done))
            self._stop.wait(0.1)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def steady_rate(self) -> float | None:
        """Texts per second between the first and the last sample that saw new texts."""
        flowing = [(t, n) for t, n in self.samples if n > self.ignore]
        if len(flowing) < 2:
            return None
        final = flowing[-1][1]
        t0, n0 = flowing[0]
        t1 = next(t for t, n in flowing if n == final)
        return (final - n0) / (t1 - t0) if t1 > t0 else None


# -- the runs ------------------------------------------------------------------


@dataclass
class Row:
    label: str
    seconds: float | None = None
    texts_per_s: float | None = None
    steady: float | None = None
    requests: int | None = None
    by_status: dict[str, int] = field(default_factory=dict)
    exactly_once: str = "-"
    dead_letters: str = "-"
    pairing: str = "-"
    note: str = ""
    cpu_runner: float | None = None
    cpu_emulator: float | None = None
    failed: bool = False  # a run that failed, lost or repeated a text, or mispaired a vector
    server_tokens: int = 0  # tokens the emulator counted (its own tokenizer), for TPM shapes


def _exactly_once(stats: dict[str, Any], texts: int, extra: Sequence[str], script: str = "latin") -> tuple[str, bool]:
    from beamvec.records import content_hash

    counts = dict(stats.get("text_counts", {}))
    for text in extra:
        counts.pop(content_hash(text), None)
    want = {content_hash(text_of(i, script)) for i in range(texts)}
    missing = len(want - set(counts))
    stray = len(set(counts) - want)
    repeated = sum(1 for c in counts.values() if c > 1)
    ok = missing == 0 and stray == 0 and repeated == 0
    if ok:
        return "yes", True
    return f"NO: {missing} missing, {repeated} repeated, {stray} stray", False


def run_timeout(texts: int) -> float:
    """The hard stop of one run: three times what the limit (1,000 texts/s) allows, at least 180 s."""
    return max(RUN_TIMEOUT_S, 3.0 * texts / 1000)


def _run_children(row: Row, emulator: EmulatorProcess, argvs: list[list[str]], env: dict[str, str],
                  logs: list[Path], timeout_s: float = RUN_TIMEOUT_S) -> tuple[list[int | str], list[str], float]:
    """Run pipeline processes side by side; note their CPU time (with their
    worker processes) and the emulator's."""
    started = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    emulator_before = emulator.cpu_seconds()
    procs = []
    for argv, log in zip(argvs, logs, strict=True):
        with open(log, "w") as err:
            # Its own process group, so that a run past its time is stopped with its workers.
            procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                                          cwd=ROOT, start_new_session=True))
    codes: list[int | str] = []
    stdouts: list[str] = []
    for proc in procs:
        try:
            stdout, _ = proc.communicate(timeout=max(1.0, timeout_s - (time.monotonic() - started)))
            codes.append(proc.returncode)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, _ = proc.communicate()
            time.sleep(2)  # requests it left in flight finish before the next run resets the stats
            codes.append(f"timeout after {timeout_s:g} s")
        stdouts.append(stdout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    emulator_after = emulator.cpu_seconds()
    row.cpu_runner = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if emulator_before is not None and emulator_after is not None:
        row.cpu_emulator = emulator_after - emulator_before
    return codes, stdouts, time.monotonic() - started


def _run_child(row: Row, emulator: EmulatorProcess, argv: list[str], env: dict[str, str],
               log: Path) -> tuple[int | str, str, float]:
    codes, stdouts, seconds = _run_children(row, emulator, [argv], env, [log])
    return codes[0], stdouts[0], seconds


def _fill(row: Row, emulator: EmulatorProcess, sampler: Sampler, texts: int, extra: Sequence[str],
          script: str = "latin") -> bool:
    stats = emulator.stats(texts=True)
    row.server_tokens = int(stats.get("tokens", 0))
    row.requests = int(stats["requests"])
    row.by_status = {str(k): int(v) for k, v in stats["by_status"].items()}
    row.exactly_once, ok = _exactly_once(stats, texts, extra, script)
    row.steady = sampler.steady_rate()
    return ok


def run_beamvec(label: str, emulator: EmulatorProcess, corpora: list[Path], out: Path, shape: Shape,
                args: argparse.Namespace, extra: Sequence[str], log: Path) -> Row:
    """``beamvec run`` once per corpus, side by side (one corpus: one job)."""
    row = Row(label)
    quota = ([] if "--no-quota" in extra else ["--quota-tpm", str(shape.tpm)] if shape.tpm
             else ["--quota-rpm", str(args.rpm)])  # per minute, as quotas are stated
    argvs, outs = [], []
    for n, corpus in enumerate(corpora):
        outs.append(out / f"job-{n}")
        argvs.append([str(BIN / "beamvec"), "run", "--input", str(corpus / "*.jsonl"), "--output", str(outs[-1]),
                      "--backend", "gemini", "--api-base-url", emulator.url, "--model", MODEL,
                      "--output-dimensionality", str(DIM), *quota, "--max-in-flight", str(args.max_in_flight),
                      "--concurrent-shards", str(args.concurrent_shards), "--runner=DirectRunner", "--quiet",
                      *[a for a in extra if a != "--no-quota"]])
    env = {**os.environ, "GEMINI_API_KEY": KEY}
    emulator.reset()
    logs = [log.with_suffix(f".{n}.log") for n in range(len(corpora))]
    with Sampler(emulator, ignore=len(corpora)) as sampler:
        codes, stdouts, process_s = _run_children(row, emulator, argvs, env, logs, run_timeout(shape.texts))
    once = _fill(row, emulator, sampler, shape.texts, [PREFLIGHT], shape.script)
    walls = [re.search(r"wall time\s+([\d.]+) s", stdout) for stdout in stdouts]
    row.seconds = max(float(m.group(1)) if m else process_s for m in walls)
    manifests = [o / "_manifest.json" for o in outs]
    if any(code != 0 for code in codes) or not all(m.exists() for m in manifests):
        row.note = f"exit {', '.join(map(str, codes))}, see {log.parent}"
        row.failed = True
        return row
    totals = [json.loads(m.read_text())["totals"] for m in manifests]
    embedded = sum(t["embedded"] for t in totals)
    row.texts_per_s = embedded / row.seconds
    row.dead_letters = f"{sum(t['dead_lettered'] for t in totals):,}"
    seen, bad = 0, 0
    for o in outs:
        s, b = _check_beamvec_vectors(o, shape.script)
        seen, bad = seen + s, bad + b
    row.pairing = f"all {seen:,}" if seen == shape.texts and not bad else f"NO: {bad:,} of {seen:,} wrong"
    if not once or embedded != shape.texts:
        row.note = f"embedded {embedded:,} of {shape.texts:,}"
    row.failed = not once or embedded != shape.texts or not row.pairing.startswith("all")
    return row


def _check_beamvec_vectors(out: Path, script: str = "latin") -> tuple[int, int]:
    """Every row's vector against the emulator's function of the row's own text: (seen, wrong)."""
    import numpy as np
    import pyarrow.parquet as pq

    from beamvec.emulator.vectors import expected_vector

    seen = bad = 0
    for file in sorted((out / "vectors").glob("*.parquet")):
        table = pq.read_table(file, columns=["id", "vector"])
        ids = table.column("id").to_pylist()
        matrix = np.asarray(table.column("vector").combine_chunks().flatten()).reshape(len(ids), DIM)
        for rid, vec in zip(ids, matrix, strict=True):
            want = expected_vector(MODEL, None, DIM, text_of(index_of(rid), script))
            want = want / np.linalg.norm(want)  # beamvec normalizes sub-native outputs
            seen += 1
            bad += not np.allclose(vec, want, atol=1e-5)
    return seen, bad


def run_baseline(label: str, emulator: EmulatorProcess, corpus: Path, out: Path, shape: Shape,
                 log: Path) -> Row:
    row = Row(label)
    result_file = out / "baseline.json"
    out.mkdir(parents=True)
    argv = [sys.executable, str(Path(__file__).resolve()), "_baseline", emulator.url,
            str(corpus / "*.jsonl"), str(result_file)]
    emulator.reset()
    with Sampler(emulator, ignore=0) as sampler:
        code, _, process_s = _run_child(row, emulator, argv, dict(os.environ), log)
    once = _fill(row, emulator, sampler, shape.texts, [])
    if code != 0 or not result_file.exists():
        row.note = f"exit {code}, see {log}"
        row.seconds = process_s
        row.failed = True
        return row
    result = json.loads(result_file.read_text())
    row.seconds = result["seconds"]
    row.texts_per_s = result["results"] / row.seconds
    if result["results"] == shape.texts and result["mismatched"] == 0 and result["wrong_vectors"] == 0:
        row.pairing = f"all {result['results']:,} ¹"
    else:
        row.pairing = (f"NO: {result['results']:,} results, {result['mismatched']} keyed wrong, "
                       f"{result['wrong_vectors']} wrong vectors")
    if not once:
        row.note = "not exactly once"
    row.failed = not once or not row.pairing.startswith("all")
    return row


# -- the Beam-only baseline (runs in a child process) --------------------------


def baseline_child(url: str, pattern: str, result_file: str) -> int:
    """RunInference + GeminiModelHandler, as a user would write it with Beam 2.77."""
    import apache_beam as beam
    import numpy as np
    from apache_beam.metrics import Metrics
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
    from apache_beam.ml.inference.gemini_inference import GeminiModelHandler
    from apache_beam.options.pipeline_options import PipelineOptions
    from google import genai
    from google.genai import types

    from beamvec.emulator.vectors import expected_vector

    def embed_texts(model_name: str, batch: Sequence[str], client: Any, inference_args: dict[str, Any]) -> list:
        response = client.models.embed_content(
            model=model_name, contents=list(batch),
            config=types.EmbedContentConfig(output_dimensionality=DIM, **inference_args),
        )
        return [e.values for e in response.embeddings or []]

    class EmbeddingHandler(GeminiModelHandler):
        """GeminiModelHandler pointed at the emulator, one result per text.

        The stock request() wraps the request_fn's answer in a list and zips it
        with the batch: 100 texts in, ONE PredictionResult (first text, whole
        response) out."""

        def __init__(self, base_url: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.base_url = base_url

        def create_client(self) -> Any:
            return genai.Client(api_key=self.api_key, http_options=types.HttpOptions(base_url=self.base_url))

        def request(self, batch: Sequence[str], model: Any, inference_args: dict[str, Any] | None = None) -> list:
            vectors = self.request_fn(self.model_name, batch, model, inference_args or {})
            if len(vectors) != len(batch):
                raise ValueError(f"{len(batch)} texts sent, {len(vectors)} vectors back")
            return [PredictionResult(x, y, self.model_name) for x, y in zip(batch, vectors, strict=True)]

    class Check(beam.DoFn):
        """Each result against its key: the text, and (for 1 in 10) the vector."""

        def setup(self) -> None:
            self.results = Metrics.counter("bench", "results")
            self.mismatched = Metrics.counter("bench", "mismatched")
            self.checked = Metrics.counter("bench", "checked")
            self.wrong = Metrics.counter("bench", "wrong_vectors")

        def process(self, item: tuple[str, Any]) -> None:
            rid, result = item
            i = index_of(rid)
            self.results.inc()
            if result.example != text_of(i) or len(result.inference) != DIM:
                self.mismatched.inc()
            elif i % SAMPLE_EVERY == 0:
                self.checked.inc()
                want = expected_vector(MODEL, None, DIM, text_of(i))
                if not np.allclose(np.asarray(result.inference, dtype=np.float32), want, atol=1e-6):
                    self.wrong.inc()

    handler = KeyedModelHandler(EmbeddingHandler(
        url, model_name=MODEL, request_fn=embed_texts, api_key=KEY,
        min_batch_size=100, max_batch_size=100,
    ))
    started = time.monotonic()
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    _ = (
        pipeline
        | "Read" >> beam.io.ReadFromText(pattern)
        | "Parse" >> beam.Map(json.loads)
        | "Key" >> beam.Map(lambda r: (r["id"], r["text"]))
        | "Embed" >> RunInference(handler)
        | "Check" >> beam.ParDo(Check())
    )
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.monotonic() - started
    counters = {c.key.metric.name: int(c.committed or c.attempted or 0)
                for c in result.metrics().query(MetricsFilter().with_namespace("bench"))["counters"]}
    Path(result_file).write_text(json.dumps({
        "seconds": seconds,
        "results": counters.get("results", 0),
        "mismatched": counters.get("mismatched", 0),
        "checked": counters.get("checked", 0),
        "wrong_vectors": counters.get("wrong_vectors", 0),
    }))
    return 0


def stock_request_results(url: str) -> int:
    """How many results the stock GeminiModelHandler.request() gives for 100 texts."""
    from apache_beam.ml.inference.gemini_inference import GeminiModelHandler
    from google import genai
    from google.genai import types

    def embed(model_name: str, batch: Sequence[str], client: Any, inference_args: dict[str, Any]) -> Any:
        return client.models.embed_content(model=model_name, contents=list(batch),
                                           config=types.EmbedContentConfig(output_dimensionality=DIM))

    handler = GeminiModelHandler(model_name=MODEL, request_fn=embed, api_key=KEY)
    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=url))
    return len(list(handler.request([f"stock check {i}" for i in range(100)], client)))


# -- the table -----------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


HEADER = ("", "wall s", "texts/s", "× limit", "steady texts/s", "× limit", "requests", "429s", "503s",
          "each text once", "dead letters", "vectors right", "CPU s: pipeline / emulator")
ALIGN = ("---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---", "---:", "---", "---:")


def _line(cells: Sequence[str]) -> str:
    cells = list(cells) + [""] * (len(HEADER) - len(cells))
    return "| " + " | ".join(cells) + " |"


def whole_requests_ceiling(window_budget: float, per_request: float) -> float:
    """The largest share of a window's token budget that whole requests of
    ``per_request`` tokens fill: a sliding window counts a request whole, so
    at most floor(budget / per_request) of them fit in any window."""
    return math.floor(window_budget / per_request) * per_request / window_budget


def table(rows: list[Row], shape: Shape, args: argparse.Namespace, fail: float) -> str:
    limit = args.rpm * 100 / 60.0
    lines = [_line(HEADER), _line(ALIGN)]
    for r in rows:
        if shape.tpm:  # texts/s the token limit allows, at the tokens a text counts at the server
            limit = shape.tpm / 60.0 / (r.server_tokens / shape.texts) if r.server_tokens else float("nan")
        known = r.requests is not None
        total = (r.requests or 0)
        lines.append(_line([
            r.label + (f" ({r.note})" if r.note else ""),
            _fmt(r.seconds, ".1f"),
            _fmt(r.texts_per_s, ",.0f"),
            _fmt(None if r.texts_per_s is None else r.texts_per_s / limit, ".2f"),
            _fmt(r.steady, ",.0f"),
            _fmt(None if r.steady is None else r.steady / limit, ".2f"),
            _fmt(r.requests, ",d"),
            (f"{r.by_status.get('429', 0)} ({r.by_status.get('429', 0) / total:.1%})" if total else "0")
            if known else "-",
            str(r.by_status.get("503", 0)) if known else "-",
            r.exactly_once,
            r.dead_letters,
            r.pairing,
            f"{_fmt(r.cpu_runner, '.1f')} / {_fmt(r.cpu_emulator, '.1f')}",
        ]))
    minimum = -(-shape.texts // 100)
    if shape.tpm:
        lines.append(_line([f"the limit: {shape.tpm:,} tokens a minute (texts/s at each row's counted tokens a text)"]))
        counted = next((r.server_tokens for r in rows if r.server_tokens), 0)
        if counted:
            fill = whole_requests_ceiling(shape.tpm * shape.window_s / 60.0, counted / shape.texts * 100)
            lines.append(_line([f"the most any client sending 100 texts a call fills: whole requests in a "
                                f"{shape.window_s:g}-s window, {fill:.2f} of the limit"]))
        return "\n".join(lines)
    lines.append(_line([f"the limit: {shape.server_rpm(args.rpm)} requests per {shape.window_s:g} s × 100 texts",
                        "", f"{limit:,.0f}", "1.00", f"{limit:,.0f}", "1.00", f"{minimum:,}"]))
    if fail:
        ceiling = limit * (1 - fail)
        lines.append(_line([f"the limit when {fail:.0%} of requests fail (they count against the quota)", "",
                            f"{ceiling:,.0f}", f"{1 - fail:.2f}", f"{ceiling:,.0f}", f"{1 - fail:.2f}",
                            f"{minimum / (1 - fail):,.0f}"]))
    return "\n".join(lines)


NOTES = """\
- Every shape: the emulator in its own process, {rpm} requests a minute metered over the
  shape's window ({rpm} x window / 60 requests per window), 100 texts a call, 768 dims.
  beamvec is told --quota-rpm {rpm} (a quota per minute, as real quotas are stated) and never
  the window; "no --quota-rpm" rows are told nothing and find the limit from the 429s.
- texts/s: texts / the pipeline's wall time, measured inside its process (beamvec: the run
  summary's wall time, planning, preflight call, Beam startup, Parquet and manifest included;
  RunInference: from building the pipeline to wait_until_finish). Interpreter start and
  imports are not counted. steady: the emulator's texts embedded, sampled every 0.1 s, from
  the first to the last that arrived: the rate while requests flow. Two jobs: their combined
  texts over the longer wall time; steady is combined too.
- requests, 429s, 503s: the emulator's /stats, reset between runs (the preflight call, 429s,
  503s and retries are requests too; the 429 share is of all requests). The limit row gives
  the fewest requests the texts need.
- each text once: the emulator embedded every corpus text exactly once and nothing else
  (beamvec's preflight call embeds one extra text, "beamvec preflight", not counted).
- vectors right: beamvec's Parquet rows read back, every vector compared with the emulator's
  function of the row's own text. ¹ RunInference with KeyedModelHandler((id, text)) and
  request() overridden to return one result per text: every result's text checked against
  its id, every {sample}th vector against the emulator's function. The stock
  GeminiModelHandler.request() returned {stock} result(s) for a batch of 100 texts: it pairs
  the first text with the whole response and drops the other 99.
- CPU s: user + system time of the pipeline process(es) and workers, and of the emulator
  process during the run.
- At a 60-s window a 20,000-text run (200 requests, ~20 s) fits in the first window, so the
  server never pushes back: unpaced rows see no 429 and exceed the limit."""


@dataclass(frozen=True)
class Shape:
    """One server and corpus: the rows are measured one after the other against it."""

    title: str
    window_s: float
    texts: int
    shards: int
    rows: tuple[str, ...]  # "told", "two-processes", "runinference", "discover", "two-jobs"
    tpm: int | None = None  # a token-bound shape: the server's tokens a minute (and no request limit)
    script: str = "latin"  # the corpus: English ("latin") or Chinese ("cjk")
    window_kind: str | None = None  # the emulator's --quota-window (None: its default, sliding)
    hint: str | None = None  # the emulator's --retry-hint (None: its default, to the millisecond)

    def server_rpm(self, rpm: int) -> int | None:
        """Requests per window for a quota of ``rpm`` per minute (None: token-bound, no request limit)."""
        return None if self.tpm else max(1, round(rpm * self.window_s / 60.0))

    def emulator_args(self) -> list[str]:
        extra = ["--tpm", str(round(self.tpm * self.window_s / 60.0))] if self.tpm else []
        extra += ["--quota-window", self.window_kind] if self.window_kind else []
        return extra + (["--retry-hint", self.hint] if self.hint else [])

    def needs(self) -> list[str]:
        """The emulator flags this shape needs beyond the basic ones."""
        return [flag for flag, value in (("--quota-window", self.window_kind), ("--retry-hint", self.hint)) if value]


def emulator_flags() -> str:
    """The emulator's --help: which quota shapes it can meter (feature detection)."""
    done = subprocess.run([str(BIN / "beamvec"), "emulator", "--help"], capture_output=True, text=True, timeout=60)
    return done.stdout


ROWS = {
    "told": ("beamvec, DirectRunner, --quota-rpm {rpm}", ()),
    "two-processes": ("beamvec, 2 worker processes sharing the quota",
                      ("--direct_running_mode=multi_processing", "--direct_num_workers=2")),
    "runinference": ("Beam RunInference + GeminiModelHandler, batches of 100", None),
    "discover": ("beamvec with no --quota-rpm (finds the limit from 429s)", ("--no-quota",)),
    "two-jobs": ("two beamvec jobs at once, each --quota-rpm {rpm}, half the texts each, unaware "
                 "of each other", ()),
}


def shapes(args: argparse.Namespace) -> list[Shape]:
    t, n = args.texts, args.shards
    found = [
        Shape("server meters over 60 s", 60.0, t, n, ("told", "two-processes", "runinference", "discover")),
        Shape("server meters over 6 s", 6.0, t, n, ("told", "runinference", "discover", "two-jobs")),
        Shape("server meters over 1 s", 1.0, t, n, ("told", "runinference", "discover", "two-jobs")),
        Shape(f"{t // 50:,} shards of 50, server meters over 6 s", 6.0, t, t // 50, ("told", "runinference")),
        Shape(f"{t // 20:,} shards of 20, server meters over 6 s", 6.0, t, t // 20, ("told", "runinference")),
        Shape(f"two jobs for six minutes: {18 * t:,} texts, server meters over 60 s", 60.0, 18 * t, 2 * n,
              ("two-jobs",)),
        *token_and_window_shapes(args),
    ]
    return [s for s in found if not args.only or any(s.title.startswith(word) for word in args.only)]


def token_and_window_shapes(args: argparse.Namespace) -> list[Shape]:
    """Token-bound shapes (English, and Chinese that the server counts
    per script) and, bound by requests, each window kind with each hint shape;
    6-s windows, so that each run is short."""
    t, n = args.texts, args.shards
    found = [Shape(f"tokens, {name}: {args.tpm:,} a minute over 6 s", 6.0, t, n, ("told", "discover"),
                   tpm=args.tpm, script=script) for name, script in (("English", "latin"), ("Chinese", "cjk"))]
    for kind in ("sliding", "fixed", "bucket"):
        for hint in ("exact", "seconds", "none"):
            found.append(Shape(f"requests, window {kind}, hint {hint}: over 6 s", 6.0, t, n, ("told", "discover"),
                               window_kind=kind, hint=hint))
    return found


def measure(shape: Shape, args: argparse.Namespace, tmp: Path, fail: float, counter: list[int]) -> list[Row]:
    corpus = tmp / f"corpus-{shape.shards}-{shape.script}"
    if not corpus.exists():
        make_corpus(corpus, shape.texts, shape.shards, script=shape.script)
    halves = [tmp / f"corpus-{shape.shards}-a", tmp / f"corpus-{shape.shards}-b"]
    rows = []
    with EmulatorProcess(shape.server_rpm(args.rpm), shape.window_s, fail, args.latency_ms,
                         args.jitter_ms, shape.emulator_args()) as emu:
        for key in shape.rows:
            if args.rows and key not in args.rows:
                continue
            label, extra = ROWS[key]
            label = label.format(rpm=args.rpm)
            if shape.tpm:
                label = label.replace(f"--quota-rpm {args.rpm}", f"--quota-tpm {shape.tpm}").replace(
                    "--quota-rpm", "--quota-tpm")
            counter[0] += 1
            out, log = tmp / f"out-{counter[0]}", tmp / f"run-{counter[0]}.log"
            print(f"  {shape.title}: {label} ...", flush=True)
            if extra is None:
                rows.append(run_baseline(label, emu, corpus, out, shape, log))
                continue
            corpora = [corpus]
            if key == "two-jobs":
                if not halves[0].exists():
                    half = shape.shards // 2
                    make_corpus(halves[0], shape.texts, shape.shards, range(half))
                    make_corpus(halves[1], shape.texts, shape.shards, range(half, shape.shards))
                corpora = halves
            rows.append(run_beamvec(label, emu, corpora, out, shape, args, extra, log))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="4,000 texts (tiny-shard shapes scaled alike): about a quarter of the time")
    parser.add_argument("--texts", type=int, default=None, help="default 20,000 (4,000 with --quick)")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--rpm", type=int, default=600, help="the quota, requests per minute")
    parser.add_argument("--only", nargs="*", default=[],
                        help="only the shapes whose title starts with one of these (e.g. 'server meters')")
    parser.add_argument("--rows", nargs="*", default=[],
                        help="only these rows of each shape (told, two-processes, runinference, discover, two-jobs)")
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--jitter-ms", type=float, default=20.0)
    parser.add_argument("--tpm", type=int, default=1_000_000,
                        help="token-bound shapes: the server's tokens a minute (beamvec told --quota-tpm the same)")
    parser.add_argument("--max-in-flight", type=int, default=8)
    parser.add_argument("--concurrent-shards", type=int, default=8)
    parser.add_argument("--fail-503", type=float, default=0.0,
                        help="also measure the 60-s shape with this share of 503s (0: skip)")
    parser.add_argument("--keep", action="store_true", help="keep the corpus, outputs and logs")
    args = parser.parse_args(argv)
    if args.texts is None:
        args.texts = 4_000 if args.quick else 20_000

    started = time.monotonic()
    load = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="beamvec-quota-bench-"))
    print(f"{args.texts:,} texts; emulator: {args.rpm} requests a minute metered over each shape's window, "
          f"100 texts a call, {args.latency_ms:g} ± {args.jitter_ms:g} ms, {DIM} dims; "
          f"beamvec --max-in-flight {args.max_in_flight} --concurrent-shards {args.concurrent_shards}",
          flush=True)
    supported = emulator_flags()
    plan = []
    for shape in shapes(args):
        missing = [flag for flag in shape.needs() if flag not in supported]
        if missing:
            print(f"skipped ({shape.title}): this emulator has no {', '.join(missing)}", flush=True)
        else:
            plan.append((shape, 0.0))
    if args.fail_503 > 0:
        plan += [(Shape(f"server meters over 60 s, {args.fail_503:.0%} of requests answered 503", 60.0,
                        args.texts, args.shards, ("told", "runinference", "discover")), args.fail_503)]
    stock = None
    failed = False
    counter = [0]
    for shape, fail in plan:
        if stock is None:
            with EmulatorProcess(args.rpm, 60.0, 0.0, 0.0, 0.0) as emu:
                stock = stock_request_results(emu.url)
        rows = measure(shape, args, tmp, fail, counter)
        failed |= any(r.failed for r in rows)
        print(f"\n### {shape.title}: {shape.texts:,} texts in {shape.shards:,} shards\n")
        print(table(rows, shape, args, fail))
        print(flush=True)
    print(NOTES.format(stock=stock, sample=SAMPLE_EVERY, rpm=args.rpm))
    print(f"Whole benchmark: {time.monotonic() - started:.0f} s; load average at the end "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (at the start {load:.1f}).")
    if args.keep or failed:
        print(f"corpus, outputs and logs kept in {tmp}")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_baseline":
        sys.exit(baseline_child(*sys.argv[2:5]))
    sys.exit(main())
