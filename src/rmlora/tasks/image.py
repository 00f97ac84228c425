"""Image classification: hub datasets (CIFAR-100, Food-101, ...), a local imagefolder, or Fashion-MNIST IDX files.

The model is AutoModelForImageClassification with AutoImageProcessor (the Pillow-based processors work
without torchvision). Images are turned into pixel values on the fly (`with_transform`, as
transformers' run_image_classification.py does, hence `remove_unused_columns=False`). With
`--lora_placement head` and a one-layer head, the frozen backbone's features are computed once and
cached, and only the head trains on them (features.py).

Fashion-MNIST IDX (the format of LeCun's MNIST files): big-endian int32 magic 2051 (images) or 2049
(labels), then the sizes, then uint8 data — images from byte 16, labels from byte 8 — gzip-compressed.
"""

from __future__ import annotations

import gzip
import inspect
import logging
import os
import struct
from functools import partial

import numpy as np
import torch
from datasets import Array2D, ClassLabel, Dataset, Features, load_dataset
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, default_data_collator

from rmlora.errors import DataError
from rmlora.tasks.base import Task
from rmlora.tasks.data import check_file, load_hub_dataset, pick_splits
from rmlora.tasks.features import (
    FeatureClassifier,
    cache_key,
    cached,
    default_cache_dir,
    extract_features,
    model_identity,
    single_linear_head,
)
from rmlora.tasks.loading import from_pretrained_quietly
from rmlora.tasks.metrics import accuracy

logger = logging.getLogger(__name__)

HUB_DATASETS = {"cifar100": "uoft-cs/cifar100", "food101": "ethz/food101"}
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
IDX_FILES = {"train": "train", "test": "t10k"}
_IMAGE_COLUMNS = ("image", "img")
_LABEL_COLUMNS = ("label", "labels", "fine_label")


# -- Fashion-MNIST IDX ------------------------------------------------------------------------------------


def read_idx(path: str) -> np.ndarray:
    """An IDX(.gz) file as a uint8 array: N x rows x cols (magic 2051) or N (magic 2049)."""
    check_file(path, "IDX file")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path!r} ({e}): re-download or regenerate it") from None
    if len(data) < 8:
        raise DataError(f"IDX file {path!r} is truncated: re-download or regenerate it")
    magic, n = struct.unpack(">ii", data[:8])
    if magic == 2051:
        if len(data) < 16:
            raise DataError(f"IDX file {path!r} is truncated: re-download or regenerate it")
        rows, cols = struct.unpack(">ii", data[8:16])
        shape, offset = (n, rows, cols), 16
    elif magic == 2049:
        shape, offset = (n,), 8
    else:
        raise DataError(f"{path!r} is not an IDX image or label file (magic {magic}, expected 2051 or 2049)")
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise DataError(
            f"IDX file {path!r} holds {len(data) - offset} bytes of data, its header says {expected}: "
            "the file is damaged"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def is_idx_folder(folder: str) -> bool:
    return os.path.exists(os.path.join(folder, "train-images-idx3-ubyte.gz"))


def load_idx_folder(folder: str, label_names: list[str] | None = None) -> dict:
    """{"train", "test"} of a Fashion-MNIST-style folder as datasets with `image` (28x28 uint8) and `label`."""

    splits = {}
    for split, stem in IDX_FILES.items():
        images_path = os.path.join(folder, f"{stem}-images-idx3-ubyte.gz")
        labels_path = os.path.join(folder, f"{stem}-labels-idx1-ubyte.gz")
        if split == "test" and not os.path.exists(images_path):
            continue
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{images_path} and {labels_path} do not match ({images.shape} images, {labels.shape} labels)"
            )
        names = label_names or (
            FASHION_MNIST_LABELS if labels.max() < 10 else [str(i) for i in range(int(labels.max()) + 1)]
        )
        features = Features({"image": Array2D(images.shape[1:], "uint8"), "label": ClassLabel(names=names)})
        splits[split] = Dataset.from_dict({"image": images, "label": labels.astype(np.int64)}, features=features)
    return splits


