"""The `beamvec` command: run, plan, inspect, ... and the emulator.

Every failure the user can fix ends in one line on stderr that says what to
do next, and a non-zero exit: 2 for a usage problem, 1 for a systemic fault;
the other exit codes are in ``run_summary.EXIT_CODES`` (docs/cli.md).
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Sequence

from beamvec import __version__
from beamvec.driver.run_summary import EXIT_CODES, EXIT_INTERRUPTED, EXIT_TERMINATED
from beamvec.errors import SystemicError, UsageError, reason_of
from beamvec.interrupt import Terminated

LOG_LEVELS = ("debug", "info", "warning", "error")

RUN_HELP = """\
Embed text shards into Parquet vector shards.

example:
  beamvec run --input 'corpus/*.jsonl' --output out/ --config runner_configs/local.yaml

Any Beam pipeline flag (--runner, --direct_num_workers, ...) is passed through;
--config FILE reads flags from a YAML file (flags on the command line win).
"""


def _run_help() -> str:
    # flags.py, not options.py: `beamvec run --help` must not import Beam (~1 s).
    from beamvec.driver.flags import add_beamvec_flags

    parser = argparse.ArgumentParser(
        prog="beamvec run", description=RUN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_beamvec_flags(parser)
    return parser.format_help()


def _run(argv: Sequence[str]) -> int:
    from beamvec.driver.job import run_job

    return run_job(argv).exit_code


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
    "embed": (_command("embed"), "print query vectors made as an output's were (JSON or .npy), for LanceDB, DuckDB, ..."),
    "verify": (_command("verify"), "check every input record is in the output exactly once"),
    "export": (_command("export"), "send vectors to LanceDB or Vertex AI Vector Search, only what changed"),
    "report": (_command("report"), "write an HTML report: rate vs quota, 429s, stragglers, dead letters, cost"),
    "emulator": (_emulator, "serve a local Gemini/Vertex embedding API for tests and demos"),
}


def usage() -> str:
    lines = ["usage: beamvec [--version] [--debug] [--log-level LEVEL] COMMAND [flags]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "--debug (or BEAMVEC_DEBUG=1) shows the traceback of an unexpected error.",
              f"--log-level {'|'.join(LOG_LEVELS)} (default warning) sets how much beamvec and Beam log.",
              "", "exit codes:"]
    lines += [f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES]
    lines += ["", "example: beamvec run --input 'corpus/*.jsonl' --output out/"]
    return "\n".join(lines)


def _log_level(argv: list[str]) -> tuple[list[str], int]:
    """``--log-level LEVEL`` (anywhere on the line) taken out of ``argv``."""
    rest, level = [], "warning"
    items = iter(argv)
    for arg in items:
        if arg == "--log-level" or arg.startswith("--log-level="):
            level = arg.partition("=")[2] if "=" in arg else next(items, "")
            if level.lower() not in LOG_LEVELS:
                raise UsageError(f"--log-level {level!r} is not one of {', '.join(LOG_LEVELS)}")
            level = level.lower()
        else:
            rest.append(arg)
    return rest, getattr(logging, level.upper())


def _unknown_command(command: str) -> str:
    close = difflib.get_close_matches(command, list(COMMANDS), n=1, cutoff=0.6)
    hint = f"did you mean `beamvec {close[0]}`?" if close else "see `beamvec --help` for the commands"
    return f"beamvec: unknown command {command!r}; {hint}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("BEAMVEC_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        argv, level = _log_level(argv)
    except UsageError as exc:
        return _fail("", str(exc), 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_beam_import_noise)
        if not debug:  # the failure reaches the user as one line below
            handler.addFilter(_quiet_runner_tracebacks)
    if argv and argv[0] in ("--version", "-V"):
        print(f"beamvec {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(_unknown_command(argv[0]), file=sys.stderr)
        return 2
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
        code, what = ((EXIT_TERMINATED, "terminated") if isinstance(exc, Terminated)
                      else (EXIT_INTERRUPTED, "interrupted"))
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
    print(f"beamvec{' ' + command if command else ''}: {' '.join(message.split())}", file=sys.stderr)
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
    our SystemicError in it (other runners: see beamvec.contract.failures)."""
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
