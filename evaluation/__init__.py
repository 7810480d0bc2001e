"""Evaluation: the `vitrina evaluate` harness, its sections, ranking metrics, reports and windows, and experiments."""
