"""`fsl prepare`, `fsl embed`, `fsl download`, `fsl episodes`: from a dump to frozen episode sets."""

from __future__ import annotations

import argparse
import os
import time

from fsl.cli.common import (
    add_data_option,
    add_encoder_options,
    encoder_config,
    env_int,
    near_duplicate_threshold,
    non_negative_int,
    positive_int,
)
from fsl.config import NEAR_DUPLICATE_THRESHOLD
from fsl.paths import DEFAULT_EPISODES_DIR, PREPARE_REPORT


def cmd_prepare(args) -> None:
    from fsl.data.prepared import load_catalog
    from fsl.paths import prepared_path

    catalog = load_catalog(args.data, refresh=True)
    report = catalog.save_report(args.report)
    print(catalog.summary())
    print(
        f"catalog fingerprint {catalog.fingerprint}; {len(catalog.report)} rows reported in {report}; "
        f"prepared catalog {prepared_path(catalog.root)} (later commands open it: a stat per photo)"
    )


def cmd_embed(args) -> None:
    import dataclasses

    from fsl.data.catalog import DEFAULT_TEXT_TEMPLATE
    from fsl.data.prepared import load_catalog
    from fsl.encoders.factory import encoder_from_config
    from fsl.paths import store_path
    from fsl.store.embed import embed_catalog
    from fsl.store.features import TextVariant
    from fsl.store.manifest import is_complete

    rank, world_size = env_int("RANK", 0), env_int("WORLD_SIZE", 1)  # set by torchrun
    catalog = load_catalog(args.data)
    if rank == 0:
        print(catalog.summary())
    variants = [TextVariant(args.text_template or DEFAULT_TEXT_TEMPLATE, None)]
    variants += [TextVariant(args.text_template or DEFAULT_TEXT_TEMPLATE, column) for column in args.mask_labels]
    config = encoder_config(args)
    if world_size > 1 and config.device.startswith("cuda"):
        config = dataclasses.replace(config, device=f"cuda:{env_int('LOCAL_RANK', 0)}")  # one GPU per rank
    encoder = encoder_from_config(config)
    warm = is_complete(store_path(args.store_root, encoder.id, catalog.fingerprint))
    if config.name in ("aligned", "adapted"):  # computed from the offline store: no photo decoded twice
        from fsl.store.open import open_store

        started = time.perf_counter()
        store = open_store(catalog, config, args.store_root, full_check=args.verify)
        state = "warm" + (", every byte and value checked" if args.verify else "")
        print(
            f"{len(store.ids)} products in the {config.name} store {store.encoder_id} "
            f"({state if warm else f'derived in {time.perf_counter() - started:.1f} s'}): {store.path}"
        )
        return
    options = dict(
        chunk_size=args.chunk_size, batch_size=args.batch_size, num_workers=args.workers, full_check=args.verify
    )
    started = time.perf_counter()
    if world_size == 1:
        store = embed_catalog(catalog, encoder, args.store_root, variants, **options)
    else:
        store = _embed_under_torchrun(
            catalog, encoder, args.store_root, variants, rank, world_size, config.device, options
        )
    seconds = time.perf_counter() - started
    if store is None:
        print(f"rank {rank} of {world_size}: its chunks are written; rank 0 joined the store")
        return
    if warm and not args.verify:
        print(
            f"the feature store is warm: {len(store.ids)} products by {store.encoder_id} (checked in "
            f"{seconds:.1f} s, nothing to embed): {store.path}"
        )
        return
    print(
        f"{len(store.ids)} products embedded by {store.encoder_id} in {seconds:.1f} s "
        f"({len(store.ids) / seconds:.1f} products/s{f', {world_size} ranks' if world_size > 1 else ''}): {store.path}"
    )


def _embed_under_torchrun(catalog, encoder, root, variants, rank: int, world_size: int, device: str, options: dict):
    """Ranks embed chunks i ≡ rank (mod world size), meet at a barrier, rank 0 joins the store, and all
    meet again: torchrun is the scheduler (gloo on CPUs, NCCL on GPUs). Multi-node needs the store
    root on a file system every node sees."""
    import datetime

    import torch.distributed as dist

    from fsl.store.embed import embed_catalog

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


def cmd_download(args) -> None:
    from fsl.data.download import download

    print(f"dataset at {download(args.dest)}")


