"""Task metrics: GLUE's (through scikit-learn and SciPy), accuracy, and SQuAD v1.1's EM / F1.

GLUE metric per task (the GLUE benchmark's definitions, as in transformers' run_glue.py):

| task                          | metrics                                  | primary               |
|-------------------------------|------------------------------------------|-----------------------|
| cola                          | Matthews correlation                     | matthews_correlation  |
| stsb (regression)             | Pearson and Spearman correlation         | pearson               |
| mrpc, qqp                     | accuracy and F1 of the positive class    | accuracy              |
| sst2, mnli, qnli, rte, wnli   | accuracy                                 | accuracy              |

SQuAD v1.1: `normalize_answer`, `exact_match` and `f1` follow the official evaluation script
(evaluate-v1.1.py) line for line — lower case, strip punctuation, drop the articles a/an/the, collapse
whitespace; F1 over the bag of normalized tokens; the maximum over the gold answers; reported in
percent. They are written out here because they *are* that script's definition and no installed
library ships it (the `evaluate` package wraps the same file and needs the hub to load it).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

GLUE_METRICS = {
    "cola": ("matthews_correlation",),
    "stsb": ("pearson", "spearmanr"),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    "sst2": ("accuracy",),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}


def accuracy(predictions, labels) -> dict[str, float]:

    return {"accuracy": float(accuracy_score(labels, predictions))}


def glue_metrics(task: str, predictions, labels) -> dict[str, float]:
    """GLUE metrics of `task` for class ids (or, for stsb, real-valued scores) against the labels."""

    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if task == "cola":
        return {"matthews_correlation": float(matthews_corrcoef(labels, predictions))}
    if task == "stsb":
        return {
            "pearson": float(pearsonr(predictions, labels)[0]),
            "spearmanr": float(spearmanr(predictions, labels)[0]),
        }
    out = accuracy(predictions, labels)
    if task in ("mrpc", "qqp"):
        out["f1"] = float(f1_score(labels, predictions))
    return out


# -- SQuAD v1.1 (official evaluate-v1.1.py) -------------------------------------------------------------


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (the official script's order)."""

    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def f1(prediction: str, ground_truth: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def exact_match(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def squad_metrics(predictions: Mapping[str, str], references: Mapping[str, Iterable[str]]) -> dict[str, float]:
    """{"exact_match", "f1"} in percent; `references` maps each question id to its gold answer texts.

    As in the official script, every reference question counts, and one without a prediction scores 0.
    """
    if not references:
        return {"exact_match": 0.0, "f1": 0.0}
    em_total = f1_total = 0.0
    for qid, golds in references.items():
        golds = list(golds)
        if qid not in predictions:
            continue
        pred = predictions[qid]
        em_total += max(exact_match(pred, g) for g in golds)
        f1_total += max(f1(pred, g) for g in golds)
    n = len(references)
    return {"exact_match": 100.0 * em_total / n, "f1": 100.0 * f1_total / n}
