"""Tip-Adapter (Zhang et al., ECCV 2022: "Tip-Adapter: Training-free Adaption of CLIP for Few-shot
Classification"), the training-free version.

A cache model: the support features are the keys, their one-hot labels the values. A query's
affinity to each key is exp(-β(1 - cos)), and the cache logits (affinities · values) are added, with
weight α, to the zero-shot logits (100 · cosine to the class-name prompts, CLIP's scale). With CLIP
or the aligned offline pair (`fsl align`) the prompts meet photos and texts; with the plain offline
pair they meet the text part only. α and β are chosen on validation classes (the paper searches them
on its validation split too).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fsl import FslError
from fsl.fusion import Fusion
from fsl.methods.base import FewShotHead

ZERO_SHOT_SCALE = 100.0  # CLIP's logit scale


class TipAdapter(FewShotHead):
    needs_class_text = True

    def __init__(self, fusion: Fusion, alpha: float = 1.0, beta: float = 5.5, shared_space: bool = False):
        super().__init__(fusion)
        for name, value in (("alpha", alpha), ("beta", beta)):
            if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
                raise FslError(f"tip_adapter {name} must be a finite number >= 0, got {value!r}")
        self.alpha, self.beta, self.shared_space = alpha, beta, shared_space

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fusion(features), dim=-1)

    def classify(self, support, support_labels, query, n_way, class_text=None):
        if class_text is None:
            raise ValueError("tip_adapter needs class_text [E, N, Dt]: the harness embeds the class names")
        classes = F.normalize(self.class_features(class_text, self.shared_space), dim=-1)  # [E, N, D]
        zero_shot = ZERO_SHOT_SCALE * query @ classes.transpose(1, 2)  # [E, Q, N]
        affinity = torch.exp(-self.beta * (1 - query @ support.transpose(1, 2)))  # [E, Q, N*K]
        values = F.one_hot(support_labels, n_way).to(query.dtype)  # [E, N*K, N]
        return zero_shot + self.alpha * affinity @ values
