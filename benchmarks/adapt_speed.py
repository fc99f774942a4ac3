"""What cached activations buy `fsl adapt`: training steps per second of the image tower's top (the last
MBConv block and the head convolution, cut 1) from the activations cached beside the offline store,
next to the same step run the way a notebook runs it (decode the episode's photos, run the whole tower,
backpropagate into the top), side by side in one run on the real catalog; then the wall time of one
`fsl adapt` run on split 0, as users run it (the command, from a warm activation cache). Offline encoder.
Then the CLIP path beside it: the tokens of both towers of a CLIP model cached at the cut (the tiny
random-weight FSL-Tiny by default: no pretrained CLIP weights can be had offline), and a 200-step
`fsl adapt experiments/adapt/clip-lora.yaml` run (LoRA on both towers) from them.
Targets (issue 23): cached at least 10x the whole-tower steps per second; one run under 10 minutes on
this 2-core CPU (offline and CLIP). MISSED is printed beside a missed target.

    python benchmarks/adapt_speed.py [--data DIR] [--steps 10] [--recipe experiments/adapt/episodic.yaml] [--no-run]
        [--clip-model FSL-Tiny --clip-pretrained none --clip-steps 200]
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fsl.config import EncoderConfig, load_adapt_config, override, parse_assignment
from fsl.data.prepared import load_catalog
from fsl.encoders.adapted import ImageTop, image_bottom
from fsl.encoders.offline import OfflineEncoder
from fsl.episodes.splits import ClassSplit
from fsl.harness.adapt import BaseBatches, frozen_encoder, prototypical_loss, tower_cuts
from fsl.paths import DEFAULT_EPISODES_DIR
from fsl.store.activations import cached_activations, cached_tower
from fsl.store.open import open_store

FSL = str(Path(sys.executable).with_name("fsl"))
SPEEDUP_TARGET, RUN_TARGET_S = 10.0, 600.0
CLIP_RECIPE = "experiments/adapt/clip-lora.yaml"


def steps_per_second(step, n: int) -> float:
    step()  # warm-up
    started = time.perf_counter()
    for _ in range(n):
        step()
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (default 10)")
    parser.add_argument("--recipe", default="experiments/adapt/episodic.yaml")
    parser.add_argument("--no-run", action="store_true", help="skip the timed `fsl adapt` run")
    parser.add_argument("--clip-model", default="FSL-Tiny", help="the CLIP model of the CLIP-LoRA run")
    parser.add_argument("--clip-pretrained", default="none", help="its weights (default none: random)")
    parser.add_argument("--clip-steps", type=int, default=200, help="steps of the CLIP-LoRA run (0: skip it)")
    args = parser.parse_args()
    torch.set_num_threads(2)

    recipe = load_adapt_config(args.recipe)
    catalog = load_catalog(args.data)
    open_store(catalog, EncoderConfig("offline"))
    encoder = OfflineEncoder()
    activations = cached_activations(catalog, encoder, recipe.cut)
    base = ClassSplit.load(catalog, recipe.label_column, 0, DEFAULT_EPISODES_DIR).classes("base")
    batches = BaseBatches(catalog, recipe, base, DEFAULT_EPISODES_DIR)
    top = ImageTop(copy.deepcopy(encoder.image_model), recipe.cut).requires_grad_(True)
    optimizer = torch.optim.AdamW(top.parameters(), lr=recipe.lr)
    paths = catalog.image_paths

    def train_on(maps: torch.Tensor, episode) -> None:
        features = top(maps)
        n_support = episode.support.shape[1]
        loss = prototypical_loss(features[:n_support], features[n_support:], episode.n_way, torch.tensor(10.0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def rows_of(episode) -> np.ndarray:
        return np.concatenate([episode.support[0], episode.query[0]])

    def cached_step() -> None:
        episode = batches.episode()
        train_on(torch.from_numpy(np.asarray(activations[rows_of(episode)], dtype=np.float32)), episode)

    def whole_tower_step() -> None:
        episode = batches.episode()
        rows = rows_of(episode)
        pixels = next(iter(encoder.image_batches([paths[r] for r in rows], len(rows), 0)))
        with torch.no_grad():
            maps = image_bottom(encoder.image_model, pixels, recipe.cut)
        train_on(maps, episode)

    per_step = recipe.n_way * (recipe.k_shot + recipe.q_query)
    cached = steps_per_second(cached_step, args.steps)
    whole = steps_per_second(whole_tower_step, max(2, args.steps // 5))
    ratio = cached / whole
    print(f"\n{recipe.n_way}-way {recipe.k_shot}-shot {recipe.q_query}-query base episodes ({per_step} photos a step), "
          f"cut {recipe.cut}, offline encoder, 2 threads")  # fmt: skip
    print("| variant | steps/s | photos/s |")
    print("|---|---|---|")
    print(f"| cached activations (fsl adapt) | {cached:.2f} | {cached * per_step:.0f} |")
    print(f"| decode + whole tower per step | {whole:.2f} | {whole * per_step:.0f} |")
    print(f"\ncached / whole tower: {ratio:.1f}x (target >= {SPEEDUP_TARGET:.0f}x)"
          + ("" if ratio >= SPEEDUP_TARGET else "  MISSED"))  # fmt: skip
    if not args.no_run:
        timed_run(args, args.recipe, [], recipe)
    if args.clip_steps:
        clip_run(args, catalog)


def timed_run(args, recipe_file: str, assignments: list[str], recipe) -> None:
    """One `fsl adapt` run on split 0 as users run it, timed from warm caches."""
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        done = subprocess.run(
            [FSL, "adapt", recipe_file, "--split-seeds", "0", "--out", f"{out}/adapt", "--runs", f"{out}/runs"]
            + [flag for text in assignments for flag in ("--set", text)]
            + (["--data", args.data] if args.data else []),
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"fsl adapt failed:\n{done.stderr}")
    print(done.stdout.strip().splitlines()[-1])
    missed = "" if seconds < RUN_TARGET_S else "  MISSED"
    print(f"one `fsl adapt {recipe_file}{''.join(' --set ' + a for a in assignments)}` run on split 0 "
          f"({recipe.steps} steps, validation every {recipe.val_every}): {seconds:.0f} s "
          f"(target < {RUN_TARGET_S:.0f} s){missed}")  # fmt: skip


def clip_run(args, catalog) -> None:
    """The CLIP path: its store and both towers' tokens cached (timed once), then the CLIP-LoRA run."""
    assignments = [f"encoder.model={args.clip_model}", f"encoder.pretrained={args.clip_pretrained}",
                   f"steps={args.clip_steps}"]  # fmt: skip
    recipe = override(load_adapt_config(CLIP_RECIPE), [parse_assignment(a) for a in assignments])
    started = time.perf_counter()
    store = open_store(catalog, recipe.encoder)
    embedded = time.perf_counter() - started
    started = time.perf_counter()
    for cut in tower_cuts(frozen_encoder(recipe), recipe, store).values():
        tokens = cached_tower(catalog, cut)
        print(f"{cut.tower} tokens at cut {cut.cut}: {tokens.shape} float16, {tokens.nbytes / 2**20:.0f} MB")
    print(f"\nCLIP path ({store.encoder_id}): the store in {embedded:.0f} s, both towers' tokens cached in "
          f"{time.perf_counter() - started:.0f} s (once per model, cut and catalog)")  # fmt: skip
    timed_run(args, CLIP_RECIPE, assignments, recipe)


if __name__ == "__main__":
    main()
