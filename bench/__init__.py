"""Benchmarks (run by hand, one command each; see bench/RESULTS.md)."""
