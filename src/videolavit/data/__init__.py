"""Data: the corpus manifest, synthetic corpus, importers, clip and token shards, prompt formats, pixels."""
