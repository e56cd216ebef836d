"""``beamvec emulator``: the flags, and serving until Ctrl-C."""

from __future__ import annotations

import argparse
import difflib
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from beamvec.emulator.config import RETRY_HINTS, WINDOW_KINDS, EmulatorConfig
from beamvec.emulator.server import Emulator


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("a rate must be between 0 and 1")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, with a "did you mean" for a
    misspelt flag (the emulator keeps its own: it imports nothing of the client)."""

    def error(self, message: str) -> NoReturn:
        hint = ""
        if message.startswith("unrecognized arguments:"):
            flags = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=")[0], flags, n=1)
                if close:
                    hint = f"; did you mean {close[0]}?"
                    break
        self.exit(2, f"{self.prog}: {message}{hint} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="beamvec emulator",
        description="Serve the Gemini API and Vertex AI embedding REST protocol on this machine.",
        epilog=(
            "example:\n  beamvec emulator --port 8765 --api-key test --rpm 600 --latency-ms 200\n"
            "  GEMINI_API_KEY=test beamvec run --backend gemini "
            "--api-base-url http://127.0.0.1:8765 --input 'corpus/*.jsonl' --output out/"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    p.add_argument("--api-key", default=None, help="the key callers must send (default: any)")
    p.add_argument("--rpm", type=int, default=None, help="requests per window (default: no limit)")
    p.add_argument("--tpm", type=int, default=None, help="tokens per window (default: no limit)")
    p.add_argument("--window-s", type=float, default=60.0, help="quota window in seconds")
    p.add_argument(
        "--quota-window",
        choices=WINDOW_KINDS,
        default="sliding",
        help="how quota is metered: a sliding window, a fixed window reset at wall-clock "
        "boundaries, or a token bucket refilled continuously (default: sliding)",
    )
    p.add_argument(
        "--retry-hint",
        choices=RETRY_HINTS,
        default="exact",
        help="a 429's hint: RetryInfo to the millisecond and Retry-After (exact), RetryInfo in "
        "whole seconds as the Gemini API words it (seconds), or none as Vertex often does",
    )
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--fail-500", type=_rate, default=0.0, help="rate of 500 INTERNAL answers")
    p.add_argument("--fail-503", type=_rate, default=0.0, help="rate of 503 UNAVAILABLE answers")
    p.add_argument("--hang", type=_rate, default=0.0, help="rate of requests never answered")
    p.add_argument("--hang-s", type=float, default=30.0, help="how long a hung request is held")
    p.add_argument("--reset", type=_rate, default=0.0, help="rate of connections reset")
    p.add_argument("--malformed", type=_rate, default=0.0, help="rate of malformed 200 answers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vectors", choices=("hash", "local"), default="hash")
    b = p.add_argument_group("Batch API (asyncBatchEmbedContent, files)")
    b.add_argument("--batch-job-s", type=float, default=2.0, help="seconds a batch job runs")
    b.add_argument("--batch-no-shuffle", action="store_true", help="result lines in input order")
    b.add_argument(
        "--batch-line-error-rate",
        type=_rate,
        default=0.0,
        help="rate of result lines answered with an error",
    )
    b.add_argument("--batch-fail-rate", type=_rate, default=0.0, help="rate of FAILED jobs")
    b.add_argument("--batch-fail-first", type=int, default=0, help="fail the first N jobs")
    b.add_argument("--batch-expire-rate", type=_rate, default=0.0, help="rate of EXPIRED jobs")
    b.add_argument(
        "--batch-max-concurrent",
        type=int,
        default=100,
        help="active jobs before a create gets 429 (0: no cap)",
    )
    b.add_argument(
        "--batch-file-ttl-s",
        type=float,
        default=48 * 3600.0,
        help="seconds a file is kept after upload, then deleted (Google: 48 h)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    try:
        config = EmulatorConfig(
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            rpm=args.rpm,
            tpm=args.tpm,
            window_s=args.window_s,
            quota_window=args.quota_window,
            retry_hint=args.retry_hint,
            latency_ms=args.latency_ms,
            jitter_ms=args.jitter_ms,
            fail_500=args.fail_500,
            fail_503=args.fail_503,
            hang=args.hang,
            hang_s=args.hang_s,
            reset=args.reset,
            malformed=args.malformed,
            seed=args.seed,
            vectors=args.vectors,
            batch_job_s=args.batch_job_s,
            batch_shuffle=not args.batch_no_shuffle,
            batch_line_error_rate=args.batch_line_error_rate,
            batch_fail_rate=args.batch_fail_rate,
            batch_fail_first=args.batch_fail_first,
            batch_expire_rate=args.batch_expire_rate,
            batch_max_concurrent=args.batch_max_concurrent or None,
            batch_file_ttl_s=args.batch_file_ttl_s,
        )
    except ValueError as exc:
        print(f"beamvec emulator: {exc}", file=sys.stderr)
        return 2
    emulator = Emulator(config)
    try:
        emulator.start()
    except OSError as exc:
        print(f"beamvec emulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(
        f"beamvec emulator on {emulator.url}  (Gemini API: --api-base-url {emulator.url}; "
        f"stats: GET {emulator.url}/stats)",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0
