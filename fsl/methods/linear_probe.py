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

    def classify(self, support, support_labels, query, n_way, class_text=None):
        support, query = support.detach(), query.detach()
        prior = self.prior(support, support_labels, n_way, class_text).detach()  # [E, N, D]
        # The optimum is W = W0 + A·support (representer theorem): fit A [E, N, N*K] and the bias on
        # the support Gram matrix, the same solution with N*K instead of D unknowns per class.
        gram = support @ support.transpose(1, 2)  # [E, M, M], M = N*K
        coefficients = fit_logistic(gram, support @ prior.transpose(1, 2), support_labels, n_way, self.C,
                                    self.max_iter)  # [E, N, M + 1]: A, then the bias
        weights = prior + coefficients[..., :-1] @ support  # [E, N, D]
        return query @ weights.transpose(1, 2) + coefficients[..., -1].unsqueeze(1)


NEWTON_MAX_UNKNOWNS = 100  # per episode; above it (5-way 5-shot: 130, 15-way 5-shot: 1,140) CG is faster (measured)


def fit_logistic(gram: torch.Tensor, prior_logits: torch.Tensor, labels: torch.Tensor, n_way: int, C: float,
                 max_iter: int, tolerance: float = 1e-4) -> torch.Tensor:
    """Multinomial logistic regression in the dual, batched over episodes: X = [A | b], [E, N, M + 1].

    Minimises sum_i CE(prior_i + [G_i, 1] X_c) + tr(A G Aᵀ) / 2C, scikit-learn's objective, to a
    gradient below `tolerance` in every episode. Newton's method: small problems solve each step
    exactly; larger ones (15-way, all-way) by conjugate gradients on Hessian-vector products, which
    never form the Hessian. An episode leaves the batch once it has converged. In float64: float32
    stalls near the optimum.
    """
    dtype = gram.dtype
    gram, prior_logits = gram.double(), prior_logits.double()
    n_episodes, m, _ = gram.shape
    phi = torch.cat([gram, gram.new_ones(n_episodes, m, 1)], dim=-1)  # [E, M, M + 1]
    targets = F.one_hot(labels, n_way).to(gram.dtype)  # [E, M, N]
    penalty = F.pad(gram / C, (0, 1, 0, 1))  # [E, M + 1, M + 1]; the bias is not penalised
    problem = Dual(phi, targets, penalty, prior_logits)
    x = gram.new_zeros(n_episodes, n_way, m + 1)
    step = newton_step if n_way * (m + 1) <= NEWTON_MAX_UNKNOWNS else newton_cg_step
    active, part = torch.arange(n_episodes), problem
    for _ in range(max_iter):
        current = x[active]
        probabilities = part.probabilities(current)
        gradient = part.gradient(current, probabilities)
        still = gradient.flatten(1).abs().amax(1) >= tolerance
        if not still.all():  # converged episodes leave the batch
            keep = torch.nonzero(still).squeeze(1)
            active, part, current = active[keep], part.subset(keep), current[keep]
            gradient, probabilities = gradient[keep], probabilities[keep]
            if len(active) == 0:
                break
        direction = step(part, current, gradient, probabilities)
        direction[..., -1] -= direction[..., -1].mean(-1, keepdim=True)  # a common shift of all biases changes nothing
        x[active] = current - backtrack(part.objective, current, direction, gradient)
    return x.to(dtype)


class Dual:
    """The dual objective of a batch of episodes, its gradient and its Hessian's product with a vector."""

    def __init__(self, phi, targets, penalty, prior_logits):
        self.phi, self.targets, self.penalty, self.prior_logits = phi, targets, penalty, prior_logits

    def subset(self, rows: torch.Tensor) -> "Dual":
        return Dual(self.phi[rows], self.targets[rows], self.penalty[rows], self.prior_logits[rows])

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:  # [E, M, N]
        return torch.softmax(self.prior_logits + self.phi @ x.transpose(1, 2), dim=-1)

    def objective(self, x: torch.Tensor) -> torch.Tensor:  # [E]
        log_probabilities = F.log_softmax(self.prior_logits + self.phi @ x.transpose(1, 2), dim=-1)
        return -(log_probabilities * self.targets).sum((1, 2)) + (x @ self.penalty * x).sum((1, 2)) / 2

    def gradient(self, x: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:  # [E, N, M + 1]
        return (probabilities - self.targets).transpose(1, 2) @ self.phi + x @ self.penalty

    def hessian_product(self, probabilities: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """H v for v [E, N, M + 1]: the softmax curvature (diag p − p pᵀ per example) plus the penalty."""
        z = self.phi @ v.transpose(1, 2)  # [E, M, N]: how each example's logits move along v
        r = probabilities * (z - (probabilities * z).sum(-1, keepdim=True))
        return r.transpose(1, 2) @ self.phi + v @ self.penalty


def newton_step(problem: Dual, x: torch.Tensor, gradient: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """Solve H s = g exactly: [E, N(M+1), N(M+1)] Hessians, for small episodes."""
    n_episodes, n_way, width = x.shape
    size = n_way * width
    curvature = torch.diag_embed(probabilities) - probabilities.unsqueeze(-1) * probabilities.unsqueeze(-2)
    hessian = torch.einsum("eicd,eim,ein->ecmdn", curvature, problem.phi, problem.phi)  # [E, N, M+1, N, M+1]
    hessian = hessian + torch.einsum("cd,emn->ecmdn", torch.eye(n_way, dtype=x.dtype), problem.penalty)
    damping = 1e-5 * torch.eye(size, dtype=x.dtype)
    return torch.linalg.solve(hessian.reshape(n_episodes, size, size) + damping,
                              gradient.reshape(n_episodes, size)).view_as(x)


def newton_cg_step(problem: Dual, x: torch.Tensor, gradient: torch.Tensor, probabilities: torch.Tensor,
                   max_steps: int = 100) -> torch.Tensor:
    """Solve H s = g by conjugate gradients, batched, each episode to a relative residual of
    min(0.5, sqrt|g|) (Nocedal & Wright's truncated Newton, alg. 7.1): superlinear near the optimum."""

    def product(v):
        return problem.hessian_product(probabilities, v) + 1e-5 * v

    def dot(a, b):
        return (a * b).sum((1, 2))

    norm = dot(gradient, gradient).sqrt()
    target = torch.minimum(torch.full_like(norm, 0.5), norm.sqrt()) * norm
    step, residual = torch.zeros_like(x), gradient.clone()
    direction, rho = residual.clone(), dot(residual, residual)
    for _ in range(max_steps):
        running = rho.sqrt() > target
        if not running.any():
            break
        product_d = product(direction)
        alpha = torch.where(running, rho / dot(direction, product_d).clamp_min(1e-300), torch.zeros_like(rho))
        step = step + alpha[:, None, None] * direction
        residual = residual - alpha[:, None, None] * product_d
        rho_next = dot(residual, residual)
        new_direction = residual + (rho_next / rho.clamp_min(1e-300))[:, None, None] * direction
        direction = torch.where(running[:, None, None], new_direction, direction)
        rho = torch.where(running, rho_next, rho)
    return step


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
