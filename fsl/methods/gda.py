"""Gaussian discriminant analysis (Wang et al., ICLR 2024: "A hard-to-beat baseline for
training-free CLIP-based adaptation"): class means and one shared covariance give a linear
classifier in closed form, w_c = Σ⁻¹ μ_c, b_c = -½ μ_cᵀ Σ⁻¹ μ_c (equal priors).

With K ≤ 5 examples per class the covariance is singular: it is shrunk towards a prior,
Σ = (1 − α) S + α P. `prior: identity` takes P = tr(S)/D · I, as scikit-learn's
`LinearDiscriminantAnalysis(solver="lsqr", shrinkage=α)` does; `prior: base` takes the base
classes' pooled within-class covariance, rescaled to the same trace (what correlations the features
have on classes seen before). S has rank ≤ N·K, so Σ⁻¹ comes through the Woodbury identity from an
[N·K, N·K] system per episode, never a [D, D] one per episode. At one shot S = 0: with the
identity prior GDA is ProtoNet.

`zero_shot_weight` > 0 adds that multiple of the zero-shot logits (100 · cosine to the class-name
prompts) to GDA's, the paper's ensemble; with the offline pair the names meet the text part only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fsl.methods.base import FewShotHead
from fsl.methods.fusion import Fusion
from fsl.methods.utils import ZERO_SHOT_SCALE, Option, mean_prototypes


class GDA(FewShotHead):
    """Gaussian discriminant analysis (Wang et al., ICLR 2024): class means and one shrunk shared
    covariance give a linear classifier in closed form.
    """

    name = "gda"
    uses_class_names = True
    options = {
        "shrinkage": Option(float, "weight of the prior in the covariance, in (0, 1]", low=0, high=1, low_open=True),
        "prior": Option(str, "a scaled identity or the base classes' pooled covariance", choices=("identity", "base")),
        "zero_shot_weight": Option(float, "weight of the zero-shot logits added to GDA's, the paper's ensemble", low=0),
    }

    def __init__(
        self,
        fusion: Fusion,
        shrinkage: float = 0.5,
        prior: str = "identity",
        zero_shot_weight: float = 0.0,
        shared_space: bool = False,
    ):
        super().__init__(fusion)
        self.shrinkage, self.prior, self.zero_shot_weight, self.shared_space = (
            shrinkage,
            prior,
            zero_shot_weight,
            shared_space,
        )
        self.needs_base_classes = prior == "base"
        self.needs_class_text = zero_shot_weight > 0
        self.base_precision: torch.Tensor | None = None  # P⁻¹ [D', D'] and tr(P), set by fit_base
        self.base_trace = 1.0

    def fit_base(self, features, labels):
        with torch.no_grad():
            embedded = self.embed(features).double()
        means = torch.zeros(int(labels.max()) + 1, embedded.shape[1], dtype=torch.float64).index_add_(
            0, labels, embedded
        )
        means /= torch.bincount(labels).clamp_min(1).unsqueeze(-1)
        centred = embedded - means[labels]
        covariance = centred.T @ centred / len(centred)
        trace = covariance.trace().item()
        ridge = 1e-4 * trace / len(covariance) * torch.eye(len(covariance), dtype=torch.float64)  # never singular
        self.base_precision, self.base_trace = torch.linalg.inv(covariance + ridge), trace

    def classify(self, support, support_labels, query, n_way, class_text=None):
        support, query = support.double(), query.double()
        means = mean_prototypes(support, support_labels, n_way)  # [E, N, D]
        centred = support - torch.gather(means, 1, support_labels.unsqueeze(-1).expand_as(support))  # Z [E, M, D]
        m, d = centred.shape[1], centred.shape[2]
        trace = centred.pow(2).sum((1, 2)) / m  # tr(S) [E]
        b = (1 - self.shrinkage) / m  # Σ = A + b ZᵀZ
        if self.prior == "identity":  # A = a I; a floor keeps one shot (S = 0) well defined
            a = (self.shrinkage * trace / d).clamp_min(1e-12)[:, None, None]
            means_a, centred_a = means / a, centred / a  # μ A⁻¹, Z A⁻¹
        else:  # A = α tr(S)/tr(P) · P, at one shot (S = 0) P itself
            if self.base_precision is None:
                raise ValueError("gda with prior: base needs fit_base (the harness passes the base classes)")
            scale = torch.where(trace > 0, self.shrinkage * trace / self.base_trace, torch.ones_like(trace))
            means_a = means @ self.base_precision / scale[:, None, None]
            centred_a = centred @ self.base_precision / scale[:, None, None]
        # μ Σ⁻¹ = μA⁻¹ − μA⁻¹ Zᵀ (I/b + Z A⁻¹ Zᵀ)⁻¹ Z A⁻¹   (Woodbury)
        inner = torch.eye(m, dtype=support.dtype) / b + centred_a @ centred.transpose(1, 2)
        weights = means_a - torch.linalg.solve(inner, centred @ means_a.transpose(1, 2)).transpose(1, 2) @ centred_a
        bias = -0.5 * (weights * means).sum(-1)  # [E, N]
        logits = query @ weights.transpose(1, 2) + bias.unsqueeze(1)  # [E, Q, N]
        if self.zero_shot_weight > 0:
            if class_text is None:
                raise ValueError("gda with zero_shot_weight needs class_text [E, N, Dt]")
            names = F.normalize(self.class_features(class_text, self.shared_space), dim=-1).double()
            logits = logits + self.zero_shot_weight * ZERO_SHOT_SCALE * F.normalize(query, dim=-1) @ names.transpose(
                1, 2
            )
        return logits.float()
