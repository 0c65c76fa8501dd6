"""Benchmark suite of the dynamic batching engine: seeded workloads from real HH-RLHF text,
an asyncio load generator, baseline servers (naive, Ray Serve) and the runner that writes
RESULTS.md. `python -m loadtests.run --quick` smoke-runs all of it."""
