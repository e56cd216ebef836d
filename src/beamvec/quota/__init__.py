"""Quota: pace requests and tokens to the job's quota and adapt to 429s.

Small parts, each tested without Beam: ``bucket`` (a reservation token
bucket), ``pacing`` (rates from a quota and a fraction), ``aimd`` (how the
fraction reacts to 429s and quiet), ``scale`` (server-counted tokens per
estimated token), ``meter`` (the rate the server accepted),
``hold`` (holding after 429s, probing after vague hints), ``budgets``
(budgets and their buckets), ``measure`` (the 429 events to measure from),
``lateness`` (late requests push later ones back), ``throttled`` (what a
429's hint asks), ``limiter`` (the per-process composition, its arguments
checked in ``limiter_args``), ``stats`` (what it did) and ``settings`` (what
the pipeline carries, and the limiter it builds on a worker).
"""

from beamvec.quota.aimd import AimdController, AimdSettings, Cut
from beamvec.quota.bucket import TokenBucket
from beamvec.quota.limiter import AdaptiveLimiter, Limiter
from beamvec.quota.meter import SuccessMeter
from beamvec.quota.pacing import Pace, pace
from beamvec.quota.scale import ScaleSettings, TokenScale
from beamvec.quota.settings import QuotaSettings
from beamvec.quota.stats import LimiterStats

__all__ = [
    "AdaptiveLimiter", "AimdController", "AimdSettings", "Cut", "Limiter", "LimiterStats",
    "Pace", "QuotaSettings", "ScaleSettings", "SuccessMeter", "TokenBucket", "TokenScale", "pace",
]
