"""The shopper: personal vectors and rerank maths, SQLite profiles and signals, store lookups, recommendations."""
