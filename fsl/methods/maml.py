"""MAML (Finn et al., 2017) as a head on frozen features: a linear classifier, optionally on a
small MLP body, whose initialisation is meta-learned so that a few gradient steps on the support
set fit a new episode.

The classifier starts every class from the same learned vector (w0, b0), so one initialisation
serves any number of ways and any label order. The inner loop is `torch.func.grad`, vmapped over
the episodes of a batch; second order unless `first_order`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from fsl.fusion import Fusion
from fsl.methods.base import FewShotHead


class MAML(FewShotHead):
    def __init__(self, fusion: Fusion, hidden: int = 0, inner_steps: int = 10, inner_lr: float = 0.5,
                 first_order: bool = False):
        super().__init__(fusion)
        width = hidden or fusion.out_dim
        self.body = nn.Sequential(nn.Linear(fusion.out_dim, hidden), nn.ReLU()) if hidden else nn.Identity()
        self.w0 = nn.Parameter(torch.zeros(width))
        self.b0 = nn.Parameter(torch.zeros(()))
        self.inner_steps, self.inner_lr, self.first_order = inner_steps, inner_lr, first_order

    def fast_weights(self, n_way: int) -> dict[str, torch.Tensor]:
        """The adapted parameters before adaptation: body weights and N copies of (w0, b0)."""
        weights = {f"body.{k}": v for k, v in self.body.named_parameters()}
        return {**weights, "weight": self.w0.expand(n_way, -1), "bias": self.b0.expand(n_way)}

    def logits(self, weights: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
        body = {k[len("body."):]: v for k, v in weights.items() if k.startswith("body.")}
        hidden = functional_call(self.body, body, (features,)) if body else features
        return hidden @ weights["weight"].T + weights["bias"]

    def adapt(self, weights, support: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One episode's inner loop: [N*K, D] support -> adapted weights."""
        loss = lambda w: F.cross_entropy(self.logits(w, support), labels)  # noqa: E731
        for _ in range(self.inner_steps):
            gradients = grad(loss)(weights)
            if self.first_order:
                gradients = {k: g.detach() for k, g in gradients.items()}
            weights = {k: w - self.inner_lr * gradients[k] for k, w in weights.items()}
        return weights

    def classify(self, support, support_labels, query, n_way, class_text=None):
        start = self.fast_weights(n_way)

        def one_episode(support, labels, query):
            return self.logits(self.adapt(start, support, labels), query)

        return vmap(one_episode)(support, support_labels, query)  # [E, Q, N]
