"""Benchmarks of the build, the store, the codecs and the dissection (see RESULTS.md)."""
