"""Gaussian discriminant analysis (Wang et al., ICLR 2024: "A hard-to-beat baseline for
training-free CLIP-based adaptation"): class means and one shared covariance give a linear
classifier in closed form, w_c = Σ⁻¹ μ_c, b_c = -½ μ_cᵀ Σ⁻¹ μ_c (equal priors).

With K ≤ 5 examples per class the covariance is singular: it is shrunk towards a scaled identity,
Σ = (1 − α) S + α tr(S)/D · I, as scikit-learn's `LinearDiscriminantAnalysis(solver="lsqr",
shrinkage=α)` does. S has rank ≤ N·K, so Σ⁻¹ comes through the Woodbury identity from an
[N·K, N·K] system per episode, never a [D, D] one. At one shot S = 0 and GDA is ProtoNet.
"""

from __future__ import annotations

import torch

from fsl import FslError
from fsl.fusion import Fusion
from fsl.methods.base import FewShotHead


class GDA(FewShotHead):
    def __init__(self, fusion: Fusion, shrinkage: float = 0.5):
        super().__init__(fusion)
        if not 0 < shrinkage <= 1:
            raise FslError(f"gda shrinkage must be in (0, 1], got {shrinkage}")
        self.shrinkage = shrinkage

    def classify(self, support, support_labels, query, n_way, class_text=None):
        support, query = support.double(), query.double()
        means = self.prototypes(support, support_labels, n_way)  # [E, N, D]
        centred = support - torch.gather(means, 1, support_labels.unsqueeze(-1).expand_as(support))  # Z [E, M, D]
        m, d = centred.shape[1], centred.shape[2]
        # Σ = a I + b Zᵀ Z with S = Zᵀ Z / M; a floor keeps one shot (S = 0) well defined
        a = (self.shrinkage * centred.pow(2).sum((1, 2)) / (m * d)).clamp_min(1e-12)  # [E]
        b = (1 - self.shrinkage) / m
        inner = torch.eye(m, dtype=support.dtype) * (a / b)[:, None, None] + centred @ centred.transpose(1, 2)
        # μ Σ⁻¹ = (μ − μ Zᵀ (a/b I + Z Zᵀ)⁻¹ Z) / a   (Woodbury)
        correction = torch.linalg.solve(inner, centred @ means.transpose(1, 2)).transpose(1, 2) @ centred
        weights = (means - correction) / a[:, None, None]  # [E, N, D]
        bias = -0.5 * (weights * means).sum(-1)  # [E, N]
        return (query @ weights.transpose(1, 2) + bias.unsqueeze(1)).float()  # [E, Q, N]
