"""The evaluation harness: every head on the same frozen episodes, batched; mean and 95% CI."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from fsl.episodes.frozen import EpisodeSet
from fsl.episodes.sampler import Episodes
from fsl.errors import FslError
from fsl.methods.base import FewShotHead
from fsl.store.rows import store_rows


def mean_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its t-based confidence interval over episodes."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    half = stats.t.ppf((1 + confidence) / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


def percent(mean: float, ci: float) -> str:
    """Accuracy as people read it: 91.2 ± 0.4%."""
    return f"{100 * mean:.1f} ± {100 * ci:.1f}%"


def paired_difference(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Mean of a - b over the same episodes, with its CI: far tighter than comparing two CIs."""
    if len(a) != len(b):
        raise FslError(f"a paired comparison needs the same episodes; got {len(a)} and {len(b)}")
    return mean_ci(np.asarray(a) - np.asarray(b), confidence)


@torch.no_grad()  # not inference_mode: probes and MAML take gradients inside their forward
def episode_logits(
    head: FewShotHead,
    features: np.ndarray,
    store_ids: np.ndarray,
    episodes: Episodes,
    batch_size: int = 64,
    progress: bool = True,
    class_text: torch.Tensor | None = None,
    name: str = "episodes",
    query_features=None,
):
    """Yields (start, stop, logits [B, Q, N]) over batches of `episodes`, the head's raw scores.

    features [P, D] are the store's rows; class_text [C, Dt] embeds the set's class names, for
    heads that read them; query_features, if given, replace `features` for the queries (the
    re-rendered photos of fsl/episodes/shift.py)."""
    support_labels = torch.as_tensor(episodes.support_labels)
    # The rows the set touches, gathered and embedded (fused, projected) once into one contiguous
    # block: every batch then indexes memory instead of re-reading, re-joining and re-fusing rows.
    support_rows, query_rows = store_rows(store_ids, episodes.support), store_rows(store_ids, episodes.query)
    if query_features is None:
        touched, local = np.unique(np.concatenate([support_rows.ravel(), query_rows.ravel()]), return_inverse=True)
        block = head.embed(torch.from_numpy(np.ascontiguousarray(features[touched], dtype=np.float32)))
    else:
        touched, local_support = np.unique(support_rows, return_inverse=True)
        touched_queries, local_query = np.unique(query_rows, return_inverse=True)
        block = head.embed(
            torch.from_numpy(
                np.ascontiguousarray(
                    np.concatenate([features[touched], query_features[touched_queries]]), dtype=np.float32
                )
            )
        )
        local = np.concatenate([local_support.ravel(), local_query.ravel() + len(touched)])
    local = torch.from_numpy(local)
    support_rows = local[: episodes.support.size].view(episodes.support.shape)
    query_rows = local[episodes.support.size :].view(episodes.query.shape)
    head.eval()
    # Each batch's rows are copied into one reused pair of buffers: a fresh tensor of tens of MB per
    # batch costs more in page faults than the copy itself (docs/benchmarks.md). Heads
    # keep no state between calls, so nothing outlives the batch that filled them.
    batch = min(batch_size, len(episodes))
    support_buffer = block.new_empty(batch * support_rows.shape[1], block.shape[1])
    query_buffer = block.new_empty(batch * query_rows.shape[1], block.shape[1])
    # disable=None: a bar in a terminal, none in a log file (where tqdm would print each bar twice)
    for start in tqdm(range(0, len(episodes), batch_size), desc=name, unit="batch", disable=None if progress else True):
        stop = min(start + batch_size, len(episodes))
        support = gather(block, support_rows[start:stop], support_buffer)
        query = gather(block, query_rows[start:stop], query_buffer)
        labels = support_labels.expand(stop - start, -1)
        names = None if class_text is None else class_text[torch.as_tensor(episodes.classes[start:stop])]
        yield start, stop, head.classify(support, labels, query, episodes.n_way, names)  # [B, Q, N]


def gather(block: torch.Tensor, rows: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """block[rows] for rows [B, R], written into the front of `buffer` [>= B*R, D]: [B, R, D]."""
    count = rows.numel()
    return torch.index_select(block, 0, rows.reshape(-1), out=buffer[:count]).view(*rows.shape, block.shape[1])


def run_episodes(
    head: FewShotHead,
    features: np.ndarray,
    store_ids: np.ndarray,
    episode_set: EpisodeSet,
    batch_size: int = 64,
    progress: bool = True,
    class_text: torch.Tensor | None = None,
    predictions: np.ndarray | None = None,
    query_features=None,
) -> np.ndarray:
    """Per-episode query accuracy [E] of a head over a frozen episode set; `predictions` [E, Q], if
    given, receives each query's predicted label."""
    episodes = episode_set.episodes
    query_labels = torch.as_tensor(episodes.query_labels)
    accuracy = np.empty(len(episodes))
    for start, stop, logits in episode_logits(
        head, features, store_ids, episodes, batch_size, progress, class_text, episode_set.name, query_features
    ):
        predicted = logits.argmax(-1)
        accuracy[start:stop] = (predicted == query_labels).double().mean(-1).numpy()
        if predictions is not None:
            predictions[start:stop] = predicted.numpy()
    return accuracy


@dataclass
class EvalResult:
    """One method on one episode set: per-episode accuracy and how it was run."""

    method: str
    episode_set: str
    accuracy: np.ndarray  # [E]
    hparams: dict

    @property
    def summary(self) -> dict:
        mean, ci = mean_ci(self.accuracy)
        return {
            "method": self.method,
            "episode_set": self.episode_set,
            "accuracy": mean,
            "ci95": ci,
            "episodes": len(self.accuracy),
        }
