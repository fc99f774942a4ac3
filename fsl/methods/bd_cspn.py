"""BD-CSPN (Liu, Song & Qin, ECCV 2020: "Prototype Rectification for Few-Shot Learning"). Transductive:
it reads every query of an episode.

Two corrections of the prototypes: a feature shift (the queries moved by the difference of the support
and query means, against the cross-set bias) and label propagation (prototypes re-estimated from the
support and the pseudo-labelled queries, each weighted by exp(temperature · cosine) to its prototype).
Queries are then scored by cosine to the rectified prototypes. With `temperature: 1` this is easyfsl's
BDCSPN step for step; the paper uses 10."""

from __future__ import annotations

from fsl.methods.base import FewShotHead
from fsl.methods.fusion import Fusion
from fsl.methods.utils import Option, cosine, rectified_prototypes


class BDCSPN(FewShotHead):
    """BD-CSPN (Liu, Song & Qin, ECCV 2020): prototypes rectified by a feature shift and by label
    propagation over the queries, then cosine scores. Transductive.
    """

    name = "bd_cspn"
    transductive = True
    options = {
        "temperature": Option(
            float, "sharpness of the pseudo-label weights exp(temperature * cosine)", low=0, low_open=True
        ),
    }

    def __init__(self, fusion: Fusion, temperature: float = 10.0):
        super().__init__(fusion)
        self.temperature = temperature

    def classify(self, support, support_labels, query, n_way, class_text=None):
        return cosine(query, rectified_prototypes(support, support_labels, query, n_way, self.temperature))
