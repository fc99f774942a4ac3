"""Linear probe: a logistic regression fitted on each episode's support set.

All episodes of a batch are fitted at once (their losses are independent, so one L-BFGS run on
the sum solves each), in the dual form on the support Gram matrix, which is exact and small. The objective is scikit-learn's (sum of cross-entropies + ||W - W0||² / 2C),
with W0 = 0 by default, or the class prototypes, or the class-name text embeddings, which then
act as a prior the support set pulls away from (as in LP++ / CLAP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fsl import FslError
from fsl.fusion import Fusion
from fsl.methods.base import FewShotHead

INITS = ("zeros", "prototypes", "class_text")


class LinearProbe(FewShotHead):
    def __init__(self, fusion: Fusion, C: float = 1.0, max_iter: int = 50, init: str = "zeros",
                 shared_space: bool = False):
        super().__init__(fusion)
        if init not in INITS:
            raise FslError(f"unknown linear_probe init {init!r}; choose one of {list(INITS)}")
        self.C, self.max_iter, self.init, self.shared_space = C, max_iter, init, shared_space
        self.needs_class_text = init == "class_text"

    def prior(self, support, support_labels, n_way, class_text) -> torch.Tensor:
        """W0 [E, N, D], the weights the fit starts from and is regularised towards."""
        if self.init == "prototypes":
            return self.prototypes(support, support_labels, n_way)
        if self.init == "class_text":
            return F.normalize(self.class_features(class_text, self.shared_space), dim=-1)
        return support.new_zeros(support.shape[0], n_way, support.shape[-1])

    def forward(self, support, support_labels, query, n_way, class_text=None):
        support, query = self.fusion(support).detach(), self.fusion(query).detach()
        prior = self.prior(support, support_labels, n_way, class_text).detach()  # [E, N, D]
        # The optimum is W = W0 + A·support (representer theorem), so fit A [E, N, N*K] on the
        # support Gram matrix: the same solution, with N*K instead of D unknowns per class.
        gram = support @ support.transpose(1, 2)  # [E, N*K, N*K]
        support_prior = support @ prior.transpose(1, 2)  # [E, N*K, N]
        coefficients = support.new_zeros(support.shape[0], n_way, support.shape[1]).requires_grad_(True)
        bias = support.new_zeros(support.shape[0], 1, n_way).requires_grad_(True)
        optimizer = torch.optim.LBFGS([coefficients, bias], lr=1, max_iter=self.max_iter, tolerance_grad=1e-6,
                                      tolerance_change=1e-9, line_search_fn="strong_wolfe")

        def objective() -> torch.Tensor:
            optimizer.zero_grad()
            logits = support_prior + gram @ coefficients.transpose(1, 2) + bias  # [E, N*K, N]
            loss = F.cross_entropy(logits.flatten(0, 1), support_labels.flatten(), reduction="sum")
            loss = loss + (coefficients @ gram * coefficients).sum() / (2 * self.C)  # ||W - W0||² / 2C
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(objective)
        weights = prior + coefficients.detach() @ support  # [E, N, D]
        return query @ weights.transpose(1, 2) + bias.detach()
