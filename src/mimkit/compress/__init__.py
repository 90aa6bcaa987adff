"""Compression for deployment: data-free block importance and pruning, token merging."""
