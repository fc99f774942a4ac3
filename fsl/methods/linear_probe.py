"""Linear probe: a logistic regression fitted on each episode's support set.

All episodes of a batch are fitted at once in the dual form (on the support Gram matrix), which
is exact and small: N*K unknowns per class instead of the feature size. The objective is scikit-learn's (sum of cross-entropies + ||W - W0||² / 2C),
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
    def __init__(self, fusion: Fusion, C: float = 1.0, max_iter: int = 20, init: str = "zeros",
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
        # The optimum is W = W0 + A·support (representer theorem): fit A [E, N, N*K] and the bias on
        # the support Gram matrix, the same solution with N*K instead of D unknowns per class.
        gram = support @ support.transpose(1, 2)  # [E, M, M], M = N*K
        coefficients = fit_logistic(gram, support @ prior.transpose(1, 2), support_labels, n_way, self.C,
                                    self.max_iter)  # [E, N, M + 1]: A, then the bias
        weights = prior + coefficients[..., :-1] @ support  # [E, N, D]
        return query @ weights.transpose(1, 2) + coefficients[..., -1].unsqueeze(1)


NEWTON_MAX_UNKNOWNS = 400  # per episode; above it (e.g. 15-way 5-shot: 1,140) L-BFGS is cheaper


def fit_logistic(gram: torch.Tensor, prior_logits: torch.Tensor, labels: torch.Tensor, n_way: int, C: float,
                 max_iter: int) -> torch.Tensor:
    """Multinomial logistic regression in the dual, batched over episodes: X = [A | b], [E, N, M + 1].

    Minimises sum_i CE(prior_i + [G_i, 1] X_c) + tr(A G Aᵀ) / 2C, scikit-learn's objective. Small
    problems use Newton's method (a few steps to the optimum), larger ones L-BFGS. In float64:
    float32 stalls near the optimum.
    """
    dtype = gram.dtype
    gram, prior_logits = gram.double(), prior_logits.double()
    n_episodes, m, _ = gram.shape
    phi = torch.cat([gram, gram.new_ones(n_episodes, m, 1)], dim=-1)  # [E, M, M + 1]
    targets = F.one_hot(labels, n_way).to(gram.dtype)  # [E, M, N]
    penalty = F.pad(gram / C, (0, 1, 0, 1))  # [E, M + 1, M + 1]; the bias is not penalised

    def objective(x: torch.Tensor) -> torch.Tensor:  # [E]
        log_probabilities = F.log_softmax(prior_logits + phi @ x.transpose(1, 2), dim=-1)
        return -(log_probabilities * targets).sum((1, 2)) + (x @ penalty * x).sum((1, 2)) / 2

    x = gram.new_zeros(n_episodes, n_way, m + 1)
    solve = newton if n_way * (m + 1) <= NEWTON_MAX_UNKNOWNS else lbfgs
    return solve(objective, x, phi, targets, penalty, prior_logits, max_iter).to(dtype)


def newton(objective, x, phi, targets, penalty, prior_logits, max_iter, tolerance=1e-4):
    n_episodes, n_way, width = x.shape
    size = n_way * width
    damping = 1e-5 * torch.eye(size, dtype=x.dtype)
    for _ in range(max_iter):
        probabilities = torch.softmax(prior_logits + phi @ x.transpose(1, 2), dim=-1)  # [E, M, N]
        gradient = (probabilities - targets).transpose(1, 2) @ phi + x @ penalty  # [E, N, M + 1]
        if gradient.abs().max() < tolerance:
            break
        curvature = torch.diag_embed(probabilities) - probabilities.unsqueeze(-1) * probabilities.unsqueeze(-2)
        hessian = torch.einsum("eicd,eim,ein->ecmdn", curvature, phi, phi)  # [E, N, M+1, N, M+1]
        hessian = hessian + torch.einsum("cd,emn->ecmdn", torch.eye(n_way, dtype=x.dtype), penalty)
        step = torch.linalg.solve(hessian.reshape(n_episodes, size, size) + damping,
                                  gradient.reshape(n_episodes, size)).view_as(x)
        step[..., -1] -= step[..., -1].mean(-1, keepdim=True)  # a common shift of all biases changes nothing
        x = x - backtrack(objective, x, step, gradient)
    return x


def lbfgs(objective, x, phi, targets, penalty, prior_logits, max_iter):
    x = x.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([x], lr=1, max_iter=10 * max_iter, tolerance_grad=1e-6,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective(x).sum()  # episodes are independent: the sum's optimum is each one's
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return x.detach()


def backtrack(objective, x: torch.Tensor, step: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Halve each episode's Newton step until its objective decreases enough (Armijo)."""
    current, slope = objective(x), (gradient * step).sum((1, 2))
    scale = torch.ones_like(current)
    for _ in range(30):
        accepted = objective(x - scale[:, None, None] * step) <= current - 1e-4 * scale * slope
        if accepted.all():
            break
        scale = torch.where(accepted, scale, scale / 2)
    return scale[:, None, None] * step
