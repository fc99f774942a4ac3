"""`fsl quickstart`: the main job in one command, on the real dump or on the synthetic sample."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fsl.config import EncoderConfig, load_config
from fsl.data.catalog import resolve_data_dir
from fsl.data.prepared import load_catalog
from fsl.data.sample import SAMPLE_NOTICE, make_sample_catalog
from fsl.episodes.standard import draw_standard_episodes, near_duplicates_for
from fsl.errors import FslError
from fsl.harness.experiment import run_experiment
from fsl.harness.results import (
    format_table,
    log_to_tensorboard,
    plot_summary,
    results_frame,
    save_results,
    summary_table,
)
from fsl.paths import PREPARE_REPORT, SAMPLE_DIR, SAMPLE_EPISODES_DIR, Workspace, episodes_dir_for

QUICKSTART_CONFIGS = ("protonet-image.yaml", "protonet-text-masked.yaml", "protonet-fused-masked.yaml")


def _banner(text: str) -> None:
    print("\n" + "!" * 100 + f"\n{text}\n" + "!" * 100 + "\n")


def quickstart(
    data: str | None = None,
    encoder: str = "offline",
    experiments: Path = Path("experiments"),
    workspace: Workspace = Workspace(),
) -> None:
    """Prepare, embed, draw episodes and evaluate three heads on the dump, else on the synthetic sample
    (its episodes apart, in the cache), logging each to TensorBoard under runs/eval as `fsl eval` does;
    results go to results/quickstart, a synthetic run's to results/quickstart-synthetic, never over a
    real run's results."""
    try:
        root, sample = resolve_data_dir(data), False
    except FslError as missing:
        if data:
            raise
        print(f"{missing}\nFalling back to the embedded sample catalog.")
        root, sample = make_sample_catalog(SAMPLE_DIR), True
        _banner(SAMPLE_NOTICE)
    catalog = load_catalog(root)
    print(catalog.summary())
    print(f"report of skipped and repaired rows: {catalog.save_report(PREPARE_REPORT)}")

    if sample:
        workspace = dataclasses.replace(workspace, episodes=SAMPLE_EPISODES_DIR)
    episodes_root = workspace.episodes
    if not episodes_dir_for(catalog, episodes_root).is_dir():
        draw_standard_episodes(
            catalog,
            episodes_root,
            stratify=None if sample else "masterCategory",
            n_episodes=200 if sample else 600,
            near_duplicates=near_duplicates_for(catalog, episodes_root, EncoderConfig(encoder)),
        )
    available = {p.stem.split("-", 1)[1] for p in episodes_dir_for(catalog, episodes_root).glob("*.npz")}

    results = []
    for name in QUICKSTART_CONFIGS:
        config = load_config(experiments / name)
        config = dataclasses.replace(
            config, encoder=EncoderConfig(encoder), episodes=tuple(e for e in config.episodes if e in available)
        )
        results += run_experiment(config, catalog, workspace)
    summary = summary_table(results_frame(results))
    print(format_table(summary))
    out = workspace.results / ("quickstart-synthetic" if sample else "quickstart")
    runs = workspace.runs_of("eval")
    save_results(results, out / "results.csv")
    for result in results:  # what `fsl eval` logs, so the TensorBoard line below has something to show
        log_to_tensorboard(result, runs)
    print(
        f"per-episode results: {out / 'results.csv'}; plot: {plot_summary(summary, out / 'accuracy.png')}; "
        f"TensorBoard scalars and hparams: {runs}"
    )
    if sample:
        _banner(SAMPLE_NOTICE)
    print(what_next(data_flag="" if not data else f" --data {data}"))


def what_next(data_flag: str = "") -> str:
    """The closing lines: the commands a new user runs next, in the order they make sense."""
    fsl = ".venv/bin/fsl"
    return "\n".join(
        [
            "What next (each command: --help):",
            f"  {fsl} eval experiments/*.yaml{data_flag}          every head on the frozen episodes (mean ± 95% CI)",
            f"  {fsl} train experiments/protonet-meta-fused-masked.yaml{data_flag}   meta-train a head",
            f"  {fsl} demo{data_flag}                             teach new categories in the browser (127.0.0.1:7860)",
            "  .venv/bin/tensorboard --logdir runs --host 127.0.0.1   curves and the hparams view",
        ]
    )
