"""MAML (Finn et al., 2017) as a head on frozen features: a linear classifier, optionally on a
meta-learned body, whose starting point is meta-learned so that a few gradient steps on the
support set fit a new episode.

`init: shared` starts every class from the same learned vector (w0, b0), so one initialisation
serves any number of ways and any label order. On frozen features that vector is inert: softmax
ignores what all classes share, so only a body or a fusion gate can learn. `init: prototypes` is
Proto-MAML (Triantafillou et al., 2020): class k starts at w_k = 2 c_k, b_k = -|c_k|² from its
support prototype c_k in the body's space (ProtoNet's logits, up to a per-query constant), then the
inner loop fine-tunes (w, b); the meta-parameters are the body (`projection`: none, diagonal or
linear, starting as the identity), the fusion gate and (`learn_scale`) a logit scale, all learned
through the inner loop.

The inner loop is `torch.func.grad`, vmapped over the episodes of a batch; second order unless
`first_order`. `learn_scale` meta-learns one factor on the adapted query logits (the argmax never
depends on it): a few inner steps from zero leave the classifier under-confident, and the outer
loss then rewards whatever makes logits larger, such as a fusion gate on the modality with larger
logits, even where that costs accuracy (benchmarks/maml_gate.py). Measured on maml-fused-masked, a
scale trained at the head's lr does not stop that gate from collapsing (the gate moves faster)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from fsl.errors import FslError
from fsl.methods.base import FewShotHead
from fsl.methods.fusion import Fusion
from fsl.methods.utils import Option, make_projection, mean_prototypes


class MAML(FewShotHead):
    """MAML (Finn et al., ICML 2017) and Proto-MAML (Triantafillou et al., ICLR 2020): a linear
    classifier (on an optional body) adapted by gradient steps on each episode's support set, its
    start meta-learned on base-class episodes.
    """

    name = "maml"
    options = {
        "hidden": Option(int, "width of a hidden layer in the adapted body, 0 for none", low=0),
        "inner_steps": Option(int, "gradient steps on the support set", low=0, high=1000),
        "inner_lr": Option(float, "their learning rate", low=0, low_open=True),
        "first_order": Option(bool, "drop the second-order terms of the meta-gradient"),
        "init": Option(
            str, "a meta-learned shared start, or Proto-MAML's prototype start", choices=("shared", "prototypes")
        ),
        "projection": Option(str, "a meta-trained map before the classifier", choices=("none", "diagonal", "linear")),
        "projection_dim": Option(
            int, "output size of the linear projection (default: the fused feature size)", low=1, optional=True
        ),
        "learn_scale": Option(bool, "meta-learn a logit scale"),
    }

    def __init__(
        self,
        fusion: Fusion,
        hidden: int = 0,
        inner_steps: int = 10,
        inner_lr: float = 0.5,
        first_order: bool = False,
        init: str = "shared",
        projection: str = "none",
        projection_dim: int | None = None,
        learn_scale: bool = False,
    ):
        super().__init__(fusion)
        if init == "shared" and projection != "none":
            raise FslError(f"maml projection ({projection}) is Proto-MAML's body: set init: prototypes")
        if init == "prototypes" and hidden:
            raise FslError("maml init: prototypes takes a projection as its body, not hidden")
        width = hidden or fusion.out_dim
        self.body = nn.Sequential(nn.Linear(fusion.out_dim, hidden), nn.ReLU()) if hidden else nn.Identity()
        self.projection = make_projection(projection, fusion.out_dim, projection_dim)
        self.init = init
        if init == "shared":
            self.w0 = nn.Parameter(torch.zeros(width))
            self.b0 = nn.Parameter(torch.zeros(()))
        self.inner_steps, self.inner_lr, self.first_order = inner_steps, inner_lr, first_order
        self.log_scale = nn.Parameter(torch.zeros(())) if learn_scale else None  # the argmax never depends on it

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return self.projection(self.fusion(features))

    def fast_weights(self, n_way: int) -> dict[str, torch.Tensor]:
        """The adapted parameters before adaptation: body weights and N copies of (w0, b0)."""
        weights = {f"body.{k}": v for k, v in self.body.named_parameters()}
        return {**weights, "weight": self.w0.expand(n_way, -1), "bias": self.b0.expand(n_way)}

    def logits(self, weights: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
        body = {k[len("body.") :]: v for k, v in weights.items() if k.startswith("body.")}
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
        logits = self.adapted_logits(support, support_labels, query, n_way)
        return logits if self.log_scale is None else logits * self.log_scale.exp()

    def adapted_logits(self, support, support_labels, query, n_way):
        if self.init == "prototypes":
            prototypes = mean_prototypes(support, support_labels, n_way)  # [E, N, D']
            starts = {"weight": 2 * prototypes, "bias": -prototypes.pow(2).sum(-1)}

            def one_episode(start, support, labels, query):
                return self.logits(self.adapt(start, support, labels), query)

            return vmap(one_episode)(starts, support, support_labels, query)  # [E, Q, N]
        start = self.fast_weights(n_way)

        def one_shared(support, labels, query):
            return self.logits(self.adapt(start, support, labels), query)

        return vmap(one_shared)(support, support_labels, query)  # [E, Q, N]
