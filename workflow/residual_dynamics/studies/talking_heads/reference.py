"""The Talking Heads paper's reported numbers, in one place: Merullo, Eickhoff & Pavlick (2024),
"Talking Heads: understanding inter-layer communication in transformer language models" (arXiv
2406.09519), on GPT-2 small. The captions quote ``FINDINGS`` beside this run's numbers; the
Laundry List figure draws ``LAUNDRY_ACCURACY`` at ``LAUNDRY_N`` and the accuracy table's title
states it. The heads it names are also the defaults of ``config/gpt2.yaml``.
"""

from __future__ import annotations

MODEL = "GPT-2 small"

# Laundry List top-1 accuracy on the missing item at N = 3 listed items.
LAUNDRY_N = 3
LAUNDRY_ACCURACY = 0.64

# Each figure's finding as its caption quotes it (HTML).
FINDINGS = {
    "heads": "inhibition heads 7.3, 7.9, 8.6 and 8.10 compose into mover head 9.9",
    "outlier": "component 8.6.2 lies about 5 SD above the mean of its head's 64 components",
    "accuracy": "64 % at N = 3, falling as N grows",
    "oracle": "an oracle intervention in the inhibition subspace raises N = 3 from 64 % to 86 %",
    "grid": "moving through this 3-D subspace steps the mover's attention across list positions",
}
