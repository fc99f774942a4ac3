"""Linear probe: a logistic regression fitted on each episode's support set.

All episodes of a batch are fitted at once, exactly and small: the optimum's weights lie in the
span of the episode's support features (representer theorem), so each episode is fitted on its
N*K support examples written in an orthonormal basis of that span (from the support Gram matrix),
N*K coordinates per class instead of the feature size. The objective is scikit-learn's (sum of
cross-entropies + ||W - W0||² / 2C), with W0 = 0 by default, or the class prototypes, or the
class-name text embeddings, which then act as a prior the support set pulls away from (as in
LP++ / CLAP)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fsl.methods.base import FewShotHead
from fsl.methods.fusion import Fusion
from fsl.methods.utils import Option, inner_products, mean_prototypes

INITS = ("zeros", "prototypes", "class_text")
CENTERINGS = ("none", "base", "support")


class LinearProbe(FewShotHead):
    """Linear probe (Radford et al., ICML 2021; Tian et al., ECCV 2020): a logistic regression fitted
    on each episode's support set, scikit-learn's objective, solved exactly in the support span.
    """

    name = "linear_probe"
    uses_class_names = True
    options = {
        "C": Option(float, "inverse regularisation strength, as scikit-learn's", low=1e-6, high=1e6),
        "max_iter": Option(int, "Newton steps at most", low=1, high=10_000),
        "init": Option(str, "the weights the fit starts from and is pulled towards", choices=INITS),
        "centering": Option(
            str,
            "subtract the base classes' mean raw feature (SimpleShot's CL2N), the episode's support mean, or nothing",
            choices=CENTERINGS,
        ),
    }

    def __init__(
        self,
        fusion: Fusion,
        C: float = 1.0,
        max_iter: int = 20,
        init: str = "zeros",
        centering: str = "none",
        shared_space: bool = False,
    ):
        super().__init__(fusion)
        self.C, self.max_iter, self.init, self.shared_space = C, max_iter, init, shared_space
        self.centering = centering
        self.needs_class_text = init == "class_text"
        self.needs_base_classes = centering == "base"
        if centering == "base":
            self.register_buffer("base_mean", torch.zeros(fusion.image_dim + fusion.text_dim))  # set by fit_base

    def fit_base(self, features, labels):
        self.base_mean.copy_(features.double().mean(0).float())

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        if self.centering == "base":
            return F.normalize(self.fusion(features - self.base_mean), dim=-1)
        return self.fusion(features)

    def prior(self, support, support_labels, n_way, class_text) -> torch.Tensor | None:
        """W0 [E, N, D], the weights the fit starts from and is regularised towards (None: zeros)."""
        if self.init == "prototypes":
            return mean_prototypes(support, support_labels, n_way)
        if self.init == "class_text":
            return F.normalize(self.class_features(class_text, self.shared_space), dim=-1)
        return None

    def classify(self, support, support_labels, query, n_way, class_text=None):
        support, query = support.detach(), query.detach()
        if self.centering == "support":  # the episode's own mean: what the support classes share
            mean = support.mean(1, keepdim=True)
            support, query = F.normalize(support - mean, dim=-1), F.normalize(query - mean, dim=-1)
        prior = self.prior(support, support_labels, n_way, class_text)  # [E, N, D] or None
        prior_logits = (
            support.new_zeros(*support.shape[:2], n_way) if prior is None else support @ prior.detach().transpose(1, 2)
        )  # [E, M, N], M = N*K
        factor = span_coordinates(support @ support.transpose(1, 2))  # [E, M, M]
        solution = fit_logistic(factor, prior_logits, support_labels, n_way, self.C, self.max_iter)  # [E, N, M + 1]
        # the weights back in feature space: W = W0 + B L⁻¹ · support
        coefficients = torch.linalg.solve_triangular(factor, solution[..., :-1].double(), upper=False, left=False)
        weights = coefficients.to(support.dtype) @ support  # [E, N, D]
        if prior is not None:
            weights = weights + prior.detach()
        return inner_products(query, weights) + solution[..., -1].unsqueeze(1).to(query.dtype)


def span_coordinates(gram: torch.Tensor, floor: float = 1e-10) -> torch.Tensor:
    """L with L Lᵀ = G [E, M, M] (float64): the support rows' coordinates in the orthonormal basis
    U = L⁻¹ · support of their span, where the optimum's weights lie (representer theorem).

    Fitting in these coordinates rather than on the dual's kernel rows keeps the Hessian's
    conditioning that of G instead of G², so conjugate gradients need a few steps, not dozens.
    Where rows repeat or depend on each other (fewer dimensions than rows, a photo twice), G is
    singular up to float32 round-off and has no Cholesky factor: those episodes' eigenvalues are
    raised to `floor` of the largest (the directions they add carry no data) before factorising."""
    gram = gram.double()
    factor, failed = torch.linalg.cholesky_ex(gram)
    failed = failed > 0
    if failed.any():
        eigenvalues, eigenvectors = torch.linalg.eigh(gram[failed])
        eigenvalues = eigenvalues.clamp_min(floor * eigenvalues[..., -1:].clamp_min(1e-300))
        factor[failed] = torch.linalg.cholesky(
            (eigenvectors * eigenvalues.unsqueeze(-2)) @ eigenvectors.transpose(1, 2)
        )
    return factor


def fit_logistic(
    features: torch.Tensor,
    prior_logits: torch.Tensor,
    labels: torch.Tensor,
    n_way: int,
    C: float,
    max_iter: int,
    tolerance: float = 1e-4,
) -> torch.Tensor:
    """Multinomial logistic regression, batched over episodes: features [E, M, R], prior logits
    [E, M, N] (an offset per example), labels [E, M] -> X = [W | b], [E, N, R + 1] (float32).

    Minimises sum_i CE(prior_i + W x_i + b) + ||W||² / 2C, scikit-learn's objective, until every
    episode's gradient is below `tolerance` on scikit-learn's scale (its loss is this one over M, and
    its `tol` bounds that loss's gradient). In float32, which on the orthonormal coordinates reaches
    that tolerance as float64 does, faster; an episode float32 cannot bring below it is refitted in
    float64.
    """
    x, converged = newton(features.float(), prior_logits.float(), labels, n_way, C, max_iter, tolerance)
    if not converged.all():
        again = torch.nonzero(~converged).squeeze(1)
        x[again] = newton(
            features[again].double(), prior_logits[again].double(), labels[again], n_way, C, max_iter, tolerance
        )[0].float()
    return x


def newton(
    features: torch.Tensor,
    prior_logits: torch.Tensor,
    labels: torch.Tensor,
    n_way: int,
    C: float,
    max_iter: int,
    tolerance: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton's method in the features' dtype, each step solved by conjugate gradients on
    Hessian-vector products, which never form the Hessian: on these well-conditioned coordinates a
    few products per step, which beats solving the formed Hessian even at 5-way 1-shot. An episode
    leaves the batch once it has converged. -> (X, converged [E])."""
    n_episodes, m, width = features.shape
    phi = torch.cat([features, features.new_ones(n_episodes, m, 1)], dim=-1)  # [E, M, R + 1]
    targets = F.one_hot(labels, n_way).to(phi.dtype)  # [E, M, N]
    penalty = torch.cat([torch.full((width,), 1 / C, dtype=phi.dtype), phi.new_zeros(1)])  # the bias is free
    part = Problem(phi, targets, penalty, prior_logits)
    x = phi.new_zeros(n_episodes, n_way, width + 1)
    active, converged = torch.arange(n_episodes), torch.zeros(n_episodes, dtype=torch.bool)
    value, log_probabilities = part.evaluate(x)
    for iteration in range(max_iter + 1):
        current = x[active]
        probabilities = log_probabilities.exp()
        gradient = part.gradient(current, probabilities)
        done = gradient.flatten(1).abs().amax(1) < tolerance * m
        converged[active[done]] = True
        if iteration == max_iter or done.all():
            break
        if done.any():  # converged episodes leave the batch
            keep = torch.nonzero(~done).squeeze(1)
            active, part, current = active[keep], part.subset(keep), current[keep]
            gradient, probabilities, value = gradient[keep], probabilities[keep], value[keep]
        direction = newton_cg_step(part, current, gradient, probabilities)
        direction[..., -1] -= direction[..., -1].mean(-1, keepdim=True)  # a common shift of all biases changes nothing
        x[active], value, log_probabilities = backtrack(part, current, direction, gradient, value)
    return x, converged


class Problem:
    """The objective of a batch of episodes, its gradient and its Hessian's product with a vector.
    penalty [R + 1] is the diagonal of the regulariser (1/C on the weights, 0 on the bias)."""

    def __init__(self, phi, targets, penalty, prior_logits):
        self.phi, self.targets, self.penalty, self.prior_logits = phi, targets, penalty, prior_logits

    def subset(self, rows: torch.Tensor) -> Problem:
        return Problem(self.phi[rows], self.targets[rows], self.penalty, self.prior_logits[rows])

    def evaluate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The objective [E] at x and the log-probabilities [E, M, N] it comes from (the next
        iteration's curvature and gradient start from them: one pass over the examples, not two)."""
        log_probabilities = F.log_softmax(self.prior_logits + self.phi @ x.transpose(1, 2), dim=-1)
        return -(log_probabilities * self.targets).sum((1, 2)) + (x * x * self.penalty).sum(
            (1, 2)
        ) / 2, log_probabilities

    def gradient(self, x: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:  # [E, N, R + 1]
        return (probabilities - self.targets).transpose(1, 2) @ self.phi + x * self.penalty

    def hessian_product(self, probabilities: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """H v for v [E, N, R + 1]: the softmax curvature (diag p − p pᵀ per example) plus the penalty."""
        z = self.phi @ v.transpose(1, 2)  # [E, M, N]: how each example's logits move along v
        r = probabilities * (z - (probabilities * z).sum(-1, keepdim=True))
        return r.transpose(1, 2) @ self.phi + v * self.penalty


def newton_cg_step(
    problem: Problem, x: torch.Tensor, gradient: torch.Tensor, probabilities: torch.Tensor, max_steps: int = 100
) -> torch.Tensor:
    """Solve H s = g by conjugate gradients, batched, each episode to a relative residual of
    min(0.5, sqrt|g|) (Nocedal & Wright's truncated Newton, alg. 7.1): superlinear near the optimum."""

    def product(v):
        return problem.hessian_product(probabilities, v) + 1e-5 * v

    def dot(a, b):
        return (a * b).sum((1, 2))

    tiny = torch.finfo(x.dtype).tiny
    norm = dot(gradient, gradient).sqrt()
    target = torch.minimum(torch.full_like(norm, 0.5), norm.sqrt()) * norm
    step, residual = torch.zeros_like(x), gradient.clone()
    direction, rho = residual.clone(), dot(residual, residual)
    for _ in range(max_steps):
        running = rho.sqrt() > target
        if not running.any():
            break
        product_d = product(direction)
        alpha = torch.where(running, rho / dot(direction, product_d).clamp_min(tiny), torch.zeros_like(rho))
        step = step + alpha[:, None, None] * direction
        residual = residual - alpha[:, None, None] * product_d
        rho_next = dot(residual, residual)
        new_direction = residual + (rho_next / rho.clamp_min(tiny))[:, None, None] * direction
        direction = torch.where(running[:, None, None], new_direction, direction)
        rho = torch.where(running, rho_next, rho)
    return step


def backtrack(
    problem: Problem, x: torch.Tensor, step: torch.Tensor, gradient: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Halve each episode's Newton step until its objective decreases enough (Armijo): the new
    point, its objective and its log-probabilities."""
    slope = (gradient * step).sum((1, 2))
    scale = torch.ones_like(value)
    for _ in range(30):
        point = x - scale[:, None, None] * step
        trial, log_probabilities = problem.evaluate(point)
        accepted = trial <= value - 1e-4 * scale * slope
        if accepted.all():
            break
        scale = torch.where(accepted, scale, scale / 2)
    return point, trial, log_probabilities
