"""Metrics against hand-computed values: SQuAD v1.1's official normalization, EM / F1, MCC, Pearson / Spearman."""

import math

import pytest

from rmlora.tasks.metrics import accuracy, exact_match, f1, glue_metrics, normalize_answer, squad_metrics

# -- SQuAD v1.1 normalization (evaluate-v1.1.py: lower, strip punctuation, drop a/an/the, squeeze spaces) --


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Eiffel Tower", "eiffel tower"),  # article, case
        ("an apple a day", "apple day"),  # every article, wherever it stands
        ("theatre", "theatre"),  # "the" only as a whole word
        ("Paris, France!", "paris france"),  # punctuation
        ("  New   York\tCity \n", "new york city"),  # whitespace
        ("U.S.A.", "usa"),  # punctuation removed before splitting, so no spaces appear
        ("rock-n-roll", "rocknroll"),
        ("A", ""),
        ("1,000 years", "1000 years"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_after_normalization():
    assert exact_match("the Denver Broncos.", "Denver Broncos") == 1.0
    assert exact_match("Denver", "Denver Broncos") == 0.0


def test_f1_by_hand():
    # pred tokens [denver, broncos, team], gold [denver, broncos]: 2 common, P = 2/3, R = 1, F1 = 0.8
    assert f1("the Denver Broncos team", "Denver Broncos") == pytest.approx(0.8)
    # repeated tokens count with multiplicity: pred [a1, a1, b], gold [a1, b, c] -> common {a1:1, b:1} = 2
    # P = 2/3, R = 2/3, F1 = 2/3
    assert f1("paris paris london", "paris london rome") == pytest.approx(2 / 3)
    assert f1("nothing alike", "Denver") == 0.0
    assert f1("the", "a") == 0.0  # both normalize to nothing: no common token


def test_squad_metrics_max_over_gold_answers_and_missing_predictions():
    references = {
        "q1": ["Denver Broncos", "The Denver Broncos", "Broncos"],
        "q2": ["Saint Bernadette Soubirous"],
        "q3": ["1990"],
    }
    predictions = {
        "q1": "broncos",  # exact for the third gold answer
        "q2": "Bernadette Soubirous",  # P = 1, R = 2/3 -> F1 = 0.8
        # q3 has no prediction: it counts as 0, as in the official script
    }
    out = squad_metrics(predictions, references)
    assert out["exact_match"] == pytest.approx(100 * (1 + 0 + 0) / 3)
    assert out["f1"] == pytest.approx(100 * (1 + 0.8 + 0) / 3)


# -- GLUE -------------------------------------------------------------------------------------------------


def test_matthews_correlation_by_hand():
    # labels / predictions with TP = 3, TN = 2, FP = 1, FN = 2
    labels = [1, 1, 1, 1, 1, 0, 0, 0]
    preds = [1, 1, 1, 0, 0, 0, 0, 1]
    tp, tn, fp, fn = 3, 2, 1, 2
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert glue_metrics("cola", preds, labels) == {"matthews_correlation": pytest.approx(mcc)}


def test_pearson_and_spearman_by_hand():
    x = [1.0, 2.0, 3.0, 4.0]
    y = [1.0, 3.0, 2.0, 5.0]
    # Pearson: deviations x (-1.5, -0.5, 0.5, 1.5), y (-1.75, 0.25, -0.75, 2.25)
    sxy = (-1.5 * -1.75) + (-0.5 * 0.25) + (0.5 * -0.75) + (1.5 * 2.25)  # 5.5
    sxx = 1.5**2 * 2 + 0.5**2 * 2  # 5
    syy = 1.75**2 + 0.25**2 + 0.75**2 + 2.25**2  # 8.75
    pearson = sxy / math.sqrt(sxx * syy)
    # Spearman: ranks x (1, 2, 3, 4), y (1, 3, 2, 4): d² = 0 + 1 + 1 + 0 = 2 -> 1 - 6·2 / (4·15) = 0.8
    out = glue_metrics("stsb", x, y)
    assert out["pearson"] == pytest.approx(pearson)
    assert out["spearmanr"] == pytest.approx(0.8)


def test_accuracy_and_f1_of_mrpc():
    labels = [1, 0, 1, 1, 0]
    preds = [1, 1, 1, 0, 0]
    # accuracy 3/5; positive class: TP 2, FP 1, FN 1 -> P = R = 2/3, F1 = 2/3
    assert glue_metrics("mrpc", preds, labels) == {"accuracy": pytest.approx(0.6), "f1": pytest.approx(2 / 3)}
    assert glue_metrics("rte", preds, labels) == {"accuracy": pytest.approx(0.6)}
    assert accuracy(preds, labels) == {"accuracy": pytest.approx(0.6)}


# -- STS-B predictions from the shapes real models return ------------------------------------------------------


def _regression_logits(kind: str):
    """Logits of a tiny regression model (num_labels=1) given labels, as the Trainer's evaluation calls it."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DebertaV2Config,
        DebertaV2ForSequenceClassification,
    )

    torch.manual_seed(0)
    sizes = dict(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24)
    if kind == "deberta-v2":
        model = DebertaV2ForSequenceClassification(DebertaV2Config(**sizes, num_labels=1))
    else:
        model = BertForSequenceClassification(BertConfig(**sizes, num_labels=1))
    ids = torch.randint(1, 40, (6, 5), generator=torch.Generator().manual_seed(1))
    labels = torch.linspace(0.0, 5.0, 6)
    with torch.no_grad():
        return model.eval()(input_ids=ids, labels=labels).logits.numpy(), labels.numpy()


@pytest.mark.parametrize("kind, shape", [("deberta-v2", (6,)), ("bert", (6, 1))])
def test_stsb_metrics_accept_the_logits_of_deberta_and_bert(kind, shape):
    from types import SimpleNamespace

    from scipy.stats import pearsonr, spearmanr

    from rmlora.tasks.glue import GlueTask

    logits, labels = _regression_logits(kind)
    assert logits.shape == shape  # DeBERTa-v2 flattens regression logits, BERT keeps (N, 1)
    data_args = SimpleNamespace(label_column=None, text_column=None, text_pair_column=None)
    task = GlueTask("stsb", SimpleNamespace(), data_args)
    m = task.compute_metrics(SimpleNamespace(predictions=logits, label_ids=labels))
    scores = logits.reshape(-1)
    assert m["pearson"] == pytest.approx(pearsonr(scores, labels)[0])
    assert m["spearmanr"] == pytest.approx(spearmanr(scores, labels)[0])
