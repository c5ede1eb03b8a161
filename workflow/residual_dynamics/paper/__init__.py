"""The paper (Transformer Dynamics): its reference numbers, summaries, claims, captions and Figures 1-4."""
