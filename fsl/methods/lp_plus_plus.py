"""LP++ (Huang, Shakeri, Dolz, Boudiaf, Bahig & Ben Ayed, CVPR 2024: "LP++: A Surprisingly Strong
Linear Probe for Few-Shot CLIP").

A linear probe whose class weights blend a visual prototype with the class-name text embedding:
logits_k(x) = x · (w_k + α_k t_k) + b_k. W (with b) and α are fitted on the support set's
cross-entropy by block majorise–minimise steps: each block takes a gradient step of 1 / L, L the
Lipschitz constant of its gradient (L_W = λ_max(X̃ᵀX̃) / 2M with X̃ = [X, 1]; L_α =
max_k Σ_i (x_i · t_k)² / 2M; softmax curvature ≤ ½), ten W steps per α step as in the authors'
code, which also gives the initialisation: W from the class feature sums, every α_k = 250 · the mean
text score. No hyper-parameter is searched. With the offline pair the class names meet the text part
of the fused features only; with CLIP or the aligned pair (`fsl align`) the photo too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fsl import FslError
from fsl.fusion import Fusion, ImageOnly
from fsl.methods.base import FewShotHead, check_positive


class LPPlusPlus(FewShotHead):
    needs_class_text = True

    def __init__(self, fusion: Fusion, shared_space: bool = False, steps: int = 300, alpha_every: int = 10):
        super().__init__(fusion)
        check_positive("lp_plus_plus", steps=steps, alpha_every=alpha_every)
        if isinstance(fusion, ImageOnly) and not shared_space:
            raise FslError("lp_plus_plus on image features needs an encoder whose image and text towers share one "
                           "space (clip, or the aligned pair of `fsl align`); with the offline pair use a fusion "
                           "with text (concat)")
        self.shared_space, self.steps, self.alpha_every = shared_space, int(steps), int(alpha_every)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fusion(features), dim=-1)

    def classify(self, support, support_labels, query, n_way, class_text=None):
        if class_text is None:
            raise ValueError("lp_plus_plus needs class_text [E, N, Dt]: the harness embeds the class names")
        x = support.detach().double()
        texts = F.normalize(self.class_features(class_text, self.shared_space), dim=-1).double()  # [E, N, D]
        one_hot = F.one_hot(support_labels, n_way).double()  # [E, M, N]
        m = x.shape[1]
        text_scores = x @ texts.transpose(1, 2)  # [E, M, N]
        with_bias = torch.cat([x, torch.ones_like(x[..., :1])], -1)
        gram_max = torch.linalg.eigvalsh(with_bias @ with_bias.transpose(1, 2))[:, -1]  # λ_max(X̃ᵀX̃) via X̃X̃ᵀ
        step_w = (2 * m / gram_max)[:, None, None]
        step_alpha = (2 * m / text_scores.pow(2).sum(1).amax(-1))[:, None]
        weights = one_hot.transpose(1, 2) @ with_bias  # [E, N, D+1]: class sums; the bias column starts at K
        weights[..., -1] = 0
        alpha = (250 * text_scores.mean((1, 2)))[:, None].expand(-1, n_way).clone()  # [E, N]
        for step in range(self.steps):
            logits = with_bias @ weights.transpose(1, 2) + alpha.unsqueeze(1) * text_scores
            residual = (logits.softmax(-1) - one_hot) / m  # gradient of the mean cross-entropy wrt logits
            weights -= step_w * residual.transpose(1, 2) @ with_bias
            if (step + 1) % self.alpha_every == 0:
                logits = with_bias @ weights.transpose(1, 2) + alpha.unsqueeze(1) * text_scores
                residual = (logits.softmax(-1) - one_hot) / m
                alpha -= step_alpha * (residual * text_scores).sum(1)
        q = query.detach().double()
        logits = q @ weights[..., :-1].transpose(1, 2) + weights[..., -1].unsqueeze(1)
        return (logits + alpha.unsqueeze(1) * (q @ texts.transpose(1, 2))).float()  # [E, Q, N]
