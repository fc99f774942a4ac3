"""Screenshot of the demo for the README (docs/demo.png), taken in headless Chromium on the real
data, plus the demo's start-up time and one prediction's latency.

    python benchmarks/demo_screenshot.py [--data DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fsl.apps.demo.backend import make_backend
from fsl.apps.demo.handlers import predict
from fsl.apps.demo.layout import launch
from fsl.apps.support import Category
from fsl.config import EncoderConfig
from fsl.data.prepared import load_catalog
from tests.browser import drive_demo  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data")
    parser.add_argument("--out", default=str(ROOT / "docs" / "demo.png"))
    args = parser.parse_args()

    started = time.perf_counter()
    catalog = load_catalog(args.data)
    backend = make_backend(catalog, EncoderConfig("offline"), saved_root=Path(tempfile.mkdtemp(prefix="fsl-demo-")))
    app, url = launch(backend, block=False)
    print(f"start-up to a served page: {time.perf_counter() - started:.1f} s (catalog, store, encoder, app)")

    sunglasses = [p for p, label in zip(catalog.image_paths, catalog.labels()) if label == "Sunglasses"]
    categories = [*backend.example_categories(), Category("Sunglasses")]
    categories[-1].image_features = [backend.embed(str(p), None)[0] for p in sunglasses[:5]]
    timings = []
    for path in sunglasses[5:25]:
        begin = time.perf_counter()
        predict(backend, categories, str(path), "")
        timings.append(time.perf_counter() - begin)
    print(
        f"one prediction (photo in, confidences and 4 neighbours out): median "
        f"{1000 * sorted(timings)[len(timings) // 2]:.0f} ms over {len(timings)}"
    )

    message, again = drive_demo(
        url,
        sunglasses[:5],
        sunglasses[30],
        Path(args.out),
        backend.saved_root / ".zips" / "screenshot.zip",
        category="Sunglasses",
        set_name="screenshot",
    )
    print(f"browser: {message!r}; after saving and loading back: {again!r}; screenshot {args.out}")
    app.close()


if __name__ == "__main__":
    main()
