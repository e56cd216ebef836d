"""What the emulator does: limits, quota, latency and faults, in one dataclass."""

from __future__ import annotations

from dataclasses import dataclass, fields

MALFORMED_KINDS = ("missing", "dimension", "nan")
WINDOW_KINDS = ("sliding", "fixed", "bucket")
RETRY_HINTS = ("exact", "seconds", "none")


@dataclass(frozen=True)
class EmulatorConfig:
    """Emulator settings. Rates are probabilities per accepted request.

    ``rpm`` and ``tpm`` are requests and tokens per ``window_s`` (60 s by
    default, hence the names); None means unlimited. ``quota_window`` says how
    they are metered (quota.py: "sliding", "fixed" at wall-clock boundaries, or
    a "bucket" refilling continuously) and ``retry_hint`` how a 429 says when
    to come back ("exact": RetryInfo to the millisecond and Retry-After;
    "seconds": RetryInfo in whole seconds, cut down, as the Gemini API words
    it; "none": no hint, as Vertex often answers). ``api_key`` None accepts
    any key or none. ``hang_s`` is how long a hung request holds the
    connection before closing it without an answer. The limits below None
    are the model's own (models.py); set them to make a stricter server.
    """

    host: str = "127.0.0.1"
    port: int = 0
    api_key: str | None = None
    bearer_token: str | None = None  # Vertex: None accepts any bearer token
    rpm: int | None = None
    tpm: int | None = None
    window_s: float = 60.0
    quota_window: str = "sliding"
    retry_hint: str = "exact"
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    fail_500: float = 0.0
    fail_503: float = 0.0
    hang: float = 0.0
    reset: float = 0.0
    malformed: float = 0.0
    malformed_kinds: tuple[str, ...] = MALFORMED_KINDS
    hang_s: float = 30.0
    seed: int = 0
    vectors: str = "hash"  # "hash" | "local"
    gemini_max_items: int | None = None
    vertex_max_items: int | None = None
    vertex_max_request_tokens: int | None = None
    max_text_tokens: int | None = None
    # Batch API (emulator/batch.py): job duration, result order, faults, cap.
    batch_job_s: float = 2.0
    batch_shuffle: bool = True
    batch_line_error_rate: float = 0.0
    batch_fail_rate: float = 0.0
    batch_fail_first: int = 0
    batch_expire_rate: float = 0.0
    batch_max_concurrent: int | None = 100
    # Files API: Google deletes a file 48 h after upload (a get is then 404); a
    # test moves the emulator's clock forward instead of waiting.
    batch_file_ttl_s: float = 48 * 3600.0
    batch_clock_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("fail_500", "fail_503", "hang", "reset", "malformed"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be a rate in [0, 1], not {rate}")
        total = self.fail_500 + self.fail_503 + self.hang + self.reset + self.malformed
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates add up to {total:g} > 1")
        if self.window_s <= 0:
            raise ValueError("--window-s must be positive")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be between 0 and 65535 (0 picks a free one), not {self.port}")
        for name in ("rpm", "tpm"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1 (leave it out for no limit)")
        for name in ("latency_ms", "jitter_ms", "hang_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative")
        unknown = set(self.malformed_kinds) - set(MALFORMED_KINDS)
        if unknown or not self.malformed_kinds:
            raise ValueError(f"malformed_kinds must be a non-empty subset of {MALFORMED_KINDS}")
        for name in ("batch_line_error_rate", "batch_fail_rate", "batch_expire_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be a rate in [0, 1], not {rate}")
        if self.batch_fail_rate + self.batch_expire_rate > 1.0 + 1e-9:
            raise ValueError("batch_fail_rate + batch_expire_rate must not exceed 1")
        if self.batch_job_s < 0 or self.batch_fail_first < 0:
            raise ValueError("batch_job_s and batch_fail_first must not be negative")
        if self.batch_file_ttl_s <= 0:
            raise ValueError("batch_file_ttl_s must be positive")
        if self.batch_max_concurrent is not None and self.batch_max_concurrent < 1:
            raise ValueError("batch_max_concurrent must be at least 1 (or None: no cap)")
        if self.quota_window not in WINDOW_KINDS:
            raise ValueError(f"quota_window must be one of {', '.join(WINDOW_KINDS)}")
        if self.retry_hint not in RETRY_HINTS:
            raise ValueError(f"retry_hint must be one of {', '.join(RETRY_HINTS)}")
        if self.vectors not in ("hash", "local"):
            raise ValueError("vectors must be 'hash' or 'local'")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
