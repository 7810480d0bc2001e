"""Benchmarks, one module each (`add_arguments(parser)`, `run(cfg, args)`), run as `vitrina bench NAME`."""

# Modules of this package that are not benchmarks: what the HTTP benchmarks send and their load generators.
HELPERS = frozenset({"http_inputs", "http_load"})
