"""TIM (Boudiaf et al., NeurIPS 2020: "Transductive Information Maximization for Few-Shot
Learning"), the gradient-descent version TIM-GD. Transductive: it reads every query of an episode.

The prototypes are fine-tuned for a few Adam steps to fit the support labels (cross-entropy) while
maximising the mutual information between the queries and their predicted labels: confident
predictions (low conditional entropy) spread evenly over the classes (high marginal entropy).
Logits are temperature · cosine to the prototypes, as in easyfsl's TIM, which this matches step for
step. Every episode has its own prototypes; the summed loss gives each its own gradient and Adam is
element-wise, so one batched optimiser equals one per episode."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fsl.methods.base import FewShotHead
from fsl.methods.fusion import Fusion
from fsl.methods.utils import Option, cosine, mean_prototypes


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Entropy over the last axis, guarded at p = 0."""
    return -(probabilities * torch.log(probabilities + 1e-12)).sum(-1)


class TIM(FewShotHead):
    """TIM (Boudiaf et al., NeurIPS 2020): prototypes fine-tuned per episode to maximise the mutual
    information between queries and their predicted labels, plus support cross-entropy. Transductive.
    """

    name = "tim"
    transductive = True
    options = {
        "steps": Option(int, "fine-tuning steps", low=1),
        "lr": Option(float, "their learning rate", low=0, low_open=True),
        "cross_entropy_weight": Option(float, "weight of the support cross-entropy", low=0),
        "marginal_entropy_weight": Option(float, "weight of the label-marginal entropy term", low=0),
        "conditional_entropy_weight": Option(float, "weight of the queries' conditional entropy term", low=0),
        "temperature": Option(float, "logit scale of the cosines", low=0, low_open=True),
    }

    def __init__(
        self,
        fusion: Fusion,
        steps: int = 50,
        lr: float = 1e-4,
        cross_entropy_weight: float = 1.0,
        marginal_entropy_weight: float = 1.0,
        conditional_entropy_weight: float = 0.1,
        temperature: float = 10.0,
    ):
        super().__init__(fusion)
        self.steps, self.lr, self.temperature = int(steps), lr, temperature
        self.weights = (cross_entropy_weight, marginal_entropy_weight, conditional_entropy_weight)

    def classify(self, support, support_labels, query, n_way, class_text=None):
        support, query = support.detach(), query.detach()
        prototypes = mean_prototypes(support, support_labels, n_way).requires_grad_()
        one_hot = F.one_hot(support_labels, n_way).to(support.dtype)
        optimizer = torch.optim.Adam([prototypes], lr=self.lr)
        ce_weight, marginal_weight, conditional_weight = self.weights
        with torch.enable_grad():
            for _ in range(self.steps):
                support_log_probs = (self.temperature * cosine(support, prototypes)).log_softmax(-1)
                query_probs = (self.temperature * cosine(query, prototypes)).softmax(-1)  # [E, Q, N]
                cross_entropy = -(one_hot * support_log_probs).sum(-1).mean(-1)  # [E]
                mutual_information = marginal_weight * entropy(query_probs.mean(1)) - conditional_weight * entropy(
                    query_probs
                ).mean(-1)
                loss = (ce_weight * cross_entropy - mutual_information).sum()  # episodes independent
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return self.temperature * cosine(query, prototypes.detach())  # [E, Q, N]