def cmd_episodes(args) -> None:
    from fsl.data.prepared import load_catalog
    from fsl.episodes.standard import draw_standard_episodes, near_duplicates_for
    from fsl.harness.results import format_table
    from fsl.paths import split_root

    catalog = load_catalog(args.data)
    groups = None
    if args.near_duplicates != "none":
        threshold = float(args.near_duplicates)
        groups = near_duplicates_for(catalog, args.out, encoder_config(args), threshold, args.store_root)
    else:
        print("no near-duplicate grouping (--near-duplicates none): a query may be a twin of a support photo")
    for seed in args.split_seeds or [args.seed]:
        split, written = draw_standard_episodes(
            catalog,
            split_root(args.out, seed),
            args.column,
            seed,
            args.episodes,
            args.queries,
            None if args.stratify == "none" else args.stratify,
            force=args.force,
            near_duplicates=groups,
        )
        print(format_table(split.table))
        print(f"split {seed}: {', '.join(f'{s} {len(split.classes(s))} classes' for s in ('base', 'val', 'novel'))}")
        for path in written:
            print(f"wrote {path}")


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Register the data commands on `fsl`'s sub-parsers."""
    prepare = commands.add_parser(
        "prepare",
        help="clean a dump; report bad rows and missing images",
        description="Read styles.csv and images/, repair rows with unquoted "
        "commas, skip unusable rows and photos, and report each one; "
        "write the prepared catalog that later commands open quickly.",
    )
    add_data_option(prepare)
    prepare.add_argument(
        "--report",
        default=str(PREPARE_REPORT),
        metavar="CSV",
        help=f"where the per-row report goes (default {PREPARE_REPORT})",
    )
    prepare.set_defaults(run=cmd_prepare)

    embed = commands.add_parser(
        "embed",
        help="embed every product once into a feature store",
        description="Encode every photo and text of the catalog with a frozen "
        "encoder. Resumable; a warm store is reused. Under torchrun "
        "(torchrun --nproc_per_node N -m fsl.cli embed ...), rank r does "
        "chunks r, r+W, ..., then rank 0 joins them after a barrier.",
    )
    add_data_option(embed)
    add_encoder_options(embed)
    embed.add_argument(
        "--text-template",
        help="Python format string over metadata fields "
        "(default '{productDisplayName} ({gender}, {baseColour}, {usage})')",
    )
    embed.add_argument(
        "--mask-labels",
        nargs="*",
        default=["articleType"],
        metavar="COLUMN",
        help="also embed the text with the label words of these columns masked "
        "(default articleType; the flag alone, with no column, embeds plain text only)",
    )
    embed.add_argument(
        "--chunk-size", type=positive_int, default=512, help="products per resumable chunk (default 512)"
    )
    embed.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    embed.add_argument("--workers", type=non_negative_int, help="image decoding workers (default cores - 1)")
    embed.add_argument(
        "--verify",
        action="store_true",
        help="check every byte and value of a warm store (and of the activations an adapted store comes from) "
        "against its sha256 checksums and for NaN; rebuilt if damaged",
    )
    embed.set_defaults(run=cmd_embed)

    download = commands.add_parser(
        "download",
        help="fetch the Kaggle dump (needs internet)",
        description="Fetch paramaggarwal/fashion-product-images-small with "
        "kagglehub and put it where --data expects it.",
    )
    download.add_argument(
        "--dest",
        default=os.environ.get("FSL_DATA", "data/fashion-product-images"),
        help="target folder (default $FSL_DATA or data/fashion-product-images)",
    )
    download.set_defaults(run=cmd_download)

    episodes = commands.add_parser(
        "episodes",
        help="split classes and freeze the standard episode sets",
        description="Split the label column's classes (with >= 20 examples) into "
        "disjoint base/val/novel sets and write one frozen episode file "
        "per benchmark under OUT/<catalog fingerprint>/.",
    )
    add_data_option(episodes)
    episodes.add_argument("--column", default="articleType", help="label column to classify (default articleType)")
    episodes.add_argument(
        "--stratify",
        default="masterCategory",
        help="parent column every split must see, or 'none' (default masterCategory)",
    )
    episodes.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the split and the draws (default 0)"
    )
    episodes.add_argument(
        "--split-seeds",
        type=non_negative_int,
        nargs="+",
        metavar="SEED",
        help="draw several class splits (same fractions and stratification), split s under "
        "OUT/split<s>/ (split 0 at OUT itself); `fsl eval` and `fsl train` then run every one",
    )
    episodes.add_argument("--episodes", type=positive_int, default=600, help="episodes per benchmark (default 600)")
    episodes.add_argument("--queries", type=positive_int, default=15, help="queries per class (default 15)")
    episodes.add_argument(
        "--out", default=str(DEFAULT_EPISODES_DIR), help="root folder of episode sets (default episodes/)"
    )
    episodes.add_argument(
        "--force",
        action="store_true",
        help="replace frozen episode files that exist with other content (they are test sets)",
    )
    episodes.add_argument(
        "--near-duplicates",
        type=near_duplicate_threshold,
        default=str(NEAR_DUPLICATE_THRESHOLD),
        metavar="COSINE|none",
        help="photos whose image features (of --encoder's store, embedded if cold) reach this "
        f"cosine are one group, never split between support and queries (default "
        f"{NEAR_DUPLICATE_THRESHOLD}; 'none': no grouping)",
    )
    add_encoder_options(episodes)
    episodes.set_defaults(run=cmd_episodes)
