"""The query path: parse a request, run the search modes and fuse them, understand the query, rank, shape results."""
