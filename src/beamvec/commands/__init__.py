"""The operator commands around `beamvec run`: plan, inspect, search, verify.

Each module has ``main(argv) -> int``: it parses its own flags, prints to
stdout, and raises ``beamvec.driver.job.UsageError`` (exit 2) for anything the user
can fix, with a message that says what to do next. The helpers here are what
they share: flag parsing that raises instead of exiting, opening an output
and its manifest, and listing and reading its Parquet files in batches.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.parquet as pq

from beamvec import contract
from beamvec.contract import (
    MANIFEST,
    DamagedFileError,
    Description,
    Manifest,
    read_manifest,
)
from beamvec.contract import VECTORS_DIR as VECTORS_DIR
from beamvec.contract import dead_letter_files as dead_letter_files
from beamvec.contract import has_success as has_success
from beamvec.contract import name_of as shard_name  # noqa: F401 - the commands' name for it
from beamvec.contract import vector_files as vector_files
from beamvec.driver.storage_options import parse_storage_options
from beamvec.errors import UsageError, reason_of
from beamvec.write.sink import Output

#: Rows per record batch when commands scan vector files: bounds memory
#: (8192 x 3072 float32 is 96 MB at the largest dimension; 12 MB at 384).
SCAN_BATCH_ROWS = 8192


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (exit 2 through the cli) instead of exiting."""

    def __init__(self, prog: str, description: str, **kwargs: Any) -> None:
        super().__init__(
            prog=prog,
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kwargs,
        )

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see `{self.prog} --help`")


def parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace | int:
    """The parsed flags, or the exit code when argparse is done (``--help``)."""
    try:
        return parser.parse_args(list(argv))
    except SystemExit as exc:  # only --help gets here: errors raise UsageError
        return int(exc.code or 0)


def add_storage_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-option", "--storage_option", dest="storage_option", action="append",
        default=None, metavar="KEY=VALUE",
        help="fsspec option for the output (and inputs), repeatable, "
        "e.g. client_kwargs.endpoint_url=http://127.0.0.1:9000",
    )


def storage_options(pairs: Sequence[str] | None) -> dict[str, Any]:
    try:
        return parse_storage_options(pairs)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def not_an_output(url: str) -> UsageError:
    return UsageError(
        f"{url} has no {MANIFEST} and no vector files: is this a beamvec output? "
        f"run `beamvec run --input ... --output {url}` first, or check the path "
        "(and --storage-option for buckets)"
    )


def open_output(url: str, options: dict[str, Any]) -> tuple[Output, Manifest | None]:
    """An output root and its manifest (None when a first run crashed before
    writing it but vector files exist). Raises UsageError when it is no output."""
    try:
        output = Output(url, options)
        manifest = read_manifest(output)  # the contract's reader: UsageError when damaged
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"cannot read {url}: {type(exc).__name__}: {exc}; check the path, "
            "the credentials and --storage-option"
        ) from exc
    if manifest is None and not vector_files(output):
        raise not_an_output(url)
    return output, manifest


def iter_batches(
    output: Output, path: str, columns: Sequence[str], batch_size: int = SCAN_BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """Record batches of some columns of one Parquet file; memory stays
    bounded by one batch (pre_buffer off, so row groups are read one by one).
    A file that is not readable Parquet raises DamagedFileError, naming it."""
    try:
        with output.fs.open(path, "rb") as fh:
            pf = pq.ParquetFile(fh, pre_buffer=False)
            present = [c for c in columns if c in pf.schema_arrow.names]
            yield from pf.iter_batches(batch_size=batch_size, columns=present)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, pa.ArrowException) as exc:  # pyarrow's several errors for a torn file
        raise DamagedFileError(path, reason_of(exc)) from None


def description_of(
    output: Output, manifest: Manifest | None, files: Sequence[str] | None = None
) -> Description | None:
    """What the vectors are: see ``contract.description_of`` (``files``
    default: every vector file)."""
    known = manifest.description if manifest is not None else None
    return contract.description_of(output, known, vector_files(output) if files is None else files)


def progress(message: str, quiet: bool = False) -> None:
    """A progress line on stderr, only for a person at a terminal."""
    if not quiet and sys.stderr.isatty():
        print(f"\r{message:<78}", end="", file=sys.stderr, flush=True)


def progress_done(quiet: bool = False) -> None:
    if not quiet and sys.stderr.isatty():
        print("\r" + " " * 78 + "\r", end="", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def dump_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False, default=str)


def fmt_int(value: int | float | None) -> str:
    return "-" if value is None else f"{int(value):,}"


def fmt_seconds(seconds: float) -> str:
    if seconds < 1:
        return "under 1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
