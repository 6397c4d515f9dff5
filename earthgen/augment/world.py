"""Detection datasets from the procedural world, for experiments with a known ground truth.

``make_world_splits`` renders tiles of the ``urban`` world preset (buildings, storage tanks,
small and large vehicles; rotated boxes) at random places, seeds and GSDs, and writes ``train``
and ``test`` splits in any label format. A class is made *scarce* from the outside: training
tiles that contain it are dropped except ``rare_keep`` of them (its labels are never removed
from an image that is kept, so no object is left unlabelled); the test split is untouched.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from earthgen.data import DetectionItem, write_detection_dataset
from earthgen.errors import UserInputError


def world_items(
    n: int,
    seed: int,
    size: int,
    folder: Path,
    gsd: tuple[float, float] = (0.5, 0.7),
    extent_m: float = 1500.0,
    min_boxes: int = 1,
    progress: bool = True,
) -> list[DetectionItem]:
    """``n`` tiles with at least ``min_boxes`` objects, saved as ``folder/w<seed>_<k>.png``."""
    from PIL import Image
    from tqdm import tqdm

    from earthgen.world import generate_world
    from earthgen.world.config import preset

    cfg = preset("urban")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items: list[DetectionItem] = []
    bar = tqdm(total=n, desc="world tiles", disable=not progress)
    tries = 0
    while len(items) < n:
        tries += 1
        if tries > 50 * n:
            raise UserInputError(
                f"only {len(items)} of {n} world tiles had objects; use a larger extent"
            )
        o = rng.uniform(-extent_m, extent_m, 2)
        g = float(rng.uniform(*gsd))
        tile = generate_world(int(rng.integers(0, 1000)), size, g, (float(o[0]), float(o[1])), cfg)
        boxes = tile.boxes()
        if len(boxes) < min_boxes:
            continue
        path = folder / f"w{seed}_{len(items):05d}.png"
        Image.fromarray(tile.rgb).save(path)
        boxes.extra = {"gsd": g}
        items.append(DetectionItem(path, (size, size), boxes))
        bar.update()
    bar.close()
    return items


def make_scarce(
    items: list[DetectionItem], rare: str, keep: int, seed: int = 0
) -> list[DetectionItem]:
    """Drop the items holding class ``rare`` except ``keep`` of them (chosen with ``seed``)."""
    with_rare = [i for i, it in enumerate(items) if rare in it.boxes.labels]
    rng = np.random.default_rng(seed)
    kept = set(rng.permutation(with_rare)[:keep].tolist())
    return [it for i, it in enumerate(items) if i not in with_rare or i in kept]


def make_world_splits(
    out: str | Path,
    n_train: int = 300,
    n_test: int = 150,
    size: int = 128,
    rare: str = "large_vehicle",
    rare_keep: int = 4,
    seed: int = 0,
    format: str = "dota",  # noqa: A002
    progress: bool = True,
) -> dict:
    """Write ``out/train`` (with ``rare`` made scarce) and ``out/test`` detection datasets; returns
    a summary with the class counts of both splits."""
    from earthgen.world.tile import DETECTION_CLASSES

    if rare not in DETECTION_CLASSES:
        raise UserInputError(
            f"unknown world class {rare!r}; choose from {', '.join(DETECTION_CLASSES)}"
        )
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserInputError(f"{out} exists and is not empty; choose a new folder")
    img_dir = out / "_images"
    train = make_scarce(
        world_items(n_train, seed, size, img_dir, progress=progress), rare, rare_keep, seed
    )
    test = world_items(n_test, seed + 7919, size, img_dir, progress=progress)
    write_detection_dataset(
        train, out / "train", format, classes=list(DETECTION_CLASSES), images="copy"
    )
    write_detection_dataset(
        test, out / "test", format, classes=list(DETECTION_CLASSES), images="copy"
    )
    for p in img_dir.glob("*.png"):
        p.unlink()
    img_dir.rmdir()
    count = lambda its: dict(Counter(lab for it in its for lab in it.boxes.labels))  # noqa: E731
    return {
        "train": str(out / "train"),
        "test": str(out / "test"),
        "rare": rare,
        "train_images": len(train),
        "test_images": len(test),
        "train_counts": count(train),
        "test_counts": count(test),
    }
