"""Every beamvec pipeline flag as a Beam PipelineOptions subclass; YAML configs;
and the strict parse that `run` and `plan` share.

Beam drops a flag it does not know with a warning, so a typo (``--quota-rmp``)
would silently run without a quota. ``parse_pipeline_options`` refuses it
instead, with a "did you mean", while every flag of every registered Beam
options class still passes; it also range-checks every numeric beamvec flag
before anything is sent. The flags themselves are defined in flags.py (no
Beam), ``--storage-option`` parsing in storage_options.py (no Beam).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml
from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from beamvec.driver.flags import add_beamvec_flags
from beamvec.driver.storage_options import parse_storage_options
from beamvec.errors import UsageError

__all__ = [
    "BeamvecOptions",
    "check_flags",
    "config_to_argv",
    "expand_config",
    "parse_pipeline_options",
    "parse_storage_options",  # re-exported: it lives in storage_options.py (no Beam)
    "validate",
]


class BeamvecOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        add_beamvec_flags(parser)


# -- the strict parse ---------------------------------------------------------


class _StrictParser(_BeamArgumentParser):
    """Beam's own parser (it knows ValueProvider flags), raising UsageError."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see `beamvec run --help`")


def _options_classes() -> list[type[PipelineOptions]]:
    """Every registered PipelineOptions subclass, recursively, once each
    (by name, as Beam's get_all_options picks them)."""
    found: dict[str, type[PipelineOptions]] = {}
    pending = list(PipelineOptions.__subclasses__())
    while pending:
        cls = pending.pop(0)
        found.setdefault(str(cls), cls)
        pending.extend(cls.__subclasses__())
    return list(found.values())


def all_flags_parser() -> _BeamArgumentParser:
    """A parser with the flags of beamvec and of every registered Beam options class."""
    parser = _StrictParser(allow_abbrev=False, add_help=False, conflict_handler="resolve")
    for cls in _options_classes():
        if "_add_argparse_args" in cls.__dict__:  # inherited ones are already there
            cls._add_argparse_args(parser)
    return parser


def _known(parser: _BeamArgumentParser) -> list[str]:
    return sorted(parser._option_string_actions)


def _did_you_mean(name: str, known: Sequence[str], prefix: str = "--") -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean {prefix}{close[0].removeprefix('--')}?" if close else ""


def check_flags(flags: Sequence[str]) -> None:
    """Raise UsageError for a flag no beamvec or Beam options class knows
    (with a "did you mean"), a stray argument, or a value a flag refuses."""
    parser = all_flags_parser()
    _, unknown = parser.parse_known_args(list(flags))  # bad values: _StrictParser.error
    for arg in unknown:
        if arg == "--":
            break
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            raise UsageError(
                f"unknown flag {name}{_did_you_mean(name, _known(parser))} "
                "(see `beamvec run --help`; Beam's own flags pass too)"
            )
        raise UsageError(
            f"unexpected argument {arg!r}: flags take the form --name VALUE; "
            "quote globs so the shell does not expand them (--input 'corpus/*.jsonl')"
        )


def _check_number(value: float | None, flag: str, minimum: float, strict: bool, hint: str = "") -> None:
    if value is None:
        return
    bad = not math.isfinite(value) or (value <= minimum if strict else value < minimum)
    if bad:
        bound = f"greater than {minimum:g}" if strict else f"at least {minimum:g}"
        raise UsageError(f"{flag} must be {bound}, got {value:g}{hint}")


