"""Every name of an output's layout, in one place.

Writers import their names from here, and listing reads ``is_own`` so that an
older output lying under an input glob is never read as input. A new file or
folder of the output is added here, or listing will read it.
"""

from __future__ import annotations

# -- what the output is for -------------------------------------------------------
MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
VECTORS_DIR = "vectors"
DEAD_LETTERS_DIR = "dead_letters"

# -- bookkeeping ------------------------------------------------------------------
COMMITS_DIR = "_commits"  # the manifest's commits table, when it is too large to inline
PARTIAL_DIR = "_partial"  # vectors of finished batches not yet committed (a cache)
TMP_DIR = "_tmp"  # files staged before their rename (local disk)
RUNS_DIR = "_runs"  # per run: the work list, the timeline
WORK_FILE = "work.jsonl"
TIMELINE = "timeline.jsonl"
BATCH_DIR = "_batch"  # Gemini Batch API: journals of submitted jobs
JOURNAL_DIR = f"{BATCH_DIR}/jobs"
FAILURES_DIR = "_failures"  # a worker's systemic failure, for the driver
EXPORTS_DIR = "_exports"  # export state (what was exported where)
LEASE = "_lease.json"  # one writer at a time
PROBE = "_beamvec_probe"  # written and removed to check the output is writable

#: Files at the output's top level that are beamvec's own.
OWN_FILES = frozenset({MANIFEST, SUCCESS, LEASE, PROBE})
#: Folders that are beamvec's own wherever they appear in a listed path.
OWN_DIRS = frozenset({COMMITS_DIR, PARTIAL_DIR, TMP_DIR, RUNS_DIR, BATCH_DIR, FAILURES_DIR, EXPORTS_DIR})
#: Folders of data that are an output's only next to its manifest.
DATA_DIRS = frozenset({VECTORS_DIR, DEAD_LETTERS_DIR})


def is_own(relative_path: str) -> bool:
    """Whether a path (relative to any folder) names one of beamvec's own
    files or lies in one of its own folders: never an input."""
    *dirs, name = relative_path.split("/")
    return name in OWN_FILES or any(d in OWN_DIRS for d in dirs)


def output_roots(paths: list[str]) -> list[str]:
    """The folders among ``paths``' parents that hold a manifest: outputs."""
    suffix = "/" + MANIFEST
    return sorted({p[: -len(suffix)] for p in paths if p.endswith(suffix)})


def in_output_data(path: str, roots: list[str]) -> bool:
    """Whether ``path`` is a vector or dead-letter file of one of ``roots``, or
    any ``_…`` entry there (the files of older beamvec versions included)."""
    for root in roots:
        if path.startswith(root + "/"):
            first = path[len(root) + 1:].split("/", 1)[0]
            if first in DATA_DIRS or first.startswith("_"):
                return True
    return False
