"""Measured experiments, each a program: `python -m evaluation.experiments.NAME --help`."""
