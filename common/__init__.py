"""General tools with no framework and no dataset: atomic writing, the memory budget, bounded readers, shared constants."""  # noqa: E501
