"""The benchmark suite: `.venv/bin/python -m benchmarks.run [--smoke]` (see docs/benchmarks.md)."""
