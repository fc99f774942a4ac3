"""PT-MAP (Hu, Gripon & Pateux, ICANN 2021: "Leveraging the Feature Distribution in Transfer-based
Few-Shot Learning"). Transductive: it reads every query of an episode.

A power transform (ReLU, then x^0.5) makes the features closer to Gaussian; queries are softly
assigned to the prototypes by optimal transport (Sinkhorn, each class receiving an equal share of the
queries), and the prototypes move towards the mean of the support and the softly assigned queries,
for a few steps. Sinkhorn runs in the log domain (exp(-λ d²) underflows at these distances); with
`normalize: false` this is easyfsl's PTMAP; `normalize: true` L2-normalises after the transform, as
the paper's code does."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fsl.methods.base import FewShotHead
from fsl.methods.fusion import Fusion
from fsl.methods.utils import Option, mean_prototypes, squared_distances


class PTMAP(FewShotHead):
    """PT-MAP (Hu, Gripon & Pateux, ICANN 2021): power-transformed features, then class centres
    refined by Sinkhorn-balanced soft assignments of the queries. Transductive.
    """

    name = "pt_map"
    transductive = True
    options = {
        "steps": Option(int, "centre updates", low=1),
        "lr": Option(float, "step size of each centre update", low=0, low_open=True),
        "regularization": Option(float, "entropic sharpness of the Sinkhorn assignments", low=0, low_open=True),
        "power": Option(float, "exponent of the power transform", low=0, low_open=True),
        "normalize": Option(bool, "L2-normalise the features after the transform"),
        "sinkhorn_steps": Option(int, "Sinkhorn iterations at most", low=1),
        "tolerance": Option(float, "Sinkhorn's stopping tolerance", low=0, low_open=True),
    }

    def __init__(
        self,
        fusion: Fusion,
        steps: int = 10,
        lr: float = 0.2,
        regularization: float = 10.0,
        power: float = 0.5,
        normalize: bool = False,
        sinkhorn_steps: int = 1000,
        tolerance: float = 1e-6,
    ):
        super().__init__(fusion)
        self.steps, self.lr, self.regularization, self.power = steps, lr, regularization, power
        self.normalize, self.sinkhorn_steps, self.tolerance = normalize, sinkhorn_steps, tolerance

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        transformed = (self.fusion(features).relu() + 1e-6).pow(self.power)
        return F.normalize(transformed, dim=-1) if self.normalize else transformed

    def assignments(self, query: torch.Tensor, prototypes: torch.Tensor, block: int = 50) -> torch.Tensor:
        """[E, Q, N] log transport plan: rows sum to 1, every class receives Q / N queries.

        Stabilised Sinkhorn (Schmitzer 2019): the plan is exp(cost + f + g) with log-domain potentials
        f (rows), g (columns); within a block of iterations the updates are plain scalings u, v of the
        kernel exp(cost + f + g) (two small matrix-vector products each), then absorbed into f and g,
        and each block opens with one exact log-domain step, so nothing under- or overflows. The
        iterates are those of the plain algorithm; it stops once every row sum is within `tolerance` of 1."""
        cost = -self.regularization * squared_distances(query, prototypes).clamp_min(0)  # [E, Q, N]
        share = math.log(query.shape[1] / prototypes.shape[1])
        rows = -cost.logsumexp((1, 2), keepdim=True).expand(-1, cost.shape[1], 1)  # the plan starts with total 1
        columns = torch.zeros_like(cost[:, :1])
        done = 0
        while done < self.sinkhorn_steps:
            updated = -(cost + columns).logsumexp(2, keepdim=True)  # an exact log-domain row step
            converged = ((rows - updated).exp() - 1).abs().max() < self.tolerance
            rows = updated
            columns = share - (cost + rows).logsumexp(1, keepdim=True)
            done += 1
            if converged:
                break
            kernel = (cost + rows + columns).exp()  # rows sum to ~1, columns to Q/N
            u, v = torch.ones_like(rows), torch.ones_like(columns)
            for _ in range(min(block, self.sinkhorn_steps - done)):
                row_sums = u * (kernel @ v.transpose(1, 2))  # [E, Q, 1]
                converged = (row_sums - 1).abs().max() < self.tolerance
                u = u / row_sums
                v = math.exp(share) / (u.transpose(1, 2) @ kernel)  # [E, 1, N]
                done += 1
                if converged:
                    break
            rows, columns = rows + u.log(), columns + v.log()
            if converged:
                break
        return cost + rows + columns

    def classify(self, support, support_labels, query, n_way, class_text=None):
        support, query = support.double(), query.double()
        prototypes = mean_prototypes(support, support_labels, n_way)
        support_assignments = F.one_hot(support_labels, n_way).to(support.dtype)
        features = torch.cat([support, query], 1)
        for _ in range(self.steps):
            weights = torch.cat([support_assignments, self.assignments(query, prototypes).exp()], 1)  # [E, M+Q, N]
            updated = weights.transpose(1, 2) @ features / weights.sum(1).unsqueeze(-1)
            prototypes = prototypes + self.lr * (updated - prototypes)
        return self.assignments(query, prototypes).float()  # log soft assignments as logits
