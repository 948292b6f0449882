"""Evaluations shared by the benchmarks, the scripts and the tests: a library,
so neither bench/ nor tests/ imports the other."""
