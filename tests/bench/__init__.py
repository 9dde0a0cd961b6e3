"""Tests of the benchmark and experiment scripts."""
