"""Batch and Embed: API-sized batches, requests filled across shards, one batch embedded."""
