"""Affine recurrences in a small GPT (Bhargav & Gu): copying and negative-similarity heads."""
