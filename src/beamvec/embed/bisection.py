"""The few texts an API rejects as bad input inside an otherwise good batch,
found by halving the batch, so only they are dead-lettered."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from beamvec.retry import is_bad_input

T = TypeVar("T")
R = TypeVar("R")


def culprit_of(exc: BaseException, size: int) -> int | None:
    """The index of the one item the backend named as the cause (its error's
    ``culprit``, e.g. a text too long), when it is inside a part of ``size``."""
    culprit = getattr(exc, "culprit", None)
    if isinstance(culprit, int) and not isinstance(culprit, bool) and 0 <= culprit < size:
        return culprit
    return None


def embed_with_bisection(
    items: Sequence[T],
    call: Callable[[list[T]], R],
    is_bad_request: Callable[[BaseException], bool] = is_bad_input,
    gave_up: Callable[[BaseException], bool] | None = None,
    suspect: Callable[[list[T]], int] | None = None,
) -> tuple[list[tuple[list[T], R]], list[tuple[T, BaseException]]]:
    """Call on the whole batch; on a bad request (by default: the backend's
    ``ErrorKind.BAD_INPUT``), split it in halves until the offending items
    stand alone. When the error names its item (``culprit_of``), that item is
    failed and the others are sent again together: no bisection.

    One bad text must not cost its whole batch: with k bad items among n this
    takes about ``2k·log2(n/k)`` extra calls. Returns the successful sub-batches
    with their results, in input order, and the single items that were still
    rejected, with their errors.

    A part whose error ``gave_up`` accepts (the caller's retries ran out) fails
    item by item with that error while the other parts carry on: a half that
    was already paid for is never thrown away because its sibling gave up.
    A 400 about length (an error with a ``culprit`` attribute) that names no
    item (Google's "The input token count (N) exceeds the maximum…" does not)
    sends the item ``suspect`` points at (the longest) alone, then the others
    together: two calls an over-long text, and a suspect that was fine keeps
    its vector.

    Any other error propagates unchanged."""
    done: list[tuple[list[T], R]] = []
    failed: list[tuple[T, BaseException]] = []

    def run(part: list[T]) -> None:
        if not part:
            return
        try:
            result = call(part)
        except Exception as exc:
            if gave_up is not None and gave_up(exc):
                failed.extend((item, exc) for item in part)
                return
            if not is_bad_request(exc):
                raise
            if len(part) == 1:
                failed.append((part[0], exc))
                return
            named = culprit_of(exc, len(part))
            if named is not None:
                failed.append((part[named], exc))
                run(part[:named] + part[named + 1:])
                return
            if suspect is not None and hasattr(exc, "culprit"):
                alone = suspect(part)
                run([part[alone]])
                run(part[:alone] + part[alone + 1:])
                return
            middle = len(part) // 2
            run(part[:middle])
            run(part[middle:])
            return
        done.append((part, result))

    run(list(items))
    return done, failed
