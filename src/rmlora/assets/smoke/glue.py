"""A smoke copy of nyu-mll/glue: every config of the hub repository, its columns, ClassLabel names and splits.

Twelve configs as on the hub: the nine tasks, `ax` (MNLI's diagnostic set, test only) and `mnli_matched` /
`mnli_mismatched` (MNLI's validation and test splits of each kind). Columns are the task's text columns, `label`
(a ClassLabel with GLUE's names; STS-B a float32 score in [0, 5]) and `idx` (int32); test splits are labelled -1, as
on the hub, except MRPC's, which carry their labels. The rows are corpus sentences whose label follows from their
mood words (corpus.py), so a few steps move the metrics.
"""

from __future__ import annotations

import random

from datasets import ClassLabel, Features, Value

from rmlora.assets.smoke.corpus import NEGATIVE, POSITIVE, pairs, sentence
from rmlora.assets.smoke.hub_repo import HubRepo
from rmlora.tasks.glue import TASK_TO_KEYS, TASK_TO_LABELS

_MNLI_LIKE = {"ax": "mnli", "mnli_matched": "mnli", "mnli_mismatched": "mnli"}
SPLITS = {
    "ax": ("test",),
    "mnli": ("train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched"),
    "mnli_matched": ("validation", "test"),
    "mnli_mismatched": ("validation", "test"),
}
CONFIGS = tuple(sorted([*TASK_TO_KEYS, *_MNLI_LIKE]))  # the hub's order
SIZES = {"train": 32, "validation": 16, "test": 8}  # rows per split; MNLI's validation_* / test_* as validation / test


def features(config: str) -> Features:
    task = _MNLI_LIKE.get(config, config)
    columns = [c for c in TASK_TO_KEYS[task] if c]
    label = Value("float32") if task == "stsb" else ClassLabel(names=TASK_TO_LABELS[task])
    return Features({**{c: Value("string") for c in columns}, "label": label, "idx": Value("int32")})


def _label(task: str, same: bool, i: int):
    names = TASK_TO_LABELS[task]
    if names is None:  # STS-B: a similar pair scores around 4, another around 1
        return None
    if task == "mnli":
        return 0 if same else 2 if i % 4 == 1 else 1
    agree = names.index("entailment") if "entailment" in names else 1  # acceptable, positive, equivalent, duplicate
    return agree if same else 1 - agree


def rows(rng: random.Random, config: str, split: str, n: int) -> dict:
    """n rows of one split; a pair task's pairs agree every other row (corpus.pairs)."""
    task = _MNLI_LIKE.get(config, config)
    columns = [c for c in TASK_TO_KEYS[task] if c]
    out = {c: [] for c in columns}
    out["label"], out["idx"] = [], []
    hidden = split.startswith("test") and task != "mrpc"  # the hub's test labels are -1, MRPC's are given
    for i, (s1, s2, same) in enumerate(pairs(rng, n)):
        if len(columns) == 1:
            out[columns[0]].append(sentence(rng, POSITIVE if same else NEGATIVE))
        else:
            out[columns[0]].append(s1)
            out[columns[1]].append(s2)
        label = _label(task, same, i)
        if label is None:
            label = round((4.0 if same else 1.0) + rng.uniform(-1, 1), 2)
        out["label"].append(-1 if hidden else label)
        out["idx"].append(i)
    return out


def write_glue(path: str, configs=CONFIGS, sizes: dict | None = None, seed: int = 11) -> str:
    """The repository in `path`: one folder of parquet shards per config and README.md."""
    sizes = {**SIZES, **(sizes or {})}
    rng = random.Random(seed)
    repo = HubRepo(path)
    for config in configs:
        splits = SPLITS.get(config, ("train", "validation", "test"))
        data = {s: rows(rng, config, s, sizes[s.split("_")[0]]) for s in splits}
        repo.add(config, config, data, features(config))
    repo.finish("GLUE")
    return path
