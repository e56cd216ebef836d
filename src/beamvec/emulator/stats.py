"""What the emulator saw: requests by outcome, texts embedded, window peaks.

Tests use it to prove quota compliance (peak requests per window), that no
text was embedded twice, and what faults were injected. Texts and tokens count
only well-formed 200 answers (what a real API would bill); malformed 200s are
counted as faults.
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from beamvec.emulator.window import WindowPeak

#: Requests the log keeps (the oldest are dropped first).
LOG_LIMIT = 100_000


def content_hash(text: str) -> str:
    """sha256 of the UTF-8 bytes of ``text``: how stats name a text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Received:
    """One embedding or countTokens request as the server parsed it.

    ``task_types`` and ``titles`` hold, per text, what the request sent
    (None: the field was absent); ``tokens`` is the emulator tokenizer's count
    per text after any truncation; ``status`` is the answer's HTTP code (or
    "hang" / "reset")."""

    route: str
    model: str
    texts: tuple[str, ...]
    task_types: tuple[str | None, ...]
    titles: tuple[str | None, ...]
    tokens: tuple[int, ...]
    truncated: tuple[bool, ...]
    status: int | str

    @classmethod
    def of(cls, route: str, model: str, texts: Sequence[str], items: Sequence[Any],
           status: int | str) -> Received:  # fmt: skip
        """A record of texts as sent and the parsed items (``EmbedItem``s, or
        none when the body never parsed)."""
        return cls(
            route, model, tuple(texts),
            tuple(getattr(i, "task_type", None) for i in items) or (None,) * len(texts),
            tuple(getattr(i, "title", None) for i in items) or (None,) * len(texts),
            tuple(getattr(i, "tokens", 0) for i in items),
            tuple(getattr(i, "truncated", False) for i in items),
            status,
        )  # fmt: skip


class Stats:
    """Counters; the server calls every method under its lock."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.by_status: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.by_route: Counter[str] = Counter()
        self.texts = 0
        self.tokens = 0
        self.text_counts: Counter[str] = Counter()
        self.models: Counter[str] = Counter()
        self.peak_all = WindowPeak(window_s)
        self.peak_accepted = WindowPeak(window_s)
        self.peak_ok = WindowPeak(window_s)
        self.log: deque[Received] = deque(maxlen=LOG_LIMIT)

    def arrived(self, now: float, route: str) -> None:
        self.peak_all.add(now)
        self.by_route[route] += 1

    def accepted(self, now: float) -> None:
        self.peak_accepted.add(now)

    def answered(self, status: int | str) -> None:
        self.by_status[str(status)] += 1

    def received(self, record: Received) -> None:
        self.log.append(record)

    def fault(self, kind: str) -> None:
        self.faults[kind] += 1

    def embedded(self, now: float, model: str, hashes: list[str], tokens: int) -> None:
        self.peak_ok.add(now, tokens)
        self.texts += len(hashes)
        self.tokens += tokens
        self.models[model] += len(hashes)
        self.text_counts.update(hashes)

    def snapshot(self, with_texts: bool = True) -> dict[str, Any]:
        counts = self.text_counts
        repeated = sum(1 for c in counts.values() if c > 1)
        out: dict[str, Any] = {
            "requests": sum(self.by_status.values()),
            "by_status": dict(self.by_status),
            "faults": dict(self.faults),
            "by_route": dict(self.by_route),
            "texts_embedded": self.texts,
            "tokens": self.tokens,
            "models": dict(self.models),
            "texts": {
                "distinct": len(counts),
                "max_count": max(counts.values(), default=0),
                "embedded_more_than_once": repeated,
            },
            "window_s": self.window_s,
            "peak_window_requests": {
                "all": self.peak_all.peak_count,
                "accepted": self.peak_accepted.peak_count,
                "ok": self.peak_ok.peak_count,
            },
            "peak_window_tokens": self.peak_ok.peak_weight,
        }
        if with_texts:
            out["text_counts"] = dict(counts)
        return out
