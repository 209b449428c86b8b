"""General tools with no framework and no dataset: atomic writing, the memory budget, bounded
readers of untrusted files (YAML, JSON), the one-line argparse style, shared constants."""
