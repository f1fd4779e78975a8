"""Grid math, per-chip statistics, the index schema, the indexer, readers and chip outputs."""
