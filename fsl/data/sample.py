"""The embedded sample catalog: a small synthetic Fashion-Product-Images-shaped dump.

It lets `make quickstart` run end to end on a machine with no data. Its photos are drawn
shapes, so the numbers it gives say that the pipeline runs, nothing about accuracy."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from fsl.data.catalog import STYLES_COLUMNS
from fsl.errors import FslError
from fsl.files import atomic_path

# (articleType, subCategory, masterCategory, shape drawn)
SAMPLE_CLASSES = [
    ("Tshirts", "Topwear", "Apparel", "square"),
    ("Shirts", "Topwear", "Apparel", "rectangle"),
    ("Jeans", "Bottomwear", "Apparel", "tall"),
    ("Dresses", "Dress", "Apparel", "triangle"),
    ("Casual Shoes", "Shoes", "Footwear", "wide"),
    ("Sandals", "Sandal", "Footwear", "lines"),
    ("Heels", "Shoes", "Footwear", "diagonal"),
    ("Watches", "Watches", "Accessories", "circle"),
    ("Handbags", "Bags", "Accessories", "ring"),
    ("Belts", "Belts", "Accessories", "bar"),
    ("Sunglasses", "Eyewear", "Accessories", "two-circles"),
    ("Caps", "Headwear", "Accessories", "half"),
    ("Backpacks", "Bags", "Accessories", "hollow-square"),
    ("Socks", "Socks", "Accessories", "cross"),
    ("Kurtas", "Topwear", "Apparel", "dots"),
    ("Flip Flops", "Flip Flops", "Footwear", "arc"),
]
BRANDS = ["Acme", "Nordwind", "Kestrel", "Lumen", "Orchid", "Vela"]
SAMPLE_VERSION = 2  # 2: seasons and usages vary; a cached sample of another version is drawn again
SEASONS = ["Summer", "Winter", "Fall", "Spring"]  # varied, as every label column of a real dump is
USAGES = ["Casual", "Formal", "Sports"]
COLOURS = {
    "Black": (20, 20, 20),
    "White": (235, 235, 235),
    "Blue": (40, 70, 200),
    "Red": (200, 40, 40),
    "Green": (40, 160, 60),
    "Brown": (120, 80, 40),
}
SAMPLE_NOTICE = (
    "SYNTHETIC SAMPLE CATALOG: drawn shapes, not products. These numbers only show that "
    "the pipeline runs; they mean nothing about accuracy. Set FSL_DATA to a real dump."
)


def _draw(shape: str, colour: tuple[int, int, int], rng: np.random.Generator, size: int = 96) -> Image.Image:
    background = tuple(int(v) for v in rng.integers(170, 256, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    jitter = lambda: int(rng.integers(-6, 7))  # noqa: E731
    s, m = size, size // 2
    boxes = {
        "square": (20, 20, 76, 76),
        "rectangle": (15, 25, 81, 71),
        "tall": (34, 8, 62, 88),
        "wide": (8, 40, 88, 64),
        "bar": (8, 44, 88, 52),
        "half": (16, 16, 80, 80),
    }
    if shape in boxes:
        x0, y0, x1, y1 = boxes[shape]
        dx, dy = jitter(), jitter()
        box = (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
        if shape == "half":
            draw.pieslice(box, 180, 360, fill=colour)
        else:
            draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(m + jitter(), 10), (12, s - 12), (s - 12, s - 12)], fill=colour)
    elif shape == "circle":
        draw.ellipse((22 + jitter(), 22 + jitter(), 74, 74), fill=colour)
    elif shape == "ring":
        draw.ellipse((18 + jitter(), 18 + jitter(), 78, 78), outline=colour, width=8)
    elif shape == "two-circles":
        draw.ellipse((10, 34 + jitter(), 44, 62), fill=colour)
        draw.ellipse((52, 34 + jitter(), 86, 62), fill=colour)
    elif shape == "lines":
        for y in range(20 + jitter() % 5, 80, 14):
            draw.line((10, y, 86, y), fill=colour, width=5)
    elif shape == "hollow-square":
        draw.rectangle((18 + jitter(), 18 + jitter(), 78, 78), outline=colour, width=8)
    elif shape == "cross":
        draw.line((m + jitter(), 8, m, s - 8), fill=colour, width=10)
        draw.line((8, m + jitter(), s - 8, m), fill=colour, width=10)
    elif shape == "dots":
        for x in range(16 + jitter() % 4, 88, 22):
            for y in range(16, 88, 22):
                draw.ellipse((x, y, x + 10, y + 10), fill=colour)
    elif shape == "arc":
        draw.arc((10 + jitter(), 10, 86, 86), 200, 340, fill=colour, width=10)
    elif shape == "diagonal":
        draw.line((10 + jitter(), 86, 86, 10 + jitter()), fill=colour, width=10)
    noise = rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def make_sample_catalog(dest: str | os.PathLike, per_class: int = 20, seed: int = 0) -> Path:
    """Write dest/styles.csv and dest/images/<id>.jpg (once; deterministic for a seed)."""
    dest = Path(dest)
    stamp = dest / "sample-version"
    if (dest / "styles.csv").is_file() and stamp.is_file() and stamp.read_text().strip() == str(SAMPLE_VERSION):
        return dest
    rng = np.random.default_rng(seed)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for class_index, (article, sub, master, shape) in enumerate(SAMPLE_CLASSES):
        for k in range(per_class):
            product_id = 1000 + class_index * per_class + k
            colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
            gender = ["Men", "Women", "Unisex"][int(rng.integers(3))]
            brand = BRANDS[int(rng.integers(len(BRANDS)))]
            _draw(shape, COLOURS[colour], rng).save(dest / "images" / f"{product_id}.jpg", quality=90)
            season = SEASONS[int(rng.integers(len(SEASONS)))]
            usage = USAGES[int(rng.integers(len(USAGES)))]
            rows.append(
                [
                    product_id,
                    gender,
                    master,
                    sub,
                    article,
                    colour,
                    season,
                    2012,
                    usage,
                    f"{brand} {gender} {colour} {article}",
                ]
            )
    with atomic_path(dest / "styles.csv") as tmp:
        pd.DataFrame(rows, columns=STYLES_COLUMNS).to_csv(tmp, index=False)
    with atomic_path(stamp) as tmp:
        tmp.write_text(f"{SAMPLE_VERSION}\n")
    return dest


# The README's "your own categories" example: a few photos of three categories as a support folder,
# and query photos of those and of one category not taught.
EXAMPLE_TAUGHT = ("Watches", "Handbags", "Sunglasses")
EXAMPLE_UNTAUGHT = ("Flip Flops",)
# A harder one, with close neighbours among the untaught categories (Belts, Sports Shoes)
HARD_EXAMPLE_TAUGHT = ("Briefs", "Dresses", "Heels", "Kurtas", "Tops")
HARD_EXAMPLE_UNTAUGHT = ("Belts", "Clutches", "Sports Shoes")


def own_categories_example(
    dump: str | os.PathLike,
    dest: str | os.PathLike,
    taught: tuple[str, ...] = EXAMPLE_TAUGHT,
    untaught: tuple[str, ...] = EXAMPLE_UNTAUGHT,
    shots: int = 5,
    queries: int = 10,
    seed: int = 0,
) -> pd.DataFrame:
    """dest/support/<Category>/ (`shots` photos of each taught category) and dest/query/ (`queries`
    other photos of each taught and untaught category) from a dump's photos, drawn with `seed`.
    Returns the truth (file, category, taught), also written to dest/truth.csv."""
    dump, dest = Path(dump), Path(dest)
    styles = pd.read_csv(dump / "styles.csv", usecols=["id", "articleType"], on_bad_lines="skip", dtype=str)
    styles = styles[styles["id"].map(lambda i: (dump / "images" / f"{i}.jpg").is_file())]
    rng = np.random.default_rng(seed)
    truth = []
    for category in (*taught, *untaught):
        ids = sorted(styles.loc[styles["articleType"] == category, "id"])
        is_taught = category in taught
        needed = queries + (shots if is_taught else 0)
        if len(ids) < needed:
            raise FslError(f"{dump} has {len(ids)} photos of {category}; the example needs {needed}")
        chosen = rng.choice(ids, needed, replace=False)
        if is_taught:
            (dest / "support" / category).mkdir(parents=True, exist_ok=True)
            for product in chosen[:shots]:
                shutil.copyfile(dump / "images" / f"{product}.jpg", dest / "support" / category / f"{product}.jpg")
        (dest / "query").mkdir(parents=True, exist_ok=True)
        for product in chosen[needed - queries :]:
            shutil.copyfile(dump / "images" / f"{product}.jpg", dest / "query" / f"{product}.jpg")
            truth.append({"file": f"{product}.jpg", "category": category, "taught": is_taught})
    table = pd.DataFrame(truth)
    table.to_csv(dest / "truth.csv", index=False)
    return table
