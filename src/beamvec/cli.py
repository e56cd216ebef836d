"""The `beamvec` command: run | emulator (and more to come).

Every failure the user can fix ends in one line on stderr that says what to
do next, and a non-zero exit: 2 for a usage problem, 1 for a systemic fault.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Sequence

from beamvec.errors import SystemicError, UsageError, reason_of
from beamvec.interrupt import Terminated

RUN_HELP = """\
Embed text shards into Parquet vector shards.

example:
  beamvec run --input 'corpus/*.jsonl' --output out/ --config runner_configs/local.yaml

Any Beam pipeline flag (--runner, --direct_num_workers, ...) is passed through;
--config FILE reads flags from a YAML file (flags on the command line win).
"""


def _run_help() -> str:
    # flags.py, not options.py: `beamvec run --help` must not import Beam (~1 s).
    from beamvec.flags import add_beamvec_flags

    parser = argparse.ArgumentParser(
        prog="beamvec run", description=RUN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_beamvec_flags(parser)
    return parser.format_help()


def _run(argv: Sequence[str]) -> int:
    from beamvec.job import run_job

    summary = run_job(argv)
    return 0 if summary["complete"] or summary.get("waiting") else 1  # --no-wait: jobs running


def _emulator(argv: Sequence[str]) -> int:
    from beamvec.emulator.cli import main as emulator_main

    return emulator_main(list(argv))


def _command(module: str):
    """A subcommand's main(), imported only when it runs: that is the point, so
    that `inspect`, `verify` and `--help` start without Apache Beam."""

    def run(argv: Sequence[str]) -> int:
        from importlib import import_module

        return import_module(f"beamvec.commands.{module}").main(list(argv))

    return run


COMMANDS = {
    "run": (_run, "embed a corpus (see `beamvec run --help`)"),
    "plan": (_command("plan"), "scan inputs and estimate records, tokens, requests, time and cost"),
    "inspect": (_command("inspect_output"), "describe an output: shards, rows, model, norms, dead letters"),
    "search": (_command("search"), "nearest records of an output to a query"),
    "verify": (_command("verify"), "check every input record is in the output exactly once"),
    "export": (_command("export"), "send vectors to LanceDB or Vertex AI Vector Search, only what changed"),
    "report": (_command("report"), "write an HTML report: rate vs quota, 429s, stragglers, dead letters, cost"),
    "emulator": (_emulator, "serve a local Gemini/Vertex embedding API for tests and demos"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("BEAMVEC_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_beam_import_noise)
        if not debug:  # the failure reaches the user as one line below
            handler.addFilter(_quiet_runner_tracebacks)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = ["usage: beamvec [--debug] COMMAND [flags]", "", "commands:"]
        lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
        lines += ["", "--debug (or BEAMVEC_DEBUG=1) shows the traceback of an unexpected error.",
                  "", "example: beamvec run --input 'corpus/*.jsonl' --output out/"]
        print("\n".join(lines), file=sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command == "run" and any(a in ("-h", "--help") for a in rest):
        print(_run_help())
        return 0
    try:
        return COMMANDS[command][0](rest)
    except SystemExit as exc:  # argparse's --help
        return exc.code if isinstance(exc.code, int) else 2
    except UsageError as exc:
        return _fail(command, str(exc), 2)
    except SystemicError as exc:
        return _fail(command, _unwrapped(exc), 1)
    except KeyboardInterrupt as exc:
        if debug:
            raise
        code, what = (143, "terminated") if isinstance(exc, Terminated) else (130, "interrupted")
        if str(exc):  # job.py's line: how many shards are committed
            return _fail(command, str(exc), code)
        if command == "run":
            return _fail(command, f"{what}; committed shards stay committed, "
                         "rerun the same command to resume", code)
        return _fail(command, what, code)
    except OSError as exc:  # storage: missing bucket, denied, bad credentials
        if debug:
            raise
        return _fail(command, reason_of(exc), 1)
    except Exception as exc:  # the runner's wrapping of a worker's failure, or a bug
        systemic = _find_systemic(exc)
        if systemic is not None:
            return _fail(command, _unwrapped(systemic), 1)
        if debug:
            raise
        name, reason = type(exc).__name__, reason_of(exc)
        what = name if reason == name else f"{name}: {reason}"
        return _fail(command, f"unexpected error: {what}; rerun with --debug for the traceback", 1)


def _fail(command: str, message: str, code: int) -> int:
    """The one line a failure ends in."""
    print(f"beamvec {command}: {' '.join(message.split())}", file=sys.stderr)
    return code


def _unwrapped(exc: BaseException) -> str:
    """A worker's message without the "[while running 'Step']" Beam adds to it."""
    return re.sub(r"\s*\[while running '[^']*'\]\s*$", "", str(exc))


def _quiet_beam_import_noise(record: logging.LogRecord) -> bool:
    """Beam warns about optional GCP clients we never use; drop just that line."""
    return not str(record.msg).startswith("apitools not found")


def _quiet_runner_tracebacks(record: logging.LogRecord) -> bool:
    """Beam logs a failing DoFn's traceback (and relays its workers') before it
    raises; the raised error ends in one line here, so drop those records."""
    if not record.name.startswith("apache_beam") or record.levelno < logging.ERROR:
        return True
    return not (record.exc_info or "Traceback (most recent call last)" in record.getMessage())


def _find_systemic(exc: BaseException) -> SystemicError | None:
    """An in-process runner re-raises a worker's error with its chain: find
    our SystemicError in it (other runners: see beamvec.failures)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, SystemicError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def entry() -> None:
    """The program: ``main``, then an exit that no stuck worker thread can hold
    up (the interpreter would join them): the run has said its one line, and
    every commit is atomic."""
    code = main()
    if code and _threads_linger(timeout=2.0):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _threads_linger(timeout: float) -> bool:
    """Whether non-daemon threads are still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            return True
    return False


if __name__ == "__main__":
    entry()
