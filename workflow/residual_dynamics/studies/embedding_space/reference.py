"""The reference paper of the embedding-space study and the numbers it reports: Singh (2023),
"Analyzing Transformer Dynamics as Movement through Embedding Space", arXiv 2308.10874.

Its logit-lens, proximity and encoding-walk claims are qualitative (the report's verdict rules
and their thresholds are ours, in ``summary``); concept similarity on HellaSwag is the one claim
published with numbers."""

from __future__ import annotations

REFERENCE = "Singh (2023), arXiv 2308.10874"
# The paper's only published concept-similarity numbers (flan-T5 xxl, 0-shot HellaSwag).
REFERENCE_CONCEPT = {"model": "flan-T5 xxl", "concept_similarity": 0.518, "log_likelihood": 0.540}
