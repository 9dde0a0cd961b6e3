"""Benchmarks: each script prints its numbers and the command that reproduces them."""
