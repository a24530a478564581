"""Benchmarks of posttrain against peer libraries, each side in its own process."""