def imagefolder_files(folder: str) -> dict[str, list[str]]:
    """{split: sorted image and metadata files} of an imagefolder's split folders, as `datasets` would find them.

    `load_dataset("imagefolder", data_dir=...)` resolves some fifty glob patterns, each walking the whole tree: about
    4 s per call on a 6,500-image folder, more than a head cell's training. One walk here, the same split names
    (datasets.data_files.SPLIT_KEYWORDS), extensions, metadata files and sorted order, hidden files and folders
    ("." or "__") skipped as datasets skips them. tests/test_tasks_image.py compares the two loads."""
    from datasets.data_files import SPLIT_KEYWORDS
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    extensions = {e.lower() for e in ImageFolder.EXTENSIONS}
    out = {}
    for split, keywords in SPLIT_KEYWORDS.items():
        root = next((os.path.join(folder, k) for k in keywords if os.path.isdir(os.path.join(folder, k))), None)
        if root is None:
            continue
        files = []
        for parent, dirs, names in os.walk(os.path.abspath(root)):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
            for name in names:
                if name.startswith((".", "__")):
                    continue
                if os.path.splitext(name)[1].lower() in extensions or name in ImageFolder.METADATA_FILENAMES:
                    files.append(os.path.join(parent, name))
        if files:
            out[str(split)] = sorted(files)
    return out


def to_rgb(image):
    """A PIL image or a 2-d/3-d uint8 array as an RGB PIL image (grey digits need three channels)."""

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    return image.convert("RGB")


def pixel_transform(processor, batch):
    """A batch of images and labels as pixel values (the on-the-fly transform of `with_transform`)."""
    pixels = processor([to_rgb(img) for img in batch["image"]], return_tensors="pt")["pixel_values"]
    return {"pixel_values": list(pixels), "labels": batch["labels"]}


# -- the task ------------------------------------------------------------------------------------------


