"""Conversion of one claimed bundle in a worker process: options, the toolkit run, verification, cache."""
