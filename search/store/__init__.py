"""The vector store: the typed interface, `open_store`, the edge and qdrant backends, BM25 keyword vectors."""
