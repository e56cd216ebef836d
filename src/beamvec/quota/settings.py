"""The job's quota as the pipeline carries it, and the limiter it builds (one per
worker process: see ``transforms.PerProcess``)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from beamvec.quota.limiter import Limiter


@dataclass(frozen=True)
class QuotaSettings:
    """The job's quota and this worker's share of it; frozen and picklable.

    ``rpm``/``tpm`` are per ``window_s`` (60 s: per minute). ``share`` is
    where each worker process starts (1/N when N is known); ``elastic`` lets
    it grow into quota other workers leave unused. With neither rpm nor tpm,
    ``discover`` finds the server's limit from its 429s. ``preflight_at``:
    when the driver's preflight call was sent (wall clock), one request of
    the job's already in the server's window (see ``Limiter.sent_before``)."""

    rpm: float | None = None
    tpm: float | None = None
    share: float = 1.0
    window_s: float = 60.0
    elastic: bool = True
    discover: bool = True
    preflight_at: float | None = None

    def build(self) -> Limiter | None:
        """A new limiter for these settings (None: nothing to limit or discover)."""
        if not self.rpm and not self.tpm and not self.discover:
            return None
        limiter = Limiter(
            self.rpm or None, self.tpm or None, share=self.share, window_s=self.window_s,
            elastic=self.elastic, discover=self.discover,
        )
        if self.preflight_at is not None:
            limiter.sent_before(time.time() - self.preflight_at)
        return limiter
