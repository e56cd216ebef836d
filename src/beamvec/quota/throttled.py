"""What one 429 asks of the limiter, as pure decisions.

``hold_hint``: how long the server's hint holds every request, and whether
that hint is vague (rounded down to whole seconds, so a probe finds the real
end). ``settles_tokens``: whether a token rate measured after a 429 event
replaces the pace. ``limiter`` applies both under its lock.
"""

from __future__ import annotations

#: Without a server hint, a discovering limiter's first estimate takes the window to free this long.
DEFAULT_HOLD_S = 1.0


def hold_hint(
    retry_after: float | None, *, floor: bool, max_hold_s: float, unpaced_discovery: bool,
    paced_discovery: bool = False,
) -> tuple[float | None, bool]:
    """(seconds to hold every request, whether the hint is vague).

    A hint is usable when positive, or zero but rounded down (``floor``); it
    is capped at ``max_hold_s``. Without one, only a discovering limiter that
    has no pace yet holds, for ``DEFAULT_HOLD_S`` (probing instead measured
    0.38-0.57 of a sliding window in real runs, against 0.82: see
    docs/pacing.md). Once it paces, no hint is a vague one of 0: the
    requests booked ahead wait for one probe instead of each meeting the
    full window (12-17 % 429s in the simulation, now 3-5 %). A told
    limiter's AIMD cut is what the 429 asks for."""
    usable = retry_after is not None and (retry_after > 0 or floor)
    hint = min(retry_after, max_hold_s) if usable and retry_after is not None else None
    vague = floor and hint is not None
    if hint is None and unpaced_discovery:
        hint = DEFAULT_HOLD_S
    elif hint is None and paced_discovery:
        hint, vague = 0.0, True
    return hint, vague


def settles_tokens(
    pace_now: float | None, measured: bool, hint: float, accepted: float | None, slack: float
) -> bool:
    """Whether a token rate measured after a 429 event becomes the pace.

    The first measurement settles a discovered token quota, which is then
    paced as a told one is, AIMD cutting at 429s (settling at every 429 as
    well would cut twice for one); a later one only when the server clearly
    accepted less (by ``slack``) after a 429 with a hint: a fixed window's
    burst made the first measurement too high, and without a hint what it
    accepted is not known."""
    if pace_now is None or not measured:
        return True
    return hint > 0 and accepted is not None and accepted < pace_now * (1.0 - slack)
