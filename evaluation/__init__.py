"""Evaluation: the `vitrina evaluate` harness, its sections (photo alterations and another shop's photos too),
ranking metrics, reports and windows, and experiments."""
