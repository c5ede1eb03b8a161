"""The affine study's reference paper: Bhargav & Gu, arXiv 2410.17438 (a three-layer GPT on affine
recurrences x_{n+1} = a x_n + b). Only its abstract is available: it states two claims (an initial
estimate copied in layer 0, refined by negative-similarity heads in the last layer) and no numbers,
so the verdicts' thresholds (``verdicts``) are ours."""

from __future__ import annotations

REFERENCE = "Bhargav & Gu (arXiv 2410.17438)"
