"""What a limiter did, as progress lines and the end-of-run summary read it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LimiterStats:
    """What a limiter did: for progress lines and the end-of-run summary."""

    waited_s: float  # total seconds callers were held back
    requests: int  # acquisitions granted
    tokens: float  # tokens granted
    throttled: int  # 429s reported
    cuts: int  # rate cuts
    fraction: float  # current rate as a fraction of the configured (or discovered) rate
    rpm: float | None  # current requests per minute of this limiter (None: unlimited)
    tpm: float | None  # current tokens per minute of this limiter (None: unlimited)
    token_factor: float = 1.0  # server-counted tokens per estimated token, as learnt (scale.py)