def validate(bv: BeamvecOptions) -> None:
    """Range-check every numeric beamvec flag, before anything is sent."""
    no_limit = "; omit the flag for no limit"
    _check_number(bv.quota_rpm, "--quota-rpm", 0, strict=True, hint=no_limit)
    _check_number(bv.quota_tpm, "--quota-tpm", 0, strict=True, hint=no_limit)
    _check_number(bv.quota_window, "--quota-window", 0, strict=True)
    _check_number(bv.quota_workers, "--quota-workers", 1, strict=False)
    _check_number(bv.max_in_flight, "--max-in-flight", 1, strict=False)
    _check_number(bv.concurrent_shards, "--concurrent-shards", 1, strict=False)
    _check_number(bv.max_attempts, "--max-attempts", 1, strict=False)
    _check_number(bv.batch_deadline, "--batch-deadline", 0, strict=True)
    _check_number(bv.request_timeout, "--request-timeout", 0, strict=True)
    _check_number(bv.local_threads, "--local-threads", 0, strict=False, hint="; 0 means all cores")
    _check_number(bv.output_dimensionality, "--output-dimensionality", 1, strict=False)
    _check_number(bv.progress_interval, "--progress-interval", 0, strict=False, hint="; 0 shows none")
    _check_number(bv.split_bytes, "--split-bytes", 0, strict=False, hint="; 0 never splits")
    _check_number(bv.batch_poll_interval, "--batch-poll-interval", 0, strict=True)
    _check_number(bv.batch_max_resubmits, "--batch-max-resubmits", 0, strict=False)
    _check_number(bv.batch_max_requests_per_file, "--batch-max-requests-per-file", 1, strict=False)


def parse_pipeline_options(argv: Sequence[str]) -> PipelineOptions:
    """The flags of `run` and `plan` (``--config`` files expanded), checked:
    unknown flags, bad values and out-of-range numbers are UsageErrors."""
    flags = expand_config(argv)
    check_flags(flags)
    options = PipelineOptions(flags)
    validate(options.view_as(BeamvecOptions))
    return options


# -- YAML configs ---------------------------------------------------------------


#: Flags that take true/false as a value (the others are store_true switches).
_VALUED_BOOLS = {"checkpoint"}


def _read_config(path: str | Path) -> dict[Any, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise UsageError(f"cannot read --config {path}: {reason}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise UsageError(
            f"--config {path}: invalid YAML{where}: {problem}; fix the file "
            "(a mapping of flag names to values)"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(
            f"--config {path}: expected a mapping of flag names to values "
            f"(like `quota-rpm: 1500`), got a YAML {type(data).__name__}"
        )
    return data


def config_to_argv(path: str | Path) -> list[str]:
    """A YAML mapping of flag names to values, as command-line flags.

    Keys are beamvec or Beam flags without the leading ``--``, with dashes or
    underscores; an unknown key is a UsageError naming the file."""
    data = _read_config(path)
    known = _known(all_flags_parser())
    argv: list[str] = []
    for key, value in data.items():
        flag = f"--{key}"
        if flag not in known and f"--{str(key).replace('-', '_')}" in known:
            flag = f"--{str(key).replace('-', '_')}"  # Beam's flags are spelt with underscores
        if flag not in known:
            raise UsageError(
                f"--config {path}: unknown key {key!r}"
                f"{_did_you_mean(f'--{key}', known, prefix='')} "
                "(keys are beamvec or Beam flags without the leading --)"
            )
        if value is None:
            continue
        if value is False:
            if key.replace("-", "_") in _VALUED_BOOLS:
                argv.append(f"{flag}=false")
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            argv.extend(f"{flag}={_scalar(item)}" for item in value)
        elif isinstance(value, dict):
            argv.extend(f"{flag}={k}={_scalar(v)}" for k, v in value.items())
        else:
            argv.append(f"{flag}={_scalar(value)}")
    return argv


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def expand_config(argv: Sequence[str]) -> list[str]:
    """Replace ``--config FILE`` with the file's flags, placed first so later flags win."""
    argv = list(argv)
    files: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise UsageError("--config needs a FILE: --config runner_configs/local.yaml")
            files.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        i += 1
    given = {_flag_name(arg) for arg in rest if arg.startswith("--")}
    head: list[str] = []
    for file in files:
        head.extend(arg for arg in config_to_argv(file) if _flag_name(arg) not in given)
    return head + rest


def _flag_name(arg: str) -> str:
    return arg[2:].split("=", 1)[0].replace("-", "_")
