"""Prepare and Route: a record made ready to embed, and its fate (dead letter, reuse, follow, send)."""