class ImageClassificationTask(Task):
    family = "image-classification"
    remove_unused_columns = False  # the transform needs the image column

    def __init__(self, name, model_args, data_args, seed=42):
        super().__init__(name, model_args, data_args, seed)
        self.feature_head: str | None = None
        self._backbone = None
        self.batch_size, self.device = 32, "cpu"
        self.feature_cache_hits: dict[str, bool] = {}

    def _load_splits(self) -> dict:
        d = self.data_args
        folder = d.data_dir or (FASHION_MNIST_DIR if self.name == "fashion_mnist" else None)
        if folder:
            if not os.path.isdir(folder):
                hint = " (apt-get install dataset-fashion-mnist)" if self.name == "fashion_mnist" else ""
                raise DataError(f"image folder {folder!r} does not exist: pass --data_dir{hint}")
            if is_idx_folder(folder):
                return load_idx_folder(folder)
            return self._load_imagefolder(folder)
        if d.train_file:
            raise DataError("image data is a folder: pass --data_dir (imagefolder or IDX files), not --train_file")
        name = d.dataset_name or HUB_DATASETS.get(self.name)
        if not name:
            raise DataError("the image task needs --data_dir (imagefolder or IDX files) or --dataset_name")
        hub = load_hub_dataset(
            name, d.dataset_config_name, self.model_args.cache_dir, "without internet pass --data_dir"
        )
        return pick_splits(hub, {"train": "train", "validation": "validation", "test": "test"}, name)

    def _load_imagefolder(self, folder: str) -> dict:

        if not os.path.isdir(os.path.join(folder, "train")):
            raise DataError(
                f"{folder!r} has no train/ folder: an imagefolder holds train/<class>/<image> (and validation/, test/)"
            )
        try:
            ds = load_dataset("imagefolder", data_files=imagefolder_files(folder))
        except Exception as e:
            cause = e.__cause__ or e
            raise DataError(
                f"cannot read imagefolder {folder!r}: "
                f"{str(cause).splitlines()[0] if str(cause) else type(cause).__name__}"
            ) from None
        return {k: ds[k] for k in ("train", "validation", "test") if k in ds}

    def _encode_labels(self, splits: dict) -> dict:

        train = splits["train"]
        image_col = self.data_args.image_column or next((c for c in _IMAGE_COLUMNS if c in train.column_names), None)
        label_col = self.data_args.label_column or next((c for c in _LABEL_COLUMNS if c in train.column_names), None)
        out = {}
        for split, ds in splits.items():
            for col, flag in ((image_col, "--image_column"), (label_col, "--label_column")):
                if col is None or col not in ds.column_names:
                    raise DataError(
                        f"the {split} split has no {flag[2:]} {col!r} (it has {', '.join(ds.column_names)}): "
                        f"pass {flag}"
                    )
            feature = ds.features[label_col]
            if split == "train":
                if not isinstance(feature, ClassLabel):
                    raise DataError(
                        f"the label column {label_col!r} is not a class label: image tasks need a ClassLabel column"
                    )
                self.label_list = list(feature.names)
            labels = np.asarray(ds[label_col])
            bad = np.flatnonzero((labels < 0) | (labels >= len(self.label_list)))
            if bad.size:
                raise DataError(
                    f"label {labels[bad[0]]} in row {bad[0]} of the {split} split is outside the "
                    f"{len(self.label_list)} classes of the train split: give every split the same class folders"
                )
            ds = ds.select_columns([image_col, label_col])
            if image_col != "image":
                ds = ds.rename_column(image_col, "image")
            if label_col != "labels":
                ds = ds.rename_column(label_col, "labels")
            out[split] = ds
        return out

    def _stratify_column(self):
        return "labels"

    # -- model -----------------------------------------------------------------------------------------
    def _load_pretrained(self):

        kwargs = self.from_pretrained_kwargs()
        processor = AutoImageProcessor.from_pretrained(
            self.model_args.tokenizer_name or self.model_args.model_name_or_path, **kwargs
        )
        side = self.data_args.image_size
        if side:
            if "shortest_edge" in (processor.size or {}):
                processor.size = {"shortest_edge": side}
                if getattr(processor, "crop_size", None):
                    processor.crop_size = {"height": side, "width": side}
            else:
                processor.size = {"height": side, "width": side}
        model = from_pretrained_quietly(
            AutoModelForImageClassification,
            self.model_args.model_name_or_path,
            # num_labels follows from id2label; passing both makes transformers warn that num_labels disagrees with
            # the checkpoint's own head (ImageNet's 1000 classes) before it is replaced
            id2label=dict(enumerate(self.label_list)),
            label2id={n: i for i, n in enumerate(self.label_list)},
            ignore_mismatched_sizes=self.model_args.ignore_mismatched_sizes,
            **kwargs,
        )
        self.processing_class = processor
        self._interpolate = bool(
            side
            and side != getattr(model.config, "image_size", side)
            and "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
        )
        return model

    def place_lora(self, model, lora_args, method: str):

        model = super().place_lora(model, lora_args, method)
        if method == "full" and self.model_args.lora_placement == "head":
            # full fine-tuning of the head alone (backbone frozen): its input is cached as for LoRA on the head
            self.placement = "head"
        if self.placement != "head" or not self.data_args.cache_features:
            return model
        head = single_linear_head(model)
        if head is None:
            logger.warning("the head of %s is not one linear layer: features are not cached", type(model).__name__)
            return model
        self.feature_head, self._backbone = head, model
        return FeatureClassifier(model.get_submodule(head), head, model.config)

    # -- datasets --------------------------------------------------------------------------------------
    def _collate(self, examples):

        batch = {
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long),
        }
        if self._interpolate:
            batch["interpolate_pos_encoding"] = True
        return batch

    def _prepare(self, ds, split: str):
        self.data_collator = self._collate
        # the transform holds the processor only: `datasets` fingerprints it by pickling, and a bound method would
        # pickle the whole task, the frozen backbone of --lora_placement head included (its weights, every call)
        pixels = ds.with_transform(partial(pixel_transform, self.processing_class))
        if self.feature_head is None:
            return pixels
        return self._cached_features(ds, pixels, split)

    def prepare_datasets(self) -> None:
        super().prepare_datasets()
        if self.feature_head is not None:
            self.data_collator = default_data_collator
            self._backbone = None  # the frozen backbone is no longer needed: free it

    def _cached_features(self, raw, pixels, split: str):

        m = self.model_args
        key = cache_key(
            {
                "model": model_identity(m.model_name_or_path, m.model_revision, m.gguf_file),
                "config": self._backbone.config.to_json_string(use_diff=False),
                "processor": self.processing_class.to_json_string(),
                "head": self.feature_head,
                "data": raw._fingerprint,
            }
        )
        cache_dir = self.data_args.feature_cache_dir or default_cache_dir()
        tensors, hit = cached(
            cache_dir,
            key,
            lambda: extract_features(
                self._backbone, self.feature_head, pixels, self._collate, self.batch_size, self.device
            ),
        )
        self.feature_cache_hits[split] = hit
        logger.info("features of %s: %s (%s)", split, "cache hit" if hit else "computed", os.path.join(cache_dir, key))
        return Dataset.from_dict(
            {"features": tensors["features"].numpy(), "labels": tensors["labels"].numpy()}
        ).with_format("torch")

    def compute_metrics(self, eval_pred) -> dict:

        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        return accuracy(np.argmax(logits, axis=-1), eval_pred.label_ids)
