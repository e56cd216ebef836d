"""Embed a corpus: the same job as `beamvec run`, as a plain Beam pipeline module.

    python -m pipelines.embed_corpus --input 'corpus/*.jsonl' --output out/ \\
        --config runner_configs/local.yaml
"""

from __future__ import annotations

import sys

from beamvec.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
