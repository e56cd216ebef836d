"""The arguments a ``Limiter`` is told, checked before any state is built.

A quota, share, window or burst must be a positive number; the margin kept
below a quota is under a half. Late requests (lateness.py) are forgiven up
to ``late_slack_s``, by default the margin of the shortest window a quota
is assumed to be metered over.
"""

from __future__ import annotations

import math

from beamvec.quota.bucket import check_positive

#: The shortest window a quota is assumed to be metered over, for ``late_slack_s``.
SHORTEST_WINDOW_S = 1.0


def checked_late_slack(
    rpm: float | None, tpm: float | None, share: float, window_s: float, burst_requests: float,
    margin: float, late_slack_s: float | None,
) -> float:
    """The slack late requests get, once every argument is checked (ValueError if one is wrong)."""
    check_positive(window_s, "window_s")
    check_positive(share, "share")
    check_positive(burst_requests, "burst_requests")
    for value, name in ((rpm, "rpm"), (tpm, "tpm")):
        if value is not None:
            check_positive(value, name)
    if not 0.0 <= margin < 0.5:
        raise ValueError("margin must be in [0, 0.5)")
    if late_slack_s is None:
        late_slack_s = margin * SHORTEST_WINDOW_S
    if not 0.0 <= late_slack_s < math.inf:
        raise ValueError("late_slack_s must be a non-negative number of seconds")
    return late_slack_s
