"""The indexer: catalogue reader, bulk reindex pipeline with resume and alias swap, single-item upserts."""

from indexer.reader import Product, Skipped, image_source, parse_row, read_catalogue

__all__ = ["Product", "Skipped", "image_source", "parse_row", "read_catalogue"]
