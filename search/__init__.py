"""Retrieval: store/ (the vector store and its backends), query/ (the search service), shopper/ (personalisation)."""
