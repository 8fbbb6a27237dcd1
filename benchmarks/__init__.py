"""Benchmarks: each prints JSON figures, with its baseline measured in the same run."""
