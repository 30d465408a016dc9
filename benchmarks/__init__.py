"""Benchmarks: ``python -m benchmarks.run`` (``make bench``) runs every ``bench_*.py`` module's ``main()``."""
