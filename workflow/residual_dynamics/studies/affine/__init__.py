"""Affine recurrences in a small GPT (Bhargav & Gu): copying and negative-similarity heads.

``analysis`` measures one model (torch), through the model handles in ``view`` and the attention
scores and QK-vs-cosine fit in ``attention``; ``verdicts`` judges the paper's two claims,
``figures`` draws them, ``section`` writes the report section; ``reference`` cites the paper,
``config`` holds the config checks."""
