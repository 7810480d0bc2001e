"""Top layer: the `vitrina` command line, benchmarks and evaluation programs."""
