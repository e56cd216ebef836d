"""The `beamvec` command: run | emulator (and more to come).

Every failure the user can fix ends in one line on stderr that says what to
do next, and a non-zero exit: 2 for a usage problem, 1 for a systemic fault.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from beamvec.errors import SystemicError, UsageError

RUN_HELP = """\
Embed text shards into Parquet vector shards.

example:
  beamvec run --input 'corpus/*.jsonl' --output out/ --config runner_configs/local.yaml

Any Beam pipeline flag (--runner, --direct_num_workers, ...) is passed through;
--config FILE reads flags from a YAML file (flags on the command line win).
"""


def _run_help() -> str:
    from beamvec.options import BeamvecOptions

    parser = argparse.ArgumentParser(
        prog="beamvec run", description=RUN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    BeamvecOptions._add_argparse_args(parser)
    return parser.format_help()


def _run(argv: Sequence[str]) -> int:
    from beamvec.job import run_job

    summary = run_job(argv)
    return 0 if summary["complete"] else 1


def _emulator(argv: Sequence[str]) -> int:
    from beamvec.emulator.server import main as emulator_main

    return emulator_main(list(argv))


def _command(module: str):
    """A subcommand's main(), imported only when it runs."""

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
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_beam_import_noise)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = ["usage: beamvec COMMAND [flags]", "", "commands:"]
        lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
        lines += ["", "example: beamvec run --input 'corpus/*.jsonl' --output out/"]
        print("\n".join(lines), file=sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command == "run" and any(a in ("-h", "--help") for a in rest):
        print(_run_help())
        return 0

    try:
        return COMMANDS[command][0](rest)
    except SystemExit as exc:  # argparse's --help and usage errors
        return exc.code if isinstance(exc.code, int) else 2
    except (UsageError, ValueError) as exc:
        print(f"beamvec {command}: {exc}", file=sys.stderr)
        return 2
    except SystemicError as exc:
        print(f"beamvec {command}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # storage: missing bucket, denied, bad credentials (also from a worker)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"beamvec {command}: {reason}", file=sys.stderr)
        return 1
    except Exception as exc:  # a worker's SystemicError arrives wrapped by the runner
        systemic = _find_systemic(exc)
        if systemic is None:
            raise
        print(f"beamvec {command}: {systemic}", file=sys.stderr)
        return 1


def _quiet_beam_import_noise(record: logging.LogRecord) -> bool:
    """Beam warns about optional GCP clients we never use; drop just that line."""
    return not str(record.msg).startswith("apitools not found")


def _find_systemic(exc: BaseException) -> str | None:
    """The runner wraps worker errors; find our one-line message inside."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, SystemicError):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    marker = "SystemicError: "
    if marker in text:
        return text.split(marker, 1)[1].splitlines()[0]
    return None


if __name__ == "__main__":
    sys.exit(main())
