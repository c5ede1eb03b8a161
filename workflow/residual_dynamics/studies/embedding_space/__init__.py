"""Movement through embedding space (Singh): logit lens, encoding walk, concept similarity.

``lens`` runs the model (logit lens, proximity, uniform attention), ``walk`` reads the encoding
walk from the activation stores, ``arrays`` writes and reads both results, ``concepts`` is the
HellaSwag test; ``summary`` states their numbers and verdicts, ``figures`` draws them, ``section``
writes the report section; ``reference`` holds the paper's numbers, ``config`` the config checks."""
