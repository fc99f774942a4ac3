"""LP++ (Huang, Shakeri, Dolz, Boudiaf, Bahig & Ben Ayed, CVPR 2024: "LP++: A Surprisingly Strong
Linear Probe for Few-Shot CLIP").

A linear probe whose class weights blend a visual prototype with the class-name text embedding:
logits_k(x) = x · (w_k + α_k t_k) + b_k. W (with b) and α are fitted on the support set's mean
cross-entropy by block coordinate descent with step sizes from the Lipschitz constants of each
block's gradient, as in the authors' code (FewShot-CLIP-Strong-Baseline, `LinearProbe_P2`): W takes
300 steps of heavy-ball descent (momentum 0.9, step 4M / λ_max(XᵀX)), α one plain step
(M / (4 max_k Σ_i (x_i · t_k)²)) every 10 of them; W starts from the class feature sums, every α_k
from 250 · the mean text score. No hyper-parameter is searched. With the offline pair the class
names meet the text part of the fused features only; with CLIP or the aligned pair (`fsl align`)
the photo too."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fsl.errors import FslError
from fsl.methods.base import FewShotHead
from fsl.methods.fusion import Fusion, ImageOnly
from fsl.methods.utils import Option


class LPPlusPlus(FewShotHead):
    """LP++ (Huang et al., CVPR 2024): a linear probe whose class weights blend the visual
    prototypes with the class-name text weights, the blend learned per class, with step sizes from
    the data's Lipschitz constant; no hyper-parameter is searched.
    """

    name = "lp_plus_plus"
    uses_class_names = True
    options = {
        "steps": Option(int, "gradient steps", low=1),
        "alpha_every": Option(int, "update the blend weights every this many steps", low=1),
        "momentum": Option(float, "momentum of the gradient steps", low=0, high=1, high_open=True),
    }
    needs_class_text = True

    def __init__(
        self, fusion: Fusion, shared_space: bool = False, steps: int = 300, alpha_every: int = 10, momentum: float = 0.9
    ):
        super().__init__(fusion)
        self.momentum = momentum
        if isinstance(fusion, ImageOnly) and not shared_space:
            raise FslError(
                "lp_plus_plus on image features needs an encoder whose image and text towers share one "
                "space (clip, or the aligned pair of `fsl align`); with the offline pair use a fusion "
                "with text (concat)"
            )
        self.shared_space, self.steps, self.alpha_every = shared_space, int(steps), int(alpha_every)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fusion(features), dim=-1)

    def classify(self, support, support_labels, query, n_way, class_text=None):
        if class_text is None:
            raise ValueError("lp_plus_plus needs class_text [E, N, Dt]: the harness embeds the class names")
        x, q = support.detach().double(), query.detach().double()
        texts = F.normalize(self.class_features(class_text, self.shared_space), dim=-1).double()  # [E, N, D]
        one_hot = F.one_hot(support_labels, n_way).double()  # [E, M, N]
        m = x.shape[1]
        text_scores = x @ texts.transpose(1, 2)  # [E, M, N]
        gram = x @ x.transpose(1, 2)  # [E, M, M]
        step_w = (4 * m / torch.linalg.eigvalsh(gram)[:, -1])[:, None, None]  # λ_max(XᵀX) = λ_max(XXᵀ)
        step_alpha = (m / (4 * text_scores.pow(2).sum(1).amax(-1)))[:, None]
        # W stays in the span of the support features (it starts as class sums, every gradient is a
        # combination of them): W = A X, so each step costs [N, M] x [M, M], not [N, M] x [M, D].
        coefficients = one_hot.transpose(1, 2).clone()  # A [E, N, M]: W starts as the class sums
        bias = torch.zeros(len(x), n_way, dtype=x.dtype)
        velocity, bias_velocity = torch.zeros_like(coefficients), torch.zeros_like(bias)
        alpha = (250 * text_scores.mean((1, 2)))[:, None].expand(-1, n_way).clone()  # [E, N]
        for step in range(self.steps):
            logits = gram @ coefficients.transpose(1, 2) + bias.unsqueeze(1) + alpha.unsqueeze(1) * text_scores
            residual = (logits.softmax(-1) - one_hot) / m  # gradient of the mean cross-entropy wrt the logits
            velocity = self.momentum * velocity + residual.transpose(1, 2)  # ∂/∂W = residualᵀ X
            bias_velocity = self.momentum * bias_velocity + residual.sum(1)
            coefficients -= step_w * velocity
            bias -= step_w[..., 0] * bias_velocity
            if (step + 1) % self.alpha_every == 0:
                alpha -= step_alpha * (residual * text_scores).sum(1)
        logits = (q @ x.transpose(1, 2)) @ coefficients.transpose(1, 2) + bias.unsqueeze(1)
        return (logits + alpha.unsqueeze(1) * (q @ texts.transpose(1, 2))).float()  # [E, Q, N]
