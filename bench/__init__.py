"""The benchmark suite (issue #5): `python -m bench` / `make bench`.

Every figure is a ratio of our services to what a user would otherwise run,
both sides measured in the same run on the same machine with the same thread
budget; see bench/__main__.py for the sections and docs/benchmarks.md for
results.
"""
