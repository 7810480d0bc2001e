"""Online experiments and learning: the impression log, variants, interleaving, the report, the click model."""
