"""The head contract: batched over episodes, no state kept between calls.

support [E, N*K, D] with labels [E, N*K] in 0..N-1, query [E, Q, D] -> logits [E, Q, N].
"""

from __future__ import annotations

import torch
from torch import nn


class FewShotHead(nn.Module):
    """Base of every head. A head with meta-parameters registers them as ordinary parameters."""

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                n_way: int) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def prototypes(support: torch.Tensor, support_labels: torch.Tensor, n_way: int) -> torch.Tensor:
        """Mean support feature per class: [E, N*K, D] -> [E, N, D]."""
        one_hot = nn.functional.one_hot(support_labels, n_way).to(support.dtype)  # [E, N*K, N]
        return one_hot.transpose(1, 2) @ support / one_hot.sum(dim=1).unsqueeze(-1)
