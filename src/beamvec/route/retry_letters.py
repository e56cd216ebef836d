"""What `--retry-dead-letters` keeps: texts the API refused for good.

A shard is redone when it holds a dead letter of a reason being retried
(``inputs.split_work``); its other records are read again. Vectors come back
by reuse, but a text the API refused for good (``bad_request``) has no
vector to reuse and would be sent and billed again. Its dead letter carries
the hash of the text sent, so it becomes a ``Refusal``: dead-lettered again
with its old reason and message, never sent. Asking for that reason
(``--retry-dead-letters embed_failed,bad_request``) sends it again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import pyarrow.parquet as pq

from beamvec.contract import CommitRecord, dead_letter_path
from beamvec.contract import columns as col
from beamvec.route.router import Refusals
from beamvec.write.sink import Output

LOG = logging.getLogger("beamvec")
COLUMNS = [col.REASON, col.MESSAGE, col.CONTENT_HASH]


def kept_refusals(output: Output, parts: Iterable[CommitRecord], retry: Sequence[str]) -> Refusals:
    """Refusals for the dead letters of ``parts`` whose reason is not retried.

    ``parts``: the committed parts of the shards about to be redone. Files
    written before dead letters carried a hash, or damaged ones, keep
    nothing (their texts are sent again, as before)."""
    if not retry:
        return Refusals()
    kept: dict[str, tuple[str, str]] = {}
    for part in parts:
        if not part.counts.dead_lettered:
            continue
        if all(reason in retry for reason in part.counts.dead_letters_by_reason):
            continue
        path = dead_letter_path(output, part.name)
        try:
            with output.fs.open(path, "rb") as fh:
                table = pq.read_table(fh, columns=COLUMNS)
        except Exception as exc:  # noqa: BLE001 - an old or torn file: its texts are sent again
            LOG.debug("%s: no refusals kept (%s)", path, type(exc).__name__)
            continue
        for reason, message, digest in zip(*(table.column(c).to_pylist() for c in COLUMNS), strict=True):
            if digest and reason not in retry:
                kept[digest] = (reason, message)
    return Refusals(kept)


def merged(*refusals: Refusals) -> Refusals:
    """One Refusals from several (the later wins for a text in both)."""
    by_hash: dict[str, tuple[str, str]] = {}
    for each in refusals:
        by_hash.update(each.by_hash)
    return Refusals(by_hash)
