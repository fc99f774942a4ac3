"""Why meta-training moves MAML's fusion gate to image only: accuracy of the never-trained MAML head
(the config's inner loop, the classifier's shared start, inert on frozen features) at fixed image
weights, on fresh base-class episodes (what the outer loop optimises) and on the frozen validation
episodes (what selects a checkpoint). Novel classes are not read. Offline encoder, image + masked text.

    python benchmarks/maml_gate.py [--data DIR] [--episodes 300] [--split 0]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fsl.config import load_config
from fsl.data.prepared import load_catalog
from fsl.episodes.frozen import draw_episode_set
from fsl.episodes.splits import ClassSplit
from fsl.episodes.standard import MIN_COUNT, load_episode_set, saved_near_duplicates
from fsl.errors import FslError
from fsl.files import read_csv
from fsl.harness.evaluate import episode_logits, mean_ci, percent
from fsl.inference.heads import build_head, experiment_head
from fsl.paths import Workspace, episodes_dir_for
from fsl.store.rows import store_rows

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
CONFIG = EXPERIMENTS / "maml-untrained-fused-masked.yaml"
TRAINED = EXPERIMENTS / "maml-fused-masked.yaml"
WEIGHTS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--split", type=int, default=0)
    args = parser.parse_args()
    catalog = load_catalog(args.data)
    config = load_config(CONFIG)
    root = Workspace().episodes_of(args.split)
    folder = episodes_dir_for(catalog, root)
    store, features, _ = experiment_head(config, catalog, Workspace(), args.split)
    near_duplicates = saved_near_duplicates(catalog, root)
    split = ClassSplit(
        config.label_column,
        args.split,
        MIN_COUNT,
        read_csv(folder / f"{config.label_column}-seed{args.split}-split.csv"),
    )
    base = draw_episode_set(
        "base-5w5s",
        catalog.products["id"].to_numpy(),
        catalog.labels(config.label_column),
        split,
        "base",
        catalog.fingerprint,
        5,
        5,
        15,
        args.episodes,
        seed=12345,
        near_duplicates=near_duplicates,
    )
    val = load_episode_set(config, catalog, "val-5w5s", root)
    print(f"MAML, never trained ({config.method_options}), split {args.split}: accuracy by fixed image weight")
    print(
        f"{'image weight':>12}  {'base-5w5s accuracy':>19}  {'base query loss (outer)':>24}  "
        f"{'val-5w5s accuracy':>18}  {'val query loss':>15}"
    )
    for weight in WEIGHTS:
        fixed = dataclasses.replace(config, fusion="concat", fusion_options={"image_weight": weight})
        head = build_head(fixed, store)
        cells = []
        for episode_set in (base, val):
            episodes = episode_set.episodes
            logits = torch.cat(
                [chunk for _, _, chunk in episode_logits(head, features, store.ids, episodes, progress=False)]
            )
            targets = torch.as_tensor(episodes.query_labels).repeat(len(episodes))
            accuracy = (logits.argmax(-1) == torch.as_tensor(episodes.query_labels)).double().mean(-1).numpy()
            cells += [percent(*mean_ci(accuracy)), f"{F.cross_entropy(logits.flatten(0, 1), targets).item():.4f}"]
        print(f"{weight:>12}  {cells[0]:>19}  {cells[1]:>24}  {cells[2]:>18}  {cells[3]:>15}")
    try:
        _, _, trained = experiment_head(load_config(TRAINED), catalog, Workspace(), args.split)
    except FslError as error:
        raise SystemExit(f"the trained gate: {error} (run `fsl train {TRAINED.name}`)") from None
    for name, episode_set in (("base-5w5s", base), ("val-5w5s", val)):
        rows = np.unique(store_rows(store.ids, episode_set.episodes.query))
        with torch.no_grad():
            gate = torch.sigmoid(trained.fusion.gate(torch.from_numpy(np.asarray(features[rows], dtype=np.float32))))
        print(
            f"trained maml-fused-masked (split {args.split}): image weight on {name} queries "
            f"{gate.mean():.4f} (min {gate.min():.4f}, max {gate.max():.4f})"
        )
