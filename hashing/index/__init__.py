"""Exact Hamming search over packed binary codes: ``HammingIndex`` (modules: README.md here)."""

from hashing.index.hamming_index import STRATEGIES, HammingIndex

__all__ = ["STRATEGIES", "HammingIndex"]
