"""Talking Heads (Merullo, Eickhoff & Pavlick): head composition and the Laundry List task.

In the order the rules run: ``weights`` (composition from the weights, the mover and feeding
heads; the head matrices and LayerNorm fold it reads are in ``folding``, the nulls for its
component z-scores in ``nulls``), ``laundry_task`` (the prompts and their scoring), ``runner``
(the model with its forward pass edited), ``laundry`` (accuracy against N and the interventions),
``figures``, ``section`` (captions and tables), with the paper's numbers in ``reference`` and the
config check in ``config``.
"""
