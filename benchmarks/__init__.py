"""Benchmarks of the package (see README.md here); run from the repo root as ``python -m benchmarks.bench``,
``python -m benchmarks.bench_bucket`` and ``python -m benchmarks.bench_cluster``."""
