"""Smoke copies of uoft-cs/cifar100 and ethz/food101, and the coloured-square images they are made of.

- cifar100 (config cifar100, folder cifar100/): `img` (Image(): PNG bytes, no path), `fine_label` (ClassLabel, the
  100 names), `coarse_label` (ClassLabel, the 20 superclasses); splits train and test, 32 x 32 images.
- food101 (config default, folder data/): `image` (Image(): JPEG bytes with a file name), `label` (ClassLabel, the
  101 names); splits train and validation; images of a few sizes, as Food-101's vary.

Class k of the first few is a square of colour k with pixel noise, so a few steps can learn it; the other classes
have no example (the label set is still the dataset's own).
"""

from __future__ import annotations

import io
import random

from datasets import ClassLabel, Features, Image

from rmlora.assets.smoke.hub_repo import HubRepo
from rmlora.assets.smoke.labels import CIFAR100_COARSE, CIFAR100_COARSE_OF, CIFAR100_FINE, FOOD101

COLOURS = [(220, 30, 30), (30, 200, 40), (30, 40, 220), (220, 200, 30)]
CIFAR100_SPLITS = {"train": 32, "test": 16}
FOOD101_SPLITS = {"train": 32, "validation": 16}
_FORMATS = {"PNG": "png", "JPEG": "jpg"}


def colour_image(rgb: tuple[int, int, int], rng: random.Random, size=(8, 8), fmt: str = "PNG") -> bytes:
    """An image of colour `rgb`, each channel of each pixel moved by up to ±40, encoded as `fmt`."""
    from PIL import Image as PILImage

    img = PILImage.new("RGB", size)
    img.putdata([tuple(max(0, min(255, c + rng.randint(-40, 40))) for c in rgb) for _ in range(size[0] * size[1])])
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _images(rng, n: int, n_classes: int, sizes, fmt: str, named: bool) -> tuple[list[dict], list[int]]:
    images, labels = [], []
    for i in range(n):
        k = i % n_classes
        data = colour_image(COLOURS[k], rng, sizes[i % len(sizes)], fmt)
        images.append({"bytes": data, "path": f"{i:05d}.{_FORMATS[fmt]}" if named else None})
        labels.append(k)
    return images, labels


def write_cifar100(path: str, splits: dict | None = None, n_classes: int = 4, side: int = 32, seed: int = 13) -> str:
    """The repository in `path`: cifar100/{train,test}-00000-of-00001.parquet and README.md."""
    rng = random.Random(seed)
    features = Features(
        {
            "img": Image(),
            "fine_label": ClassLabel(names=CIFAR100_FINE),
            "coarse_label": ClassLabel(names=CIFAR100_COARSE),
        }
    )
    data = {}
    for split, n in (splits or CIFAR100_SPLITS).items():
        images, labels = _images(rng, n, n_classes, [(side, side)], "PNG", named=False)
        coarse = [CIFAR100_COARSE.index(CIFAR100_COARSE_OF[CIFAR100_FINE[k]]) for k in labels]
        data[split] = {"img": images, "fine_label": labels, "coarse_label": coarse}
    repo = HubRepo(path)
    repo.add("cifar100", "cifar100", data, features)
    repo.finish("CIFAR-100")
    return path


def write_food101(
    path: str,
    splits: dict | None = None,
    names: list[str] = FOOD101,
    n_classes: int = 4,
    sizes=((24, 20), (20, 28), (32, 24)),
    seed: int = 14,
) -> str:
    """The repository in `path`: data/{train,validation}-00000-of-00001.parquet and README.md."""
    rng = random.Random(seed)
    features = Features({"image": Image(), "label": ClassLabel(names=list(names))})
    data = {}
    for split, n in (splits or FOOD101_SPLITS).items():
        images, labels = _images(rng, n, n_classes, list(sizes), "JPEG", named=True)
        data[split] = {"image": images, "label": labels}
    repo = HubRepo(path)
    repo.add("default", "data", data, features)
    repo.finish("Food-101")
    return path
