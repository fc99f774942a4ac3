"""Episodes per second of the fitted heads, side by side in one process on the same frozen
episodes (offline encoder, image + masked text, novel 5-way 5-shot):

- linear probe, batched over episodes in torch (Newton, dual form) vs scikit-learn's
  LogisticRegression fitted per episode (same objective, same C), with both accuracies and their paired difference;
- MAML head, 10 inner steps, at evaluation (adaptation only) and one meta-training step.

    python benchmarks/heads_speed.py [--data DIR] [--episodes 200]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F

from fsl.catalog import load_catalog
from fsl.config import EncoderConfig
from fsl.episodes import EpisodeSet
from fsl.evaluate import paired_difference, run_episodes, store_rows
from fsl.fusion import create_fusion, store_features
from fsl.methods import create_head
from fsl.pipeline import episodes_dir_for, open_store


def sklearn_probe(features: np.ndarray, ids: np.ndarray, episode_set: EpisodeSet, C: float) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    episodes = episode_set.episodes
    accuracy = []
    for support, query in zip(store_rows(ids, episodes.support), store_rows(ids, episodes.query)):
        model = LogisticRegression(C=C, max_iter=1000).fit(features[support], episodes.support_labels)
        accuracy.append((model.predict(features[query]) == episodes.query_labels).mean())
    return np.array(accuracy)


def timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data")
    parser.add_argument("--episodes", type=int, default=200)
    args = parser.parse_args()

    catalog = load_catalog(args.data)
    store = open_store(catalog, EncoderConfig("offline"))
    full_set = EpisodeSet.load(episodes_dir_for(catalog) / "articleType-novel-5w5s.npz", catalog.fingerprint)
    episodes = dataclasses.replace(full_set.episodes, support=full_set.episodes.support[: args.episodes],
                                   query=full_set.episodes.query[: args.episodes])
    episode_set = EpisodeSet(full_set.name, episodes, full_set.meta)
    features = np.ascontiguousarray(store_features(store, "masked-articleType"))
    image_dim, text_dim = store.manifest["image_dim"], store.manifest["text_dim"]
    flat = create_fusion("concat", image_dim, text_dim, image_weight=0.7)(torch.from_numpy(features)).numpy()
    print(f"{len(episodes)} novel 5-way 5-shot 15-query episodes, {flat.shape[1]}-d fused features "
          f"(offline encoder, masked text), torch threads {torch.get_num_threads()}")

    probe = create_head("linear_probe", create_fusion("image", flat.shape[1], 0), C=1.0)
    ours, ours_s = timed(lambda: run_episodes(probe, flat, store.ids, episode_set, batch_size=50, progress=False))
    theirs, theirs_s = timed(lambda: sklearn_probe(flat, store.ids, episode_set, C=1.0))
    difference, ci = paired_difference(ours, theirs)

    maml = create_head("maml", create_fusion("image", flat.shape[1], 0), inner_steps=10, inner_lr=0.5)
    _, maml_eval_s = timed(lambda: run_episodes(maml, flat, store.ids, episode_set, batch_size=50, progress=False))
    rows = torch.from_numpy(store_rows(store.ids, episodes.support[:16])), torch.from_numpy(
        store_rows(store.ids, episodes.query[:16]))
    tensor = torch.from_numpy(flat)
    labels = torch.as_tensor(episodes.support_labels).expand(16, -1)
    query_labels = torch.as_tensor(episodes.query_labels).repeat(16)

    def meta_step():
        loss = F.cross_entropy(maml(tensor[rows[0]], labels, tensor[rows[1]], 5).flatten(0, 1), query_labels)
        loss.backward()

    _, meta_s = timed(meta_step)

    n = len(episodes)
    print(f"\n{'work':58s} {'episodes/s':>10s} {'accuracy':>9s}")
    print(f"{'fsl linear probe (torch Newton in the dual, batch 50)':58s} {n / ours_s:10.1f} {ours.mean():9.4f}")
    print(f"{'scikit-learn LogisticRegression, one fit per episode':58s} {n / theirs_s:10.1f} {theirs.mean():9.4f}")
    print(f"{'fsl MAML head, 10 inner steps, evaluation':58s} {n / maml_eval_s:10.1f}")
    print(f"{'fsl MAML head, 10 inner steps, meta-training (2nd order)':58s} {16 / meta_s:10.1f}")
    print(f"\nlinear probe: ours / scikit-learn speed {theirs_s / ours_s:.1f}x (target >= 10x); "
          f"paired accuracy difference {difference:+.4f} ± {ci:.4f} (95% CI)")


if __name__ == "__main__":
    main()
