"""Benchmarks, one module each (`add_arguments(parser)`, `run(cfg, args)`), run as `vitrina bench NAME`."""
