"""Runnable Beam pipelines: `python -m pipelines.embed_corpus --runner ...`."""
