"""Readers for the on-disk formats distree understands; each returns (train, test) ImageSets."""
