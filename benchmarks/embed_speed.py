"""CPU embedding speed, on the same real photos in one process: the image tower's forward in eager
PyTorch next to channels-last, bf16 autocast, torch.compile and ONNX Runtime (each with its cosine
agreement to eager; fsl adopts ONNX Runtime where it agrees to >= 0.999), the text tower in eager
sentence-transformers and in ONNX Runtime (the offline encoder), then the whole `fsl embed`
pipeline (decode in DataLoader workers, encode, two text variants, chunked atomic writes) with the
adopted runtime, and a second run on the warm store.

    python benchmarks/embed_speed.py [--data DIR] [--products 256] [--encoder offline]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from fsl.data.prepared import load_catalog
from fsl.encoders.base import ImageFiles
from fsl.encoders.factory import create_encoder
from fsl.encoders.onnx import MIN_COSINE
from fsl.paths import CACHE_DIR
from fsl.store.embed import embed_catalog

TARGET = 1.5  # the adopted path, times eager


def forward_speed(tower, pixels: list[torch.Tensor], context=contextlib.nullcontext) -> tuple[float, np.ndarray]:
    """Products per second over the batches (after one warm-up batch), and the features."""
    with torch.inference_mode(), context():
        tower(pixels[0])
        started = time.perf_counter()
        features = [tower(batch).float() for batch in pixels]
    seconds = time.perf_counter() - started
    return sum(len(b) for b in pixels) / seconds, F.normalize(torch.cat(features), dim=-1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data")
    parser.add_argument("--products", type=int, default=256)
    parser.add_argument("--encoder", default="offline")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    full = load_catalog(args.data)
    catalog = dataclasses.replace(full, products=full.products.head(args.products).reset_index(drop=True))
    encoder = create_encoder(args.encoder)
    files = ImageFiles(catalog.image_paths, encoder.image_transform)
    pixels = [
        torch.stack([files[i] for i in range(start, min(start + args.batch_size, len(catalog)))])
        for start in range(0, len(catalog), args.batch_size)
    ]
    print(
        f"{len(catalog)} real products, encoder {encoder.id}, batch {args.batch_size}, "
        f"torch threads {torch.get_num_threads()}\n"
    )

    eager_speed, eager = forward_speed(encoder._embed_pixels, pixels)
    rows = [("eager PyTorch (float32)", eager_speed, 1.0)]

    def channels_last(batch):
        return encoder._embed_pixels(batch.contiguous(memory_format=torch.channels_last))

    modules = [m for m in vars(encoder).values() if isinstance(m, torch.nn.Module)]
    for module in modules:
        module.to(memory_format=torch.channels_last)
    speed, features = forward_speed(channels_last, pixels)
    rows.append(("channels-last", speed, float((features * eager).sum(-1).min())))
    for module in modules:
        module.to(memory_format=torch.contiguous_format)

    speed, features = forward_speed(encoder._embed_pixels, pixels, lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    rows.append(("bf16 autocast", speed, float((features * eager).sum(-1).min())))

    try:
        compiled = torch.compile(encoder._embed_pixels)
        started = time.perf_counter()
        with torch.inference_mode():
            compiled(pixels[0])
        compile_seconds = time.perf_counter() - started
        speed, features = forward_speed(compiled, pixels)
        rows.append(
            (f"torch.compile (compiling took {compile_seconds:.0f} s)", speed, float((features * eager).sum(-1).min()))
        )
    except Exception as error:  # no compiler, or an op it cannot compile: say so
        rows.append((f"torch.compile: failed ({type(error).__name__})", float("nan"), float("nan")))

    said = encoder.use_onnx(CACHE_DIR / "onnx")
    if encoder.runtime is not None:
        speed, features = forward_speed(encoder.runtime, pixels)
        rows.append(("ONNX Runtime (adopted by fsl)", speed, float((features * eager).sum(-1).min())))
    else:
        rows.append((f"ONNX Runtime: {said}", float("nan"), float("nan")))
    try:
        import openvino  # noqa: F401

        rows.append(("OpenVINO: installed but not wired in", float("nan"), float("nan")))
    except ImportError:
        rows.append(("OpenVINO: not installed", float("nan"), float("nan")))

    print(f"| {'image tower forward':52} | {'products/s':>10} | {'x eager':>8} | {'min cosine':>10} |")
    print(f"|{'-' * 54}|{'-' * 12}|{'-' * 10}|{'-' * 12}|")
    for name, speed, cosine in rows:
        note = " (below 0.999: refused)" if cosine < MIN_COSINE else ""
        print(f"| {name:52} | {speed:10.1f} | {speed / eager_speed:8.2f} | {cosine:10.6f} |{note}")
    adopted = rows[-2][1] / eager_speed if encoder.runtime is not None else 1.0
    print(f"\nadopted path: {adopted:.2f}x eager (target >= {TARGET})" + ("" if adopted >= TARGET else " MISSED"))

    texts = catalog.texts() + catalog.texts(mask_column="articleType")  # what fsl embed encodes per product
    text_rows = []
    for name, tower in (
        ("eager (sentence-transformers)", encoder._embed_texts),
        ("ONNX Runtime (adopted by fsl)", encoder.text_runtime),
    ):
        if tower is None:
            text_rows.append((f"ONNX Runtime: {said}", float("nan"), float("nan")))
            continue
        with torch.inference_mode():
            tower(texts[:8])  # warm-up
            started = time.perf_counter()
            features = F.normalize(
                torch.cat([tower(texts[i : i + 256]).float() for i in range(0, len(texts), 256)]), dim=-1
            )
        text_rows.append((name, len(texts) / (time.perf_counter() - started), features))
    eager_texts = text_rows[0][2]
    print(f"\n| {'text tower forward':52} | {'texts/s':>10} | {'x eager':>8} | {'min cosine':>10} |")
    print(f"|{'-' * 54}|{'-' * 12}|{'-' * 10}|{'-' * 12}|")
    for name, speed, features in text_rows:
        cosine = float((features * eager_texts).sum(-1).min()) if isinstance(features, torch.Tensor) else float("nan")
        print(f"| {name:52} | {speed:10.1f} | {speed / text_rows[0][1]:8.2f} | {cosine:10.6f} |")

    with tempfile.TemporaryDirectory() as root:
        started = time.perf_counter()
        embed_catalog(catalog, encoder, root, batch_size=args.batch_size, progress=False)
        pipeline = len(catalog) / (time.perf_counter() - started)
        started = time.perf_counter()
        embed_catalog(catalog, encoder, root, batch_size=args.batch_size, progress=False)
        warm = time.perf_counter() - started
    print(
        f"fsl embed pipeline with it (decode + images + 2 text variants + writes): {pipeline:.1f} products/s "
        f"= {pipeline / eager_speed:.2f}x the eager forward alone"
    )
    print(f"warm store, second run: {warm:.3f} s for {len(catalog)} products (no encoding)")


if __name__ == "__main__":
    main()
