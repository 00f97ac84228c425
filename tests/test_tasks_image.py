"""Image classification: IDX reading, imagefolder with the head placement (cached features), Fashion-MNIST IDX."""

import gzip
import os
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import FIXTURES, read_jsonl, run_train, save_vit, tmp_env
from rmlora.errors import DataError
from rmlora.tasks.image import read_idx

IMAGES = os.path.join(FIXTURES, "images")
FASHION = os.path.join(FIXTURES, "fashion_mnist")


def test_read_idx_decodes_images_and_labels(tmp_path):
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    images = tmp_path / "x-images-idx3-ubyte.gz"
    with gzip.open(images, "wb") as f:
        f.write(struct.pack(">iiii", 2051, 2, 3, 4) + pixels.tobytes())
    labels = tmp_path / "x-labels-idx1-ubyte"
    labels.write_bytes(struct.pack(">ii", 2049, 3) + bytes([7, 0, 9]))
    np.testing.assert_array_equal(read_idx(str(images)), pixels)
    np.testing.assert_array_equal(read_idx(str(labels)), [7, 0, 9])
    # the project's fixture: class k of example i is i mod 3 (make_fixtures.write_fashion_mnist)
    np.testing.assert_array_equal(read_idx(os.path.join(FASHION, "train-labels-idx1-ubyte.gz")), np.arange(30) % 3)


def test_read_idx_rejects_other_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(struct.pack(">ii", 1234, 1) + b"\x00")
    with pytest.raises(DataError, match="magic 1234"):
        read_idx(str(bad))
    short = tmp_path / "short"
    short.write_bytes(struct.pack(">ii", 2049, 5) + b"\x00\x01")
    with pytest.raises(DataError, match="damaged"):
        read_idx(str(short))


def _folder_images(split):
    """(PIL images, label ids) of an imagefolder split, classes in sorted folder order."""
    from PIL import Image

    root = os.path.join(IMAGES, split)
    classes = sorted(os.listdir(root))
    images, labels = [], []
    for k, name in enumerate(classes):
        for file in sorted(os.listdir(os.path.join(root, name))):
            images.append(Image.open(os.path.join(root, name, file)).convert("RGB"))
            labels.append(k)
    return images, labels


def test_head_placement_caches_features_and_its_adapter_fits_the_full_model(tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    tmp_env(monkeypatch, tmp_path)
    vit = save_vit(str(tmp_path / "vit"))
    args = [
        "--model_name_or_path",
        vit,
        "--task_name",
        "image",
        "--data_dir",
        IMAGES,
        "--lora_placement",
        "head",
        "--method",
        "rm-lora",
        "--num_train_epochs",
        "3",
        "--learning_rate",
        "5e-2",
        "--feature_cache_dir",
        str(tmp_path / "features"),
    ]
    first = run_train(args, tmp_path / "a")
    second = run_train(args, tmp_path / "b")
    assert first["feature_cache"] == {"head": "classifier", "hits": {"train": False, "test": False}}
    assert second["feature_cache"]["hits"] == {"train": True, "test": True}
    assert second["metrics"]["test_accuracy"] == first["metrics"]["test_accuracy"]
    # building the cache draws nothing from the seeded RNG: the run that computed the features trains the same
    # adapter, bit for bit, as the run that read them (it did not: the extraction's DataLoader drew a base seed
    # before LoRA's A was initialised)
    a = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first["target_modules"] == "classifier"
    # LoRA on the 32 -> 3 classifier only: A is 4 x 32, B is 3 x 4
    assert first["param_counts"]["trainable"] == 4 * 32 + 3 * 4

    # the adapter, loaded by plain PEFT onto the full model, scores the raw test images the same
    images, labels = _folder_images("test")
    processor = AutoImageProcessor.from_pretrained(str(tmp_path / "a"))
    model = AutoModelForImageClassification.from_pretrained(vit)
    model = PeftModel.from_pretrained(model, str(tmp_path / "a")).eval()
    with torch.no_grad():
        logits = model(**processor(images, return_tensors="pt")).logits
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels)).item()
    accuracy = (logits.argmax(-1).numpy() == np.array(labels)).mean()
    assert first["metrics"]["test_accuracy"] == pytest.approx(accuracy)
    assert first["metrics"]["test_loss"] == pytest.approx(loss, rel=1e-4)

    history = read_jsonl(tmp_path / "a" / "history.jsonl")
    assert len(history) == 3
    for r in history:
        assert r["test_generalization_error"] == pytest.approx(r["train_accuracy"] - r["test_accuracy"])


