"""Embedding pipeline speed: `embed_catalog` (decode in DataLoader workers, encode, chunked atomic
writes, two text variants) next to the bare encoder forward on the same, already decoded photos,
and the time of a second run on the warm store.

    python benchmarks/embed_speed.py [--data DIR] [--products 512] [--encoder offline]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import torch

from fsl.catalog import load_catalog
from fsl.encoder import ImageFiles, create_encoder
from fsl.features import embed_catalog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data")
    parser.add_argument("--products", type=int, default=512)
    parser.add_argument("--encoder", default="offline")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    full = load_catalog(args.data)
    catalog = dataclasses.replace(full, products=full.products.head(args.products).reset_index(drop=True))
    encoder = create_encoder(args.encoder)
    print(f"{len(catalog)} real products, encoder {encoder.id}, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}")

    pixels = [torch.stack([ImageFiles(catalog.image_paths, encoder.image_transform)[i]
                           for i in range(start, min(start + args.batch_size, len(catalog)))])
              for start in range(0, len(catalog), args.batch_size)]
    started = time.perf_counter()
    for batch in pixels:
        encoder.embed_pixels(batch)
    bare = len(catalog) / (time.perf_counter() - started)

    with tempfile.TemporaryDirectory() as root:
        started = time.perf_counter()
        embed_catalog(catalog, encoder, root, batch_size=args.batch_size, progress=False)
        pipeline = len(catalog) / (time.perf_counter() - started)
        started = time.perf_counter()
        embed_catalog(catalog, encoder, root, batch_size=args.batch_size, progress=False)
        warm = time.perf_counter() - started

    print(f"\n{'work':58s} {'products/s':>10s} {'ratio':>6s}")
    print(f"{'bare image forward (photos decoded beforehand)':58s} {bare:10.1f} {1.0:6.2f}")
    print(f"{'fsl embed pipeline (decode + images + 2 text variants)':58s} {pipeline:10.1f} {pipeline / bare:6.2f}")
    print(f"\nwarm store, second run: {warm:.3f} s for {len(catalog)} products (no encoding)")


if __name__ == "__main__":
    main()
