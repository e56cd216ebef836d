"""Every beamvec flag, defined once, without Beam.

``BeamvecOptions`` (options.py) registers these with Beam; ``beamvec run
--help`` prints them without importing Beam. Flags are spelled with dashes
(``--id-field``); the underscore spelling is accepted too, so a YAML config
can use either.
"""

from __future__ import annotations

import argparse
from typing import Any

from beamvec.backends.base import TASK_TYPES
from beamvec.records import TRANSIENT_REASONS
from beamvec.route.prepare import LONG_TEXT_POLICIES, NORMALIZATIONS
from beamvec.sources import FORMATS


def _flag(parser: Any, name: str, **kwargs: Any) -> None:
    spellings = [f"--{name}"]
    if "-" in name:
        spellings.append(f"--{name.replace('-', '_')}")
    parser.add_argument(*spellings, dest=name.replace("-", "_"), **kwargs)


def boolean(value: str) -> bool:
    """true/false, yes/no, on/off, 1/0."""
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_beamvec_flags(parser: Any) -> None:
    """Add every beamvec flag to an argparse parser (Beam's or a plain one)."""
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
    _flag(parser, "local-threads", type=int, default=0, help="onnxruntime threads (0: this worker process's share of the cores)")
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
    # Run control
    _flag(parser, "force", action="store_true", default=False,
          help="redo every shard and reuse no vector (also allows a new configuration)")
    _flag(parser, "break-lease", action="store_true", default=False,
          help="take over the output's lease from another run known to be dead "
               "(a run refuses an output another live run is writing to)")
    _flag(parser, "retry-dead-letters", nargs="?", const=",".join(TRANSIENT_REASONS), default=None,
          metavar="REASON,...",
          help="embed again only the dead-lettered records with these reasons (default: "
               f"{', '.join(TRANSIENT_REASONS)}); their shards' other vectors are reused, "
               "so only those texts are billed")
    _flag(parser, "split-bytes", type=int, default=None, metavar="BYTES",
          help="cut uncompressed input files larger than this into splits that different "
               "workers embed (default 256 KiB; 0: never split)")
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
    _flag(parser, "reuse-from", action="append", default=None, metavar="OUTPUT",
          help="also reuse vectors of texts embedded in this other beamvec output "
               "(repeatable; same configuration only)")
    _flag(parser, "prune", action="store_true", default=False,
          help="after the run, remove shards whose input is no longer listed: the output "
               "mirrors tonight's input (snapshots)")
    _flag(parser, "since", default=None, help="first dt=YYYY-MM-DD partition to embed (backfills)")
    _flag(parser, "until", default=None, help="last dt=YYYY-MM-DD partition to embed (backfills)")
    _flag(parser, "checkpoint", type=boolean, default=None,
          help="save each finished batch so a crashed shard resumes (default: on for API backends)")
    _flag(parser, "quiet", action="store_true", default=False,
          help="print nothing but warnings and errors (the exit code says how it ended)")
    _flag(parser, "json", action="store_true", default=False,
          help="print the summary (run) or the plan (plan) as JSON on stdout, schema in docs/cli.md; "
               "other lines go to stderr")
    _flag(parser, "fail-on-dead-letters", action="store_true", default=False,
          help="exit 3 instead of 0 when the run completed but dead-lettered records (for schedulers)")
    _flag(parser, "progress-interval", type=float, default=None,
          help="seconds between progress lines (default 0.5 on a terminal, 10 otherwise; 0: none)")
