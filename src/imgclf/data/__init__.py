"""Data layer: sources, decoding and its cache, splits, and the on-device batch loader.

Kept free of imports so that decoding worker processes start without loading torch.
"""
