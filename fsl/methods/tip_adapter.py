"""Tip-Adapter (Zhang et al., ECCV 2022: "Tip-Adapter: Training-free Adaption of CLIP for Few-shot
Classification"), the training-free version.

A cache model: the support features are the keys, their one-hot labels the values. A query's
affinity to each key is exp(-β(1 - cos)), and the cache logits (affinities · values) are added, with
weight α, to the zero-shot logits (100 · cosine to the class-name prompts, CLIP's scale). With CLIP
or the aligned offline pair (`fsl align`) the prompts meet photos and texts; with the plain offline
pair they meet the text part only. α and β are chosen on validation classes (the paper searches them
on its validation split too).

`finetune: true` is Tip-Adapter-F: the cache keys become parameters, initialised as the support
features and trained for a few Adam steps on the support set's cross-entropy (the paper trains 20
epochs with AdamW and a cosine schedule). Every episode has its own keys; the summed loss gives each
episode exactly its own gradient, and Adam's update is element-wise, so one batched optimiser is
the same as one per episode."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fsl.methods.base import FewShotHead
from fsl.methods.fusion import Fusion
from fsl.methods.utils import ZERO_SHOT_SCALE, Option


class TipAdapter(FewShotHead):
    """Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022): zero-shot logits plus a cache model
    of the support features and labels; with `finetune`, the cache keys are fine-tuned on the support.
    """

    name = "tip_adapter"
    uses_class_names = True
    options = {
        "alpha": Option(float, "weight of the cache logits", low=0),
        "beta": Option(float, "sharpness of the cache affinities exp(-beta (1 - cosine))", low=0),
        "finetune": Option(bool, "fine-tune the cache keys on the support set, Tip-Adapter-F"),
        "steps": Option(int, "fine-tuning steps", low=1),
        "lr": Option(float, "fine-tuning learning rate", low=0, low_open=True),
    }
    needs_class_text = True

    def __init__(
        self,
        fusion: Fusion,
        alpha: float = 1.0,
        beta: float = 5.5,
        shared_space: bool = False,
        finetune: bool = False,
        steps: int = 20,
        lr: float = 1e-3,
    ):
        super().__init__(fusion)
        self.alpha, self.beta, self.shared_space = alpha, beta, shared_space
        self.finetune, self.steps, self.lr = finetune, int(steps), lr

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fusion(features), dim=-1)

    def logits(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """[E, X, D] -> [E, X, N]: zero-shot logits plus α · the cache's affinity-weighted labels."""
        affinity = torch.exp(-self.beta * (1 - x @ keys.transpose(1, 2)))  # [E, X, N*K]
        return ZERO_SHOT_SCALE * x @ classes.transpose(1, 2) + self.alpha * affinity @ values

    def classify(self, support, support_labels, query, n_way, class_text=None):
        if class_text is None:
            raise ValueError("tip_adapter needs class_text [E, N, Dt]: the harness embeds the class names")
        classes = F.normalize(self.class_features(class_text, self.shared_space), dim=-1)  # [E, N, D]
        values = F.one_hot(support_labels, n_way).to(query.dtype)  # [E, N*K, N]
        keys = support.detach()
        if self.finetune:
            keys = self.tuned_keys(support.detach(), support_labels, values, classes.detach())
        return self.logits(query, keys, values, classes)

    def tuned_keys(self, support, support_labels, values, classes) -> torch.Tensor:
        keys = support.clone().requires_grad_()
        optimizer = torch.optim.AdamW([keys], lr=self.lr, eps=1e-4)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.steps)
        with torch.enable_grad():
            for _ in range(self.steps):
                logits = self.logits(support, keys, values, classes)  # [E, N*K, N]
                loss = F.cross_entropy(logits.flatten(0, 1), support_labels.flatten(), reduction="sum")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
        return keys.detach()
