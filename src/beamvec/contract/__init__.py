"""The output contract: what the files of an output mean, in one place.

    OUTPUT/
      _manifest.json                 Manifest: description, config, totals, shards, run history
      _SUCCESS                       written last, when every expected shard is committed
      vectors/<shard>.parquet        the commit point of a shard; its footer is a Footer
      dead_letters/<shard>.parquet   what could not be embedded, and why
      _partial/                      vectors of finished batches not yet committed (a cache)

A shard is committed when its vector file exists with a footer naming its
input fingerprint and counts (``CommitRecord``). The manifest is a summary of
those records; a crash between a commit and the manifest loses nothing,
because the footers are read back. Run, plan, inspect, verify and search all
read an output through ``read_state``. Every name of the layout (bookkeeping
folders included) is in ``layout``, the schemas in ``schema``.
"""

from beamvec.contract import columns as columns
from beamvec.contract import layout as layout
from beamvec.contract.files import (
    COMMITS_DIR,
    INLINE_PARTS,
    MISSING,
    DamagedFileError,
    check_dead_letters,
    check_part,
    damaged_message,
    dead_letter_files,
    dead_letter_path,
    footer_and_rows,
    footer_of,
    has_success,
    list_parquet,
    name_of,
    partial_path,
    read_footer,
    read_manifest,
    vector_files,
    vector_path,
    write_manifest,
)
from beamvec.contract.model import (
    DEAD_LETTERS_DIR,
    HISTORY_LIMIT,
    MANIFEST,
    PARTIAL_DIR,
    SUCCESS,
    VECTORS_DIR,
    CommitRecord,
    Description,
    Footer,
    Manifest,
    RunConfig,
    RunRecord,
    ShardCounts,
    total,
)
from beamvec.contract.output import Output
from beamvec.contract.schema import DEAD_LETTER_SCHEMA, FOOTER_KEY, vector_schema
from beamvec.contract.state import (
    OutputState,
    complete_shards,
    description_of,
    finalize,
    merge_manifest,
    read_state,
    remove_parts,
    stale_parts,
)

__all__ = [
    "COMMITS_DIR", "DEAD_LETTERS_DIR", "DEAD_LETTER_SCHEMA", "FOOTER_KEY", "Output", "HISTORY_LIMIT", "INLINE_PARTS", "MANIFEST", "MISSING",
    "PARTIAL_DIR", "SUCCESS", "VECTORS_DIR", "CommitRecord", "DamagedFileError", "Description",
    "Footer", "Manifest", "OutputState", "RunConfig", "RunRecord", "ShardCounts",
    "check_dead_letters", "dead_letter_files", "has_success", "vector_files", "check_part", "complete_shards", "damaged_message", "dead_letter_path",
    "description_of", "finalize", "footer_and_rows", "footer_of", "list_parquet", "merge_manifest",
    "name_of", "partial_path", "read_footer", "read_manifest", "read_state", "remove_parts",
    "stale_parts", "total", "vector_path", "vector_schema", "write_manifest",
]
