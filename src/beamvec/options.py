"""Every beamvec pipeline flag, in one PipelineOptions subclass, and YAML configs.

Flags are spelled with dashes (``--id-field``); the underscore spelling is
accepted too, so a YAML config can use either. A config file is turned into
flags placed before the command line's, so flags on the command line win.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from beamvec.backends.base import TASK_TYPES
from beamvec.prepare import LONG_TEXT_POLICIES, NORMALIZATIONS
from beamvec.sources import FORMATS


def _flag(parser: Any, name: str, **kwargs: Any) -> None:
    spellings = [f"--{name}"]
    if "-" in name:
        spellings.append(f"--{name.replace('-', '_')}")
    parser.add_argument(*spellings, dest=name.replace("-", "_"), **kwargs)


class BeamvecOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        # Inputs
        _flag(parser, "input", action="append", help="input glob or path (repeatable); any fsspec URL")
        _flag(parser, "format", choices=FORMATS, default=None, help="input format (default: by extension)")
        _flag(parser, "id-field", default="id", help="jsonl/csv/parquet field holding the record id")
        _flag(parser, "text-field", default="text", help="field holding the text to embed")
        _flag(parser, "title-field", default=None, help="field holding a document title (RETRIEVAL_DOCUMENT)")
        _flag(
            parser, "storage-option", action="append", default=None,
            help="fsspec option KEY=VALUE for inputs and output (repeatable), e.g. endpoint_url=...",
        )
        # Output
        _flag(parser, "output", help="output root: a directory or bucket prefix")
        # Prepare
        _flag(parser, "normalization", choices=NORMALIZATIONS, default="nfc", help="text normalization")
        _flag(
            parser, "on-long-text", choices=LONG_TEXT_POLICIES, default="truncate",
            help="texts over the backend's per-text limit: truncate (flagged) or dead-letter",
        )
        # Backend
        _flag(parser, "backend", choices=("local", "gemini", "vertex"), default="local")
        _flag(parser, "local-model-dir", default=None, help="another ONNX export with a tokenizer.json")
        _flag(parser, "local-threads", type=int, default=0, help="onnxruntime threads (0: all cores)")
        _flag(parser, "model", default=None, help="API model (default gemini-embedding-001)")
        _flag(parser, "task-type", choices=TASK_TYPES, default=None, help="embedding task type")
        _flag(parser, "output-dimensionality", type=int, default=None, help="vector size (API backends)")
        _flag(parser, "api-key-file", default=None, help="file holding the API key (else env GEMINI_API_KEY)")
        _flag(parser, "api-key-secret", default=None,
              help="Secret Manager secret holding the API key, read by each worker: "
                   "projects/P/secrets/S[/versions/V]")
        _flag(parser, "location", default="us-central1", help="Vertex AI location")
        _flag(parser, "vertex-auth", choices=("adc", "api_key", "anonymous"), default="adc",
              help="Vertex credentials: ADC, express-mode API key, or anonymous (emulators only)")
        _flag(parser, "api-base-url", default=None, help="API base URL (a proxy or `beamvec emulator`)")
        _flag(parser, "api-version", default=None, help="API version with --api-base-url, e.g. v1beta")
        _flag(parser, "request-timeout", type=float, default=60.0, help="seconds per API request")
        # Quota, retry, concurrency
        _flag(parser, "quota-rpm", type=float, default=None, help="requests per minute for the whole job")
        _flag(parser, "quota-tpm", type=float, default=None, help="tokens per minute for the whole job")
        _flag(parser, "quota-window", type=float, default=60.0,
              help="seconds the quota is metered over (60 for the real APIs; shorter for emulators)")
        _flag(parser, "quota-workers", type=int, default=1, help="workers sharing the quota")
        _flag(parser, "max-in-flight", type=int, default=None, help="requests outstanding per worker")
        _flag(parser, "concurrent-shards", type=int, default=4, help="shards a worker works on at once")
        _flag(parser, "max-attempts", type=int, default=8, help="attempts per batch before dead letters")
        _flag(parser, "batch-deadline", type=float, default=600.0, help="seconds per batch, retries included")
        _flag(parser, "fail-on-exhausted", action="store_true", default=False,
              help="fail the run instead of dead-lettering a batch whose retries ran out")
        # Gemini Batch API (half price, turnaround up to 24 h)
        _flag(parser, "batch-api", action="store_true", default=False,
              help="embed through Gemini Batch API jobs (--backend gemini): half the online price")
        _flag(parser, "no-wait", action="store_true", default=False,
              help="with --batch-api: submit, collect what is done, and exit; rerun to finish")
        _flag(parser, "batch-fallback", choices=("none", "online"), default="none",
              help="lines the batch service keeps failing: dead letters (none) or online calls")
        _flag(parser, "batch-poll-interval", type=float, default=30.0,
              help="seconds between batch job polls at first (backs off to 10 minutes)")
        _flag(parser, "batch-max-resubmits", type=int, default=2,
              help="new jobs for the texts of a FAILED or EXPIRED batch job")
        _flag(parser, "batch-max-requests-per-file", type=int, default=50_000,
              help="requests per batch input file (one job each)")
        # Run control
        _flag(parser, "force", action="store_true", default=False,
              help="redo every shard and reuse no vector (also allows a new configuration)")
        _flag(parser, "since", default=None, help="first dt=YYYY-MM-DD partition to embed (backfills)")
        _flag(parser, "until", default=None, help="last dt=YYYY-MM-DD partition to embed (backfills)")
        _flag(parser, "checkpoint", type=_bool, default=None,
              help="save each finished batch so a crashed shard resumes (default: on for API backends)")
        _flag(parser, "quiet", action="store_true", default=False, help="no progress output")
        _flag(parser, "progress-interval", type=float, default=None,
              help="seconds between progress lines (default 0.5 on a terminal, 10 otherwise)")


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


#: Storage option names that hold credentials. Pipeline options and DoFns are
#: pickled and shipped to the runner, so these are refused: credentials belong
#: in the workers' environment (AWS variables, ADC), never on the command line.
_SECRET_OPTION_NAMES = {
    "key", "secret", "token", "password", "session_token", "client_secret", "credentials",
    "access_key", "secret_key", "aws_access_key_id", "aws_secret_access_key",
    "aws_session_token", "account_key", "sas_token", "connection_string",
}
#: gcsfs's `token` modes that name a way to find credentials, not a credential.
_TOKEN_MODES = {"anon", "google_default", "cloud", "cache", "browser"}


def parse_storage_options(pairs: Sequence[str] | None) -> dict[str, Any]:
    """KEY=VALUE pairs; values are JSON when they parse (true, 3, {...}), else strings.
    Dotted keys nest: client_kwargs.endpoint_url=... ."""
    options: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--storage-option takes KEY=VALUE, got {pair!r}")
        try:
            parsed: Any = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        *parents, leaf = key.split(".")
        if leaf.lower() in _SECRET_OPTION_NAMES and not (leaf == "token" and parsed in _TOKEN_MODES):
            raise ValueError(
                f"--storage-option {key}=… looks like a credential, and pipeline options travel "
                "to every worker: give credentials to the workers' environment instead "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, ADC)"
            )
        target = options
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = parsed
    return options


#: Flags that take true/false as a value (the others are store_true switches).
_VALUED_BOOLS = {"checkpoint"}


def config_to_argv(path: str | Path) -> list[str]:
    """A YAML mapping of flag names to values, as command-line flags."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must be a mapping of flag names to values")
    argv: list[str] = []
    for key, value in data.items():
        flag = f"--{key}"
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
        if arg == "--config" and i + 1 < len(argv):
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
