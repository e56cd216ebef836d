"""The job's quota as the pipeline carries it, and the per-process limiter it builds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from beamvec.quota.limiter import Limiter

if TYPE_CHECKING:  # only the type: quota stays importable without Beam
    from apache_beam.utils.shared import Shared


@dataclass(frozen=True)
class QuotaSettings:
    """The job's quota and this worker's share of it; frozen and picklable.

    ``rpm``/``tpm`` are per ``window_s`` (60 s: per minute). ``share`` is
    where each worker process starts (1/N when N is known); ``elastic`` lets
    it grow into quota other workers leave unused. With neither rpm nor tpm,
    ``discover`` finds the server's limit from its 429s."""

    rpm: float | None = None
    tpm: float | None = None
    share: float = 1.0
    window_s: float = 60.0
    elastic: bool = True
    discover: bool = True

    def build(self) -> Limiter | None:
        """A new limiter for these settings (None: nothing to limit or discover)."""
        if not self.rpm and not self.tpm and not self.discover:
            return None
        return Limiter(
            self.rpm or None, self.tpm or None, share=self.share, window_s=self.window_s,
            elastic=self.elastic, discover=self.discover,
        )

    def limiter(self, shared: Shared, key: str) -> Limiter | None:
        """The process's one limiter for ``key`` (backend and model).

        Beam runs several DoFn instances (and threads) in one worker process;
        they must draw from one budget, or the process would take several
        shares. Limiters hold locks and clocks, so they are built on the
        worker (in ``DoFn.setup``), never pickled."""
        if not self.rpm and not self.tpm and not self.discover:
            return None
        return shared.acquire(self.build, tag=(key, self))
