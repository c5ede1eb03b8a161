"""Affine recurrences in a small GPT (Bhargav & Gu): copying and negative-similarity heads.

``analysis`` measures one model (torch), ``verdicts`` judges the paper's two claims, ``figures``
draws them, ``section`` writes the report section; ``reference`` cites the paper, ``config`` holds
the config checks."""
