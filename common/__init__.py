"""General tools with no framework and no dataset: bounded readers of untrusted files (YAML, JSON)."""
