"""A set of content hashes at 8 bytes a key: what the Batch API driver remembers.

The driver must know which texts it has put in a request file already (a
repeat is sent once) and which the journal's jobs hold, for every text of the
corpus, without holding the texts or their 64-character keys: a Python set of
hex strings costs ~150 bytes a key, this costs 8 (the first 64 bits of the
hash, as ``lookup.VectorIndex`` keys them). Two texts sharing 64 bits (about
one chance in 10^8 at 500,000 texts) look like one: the second is not put in
a request file, and the pipeline sends it online, so it is never lost.
"""

from __future__ import annotations

import numpy as np

from beamvec.route.lookup import hash_key

#: Keys held in a Python set before they are merged into the sorted array.
_BUFFER = 8_192


class KeySet:
    """Content hashes, added one at a time and looked up in O(log n)."""

    def __init__(self) -> None:
        self._sorted = np.zeros(0, np.uint64)
        self._recent: set[int] = set()

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def __contains__(self, content_hash: object) -> bool:
        if not isinstance(content_hash, str):
            return False
        key = hash_key(content_hash)
        if key in self._recent:
            return True
        i = int(np.searchsorted(self._sorted, np.uint64(key)))
        return i < len(self._sorted) and int(self._sorted[i]) == key

    def add(self, content_hash: str) -> bool:
        """Remember ``content_hash``; False when it was there already."""
        if content_hash in self:
            return False
        self._recent.add(hash_key(content_hash))
        if len(self._recent) >= _BUFFER:
            self._merge()
        return True

    def _merge(self) -> None:
        fresh = np.fromiter(self._recent, np.uint64, len(self._recent))
        self._sorted = np.union1d(self._sorted, fresh)
        self._recent = set()
