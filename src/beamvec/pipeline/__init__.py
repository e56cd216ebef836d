"""The Beam pipeline: the PTransforms and what a worker process does with its splits."""
