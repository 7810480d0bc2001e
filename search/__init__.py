"""Retrieval: the vector store interface and backends, the search service, personalisation and metrics."""