def test_full_fine_tuning_of_the_head_alone_on_cached_features(tmp_path, monkeypatch):
    """`--method full --lora_placement head` trains the classifier only; its head.safetensors, put into the
    full model, scores the raw test images as the run reported."""
    from safetensors.torch import load_file
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    tmp_env(monkeypatch, tmp_path)
    vit = save_vit(str(tmp_path / "vit"))
    result = run_train(
        [
            "--model_name_or_path",
            vit,
            "--task_name",
            "image",
            "--data_dir",
            IMAGES,
            "--lora_placement",
            "head",
            "--method",
            "full",
            "--num_train_epochs",
            "2",
            "--learning_rate",
            "5e-2",
            "--feature_cache_dir",
            str(tmp_path / "features"),
        ],
        tmp_path / "full",
    )
    assert result["feature_cache"]["head"] == "classifier"
    assert result["param_counts"]["trainable"] == 32 * 3 + 3  # the 32 -> 3 classifier, nothing else
    assert not (tmp_path / "full" / "model.safetensors").exists()
    head = load_file(str(tmp_path / "full" / "head.safetensors"))
    assert sorted(head) == ["classifier.bias", "classifier.weight"]

    model = AutoModelForImageClassification.from_pretrained(vit).eval()
    assert not torch.equal(model.classifier.weight, head["classifier.weight"])  # it trained
    model.load_state_dict(head, strict=False)
    images, labels = _folder_images("test")
    processor = AutoImageProcessor.from_pretrained(str(tmp_path / "full"))
    with torch.no_grad():
        logits = model(**processor(images, return_tensors="pt")).logits
    assert result["metrics"]["test_accuracy"] == pytest.approx((logits.argmax(-1).numpy() == np.array(labels)).mean())
    assert result["metrics"]["test_loss"] == pytest.approx(
        torch.nn.functional.cross_entropy(logits, torch.tensor(labels)).item(), rel=1e-4
    )


def test_fashion_mnist_idx_with_lora_on_all_layers_and_resized_images(tmp_path, monkeypatch):
    tmp_env(monkeypatch, tmp_path)
    vit = save_vit(str(tmp_path / "vit"))
    m = run_train(
        [
            "--model_name_or_path",
            vit,
            "--task_name",
            "fashion_mnist",
            "--data_dir",
            FASHION,
            "--lora_placement",
            "all",
            "--image_size",
            "32",
            "--method",
            "gm-lora",
            "--validation_split_percentage",
            "20",
            "--num_train_epochs",
            "1",
        ],
        tmp_path / "out",
    )
    assert m["data"]["splits"] == {"train": 24, "validation": 6, "test": 15}
    assert m["data"]["num_labels"] == 10 and m["data"]["label_list"][0] == "T-shirt/top"
    assert {"eval_accuracy", "test_accuracy", "generalization_error", "test_generalization_error"} <= set(m["metrics"])
    # LoRA on every linear layer of the backbone (attention and MLP), the head trained fully beside it
    from transformers import AutoModelForImageClassification

    full = AutoModelForImageClassification.from_pretrained(vit)
    backbone_linears = [
        n for n, mod in full.named_modules() if isinstance(mod, torch.nn.Linear) and n.startswith("vit.")
    ]
    assert sorted(m["target_modules"].split(",")) == sorted(backbone_linears)


def test_imagefolder_files_load_as_datasets_own_folder_resolution(tmp_path, monkeypatch):
    """The one-walk file list gives the dataset `load_dataset("imagefolder", data_dir=...)` gives: same splits (a
    val/ folder is the validation split), labels, features and order; hidden files and metadata handled alike."""
    import shutil

    from datasets import load_dataset

    from rmlora.tasks.image import imagefolder_files

    tmp_env(monkeypatch, tmp_path)
    root = tmp_path / "folder"
    shutil.copytree(IMAGES, root)
    shutil.copytree(root / "test", root / "val")  # datasets reads val/ as the validation split
    first = sorted((root / "train").rglob("*.png"))[0]
    shutil.copy(first, first.parent / ".hidden.png")
    (root / "train" / "__skip").mkdir()
    shutil.copy(first, root / "train" / "__skip" / "x.png")
    (root / "test" / "notes.txt").write_text("not an image")

    theirs = load_dataset("imagefolder", data_dir=str(root))
    ours = load_dataset("imagefolder", data_files=imagefolder_files(str(root)))
    assert set(ours) == set(theirs) == {"train", "validation", "test"}
    for split in theirs:
        assert ours[split].features == theirs[split].features
        assert ours[split]["label"] == theirs[split]["label"]
        names = [[im.filename for im in ds[split]["image"]] for ds in (ours, theirs)]
        assert names[0] == names[1] and not any(".hidden" in n or "__skip" in n for n in names[0])
