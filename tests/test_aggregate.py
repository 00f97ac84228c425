"""Aggregation over seeds against numbers computed by hand."""

from __future__ import annotations

import math

import pytest

from rmlora.harness.aggregate import best_rows, group_by, higher_is_better, mean_std, metric_names, split_of


def test_mean_and_sample_std_by_hand():
    # [1, 2, 4]: mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9; / (n - 1) = 7/3
    s = mean_std([1, 2, 4])
    assert s.n == 3
    assert s.mean == pytest.approx(7 / 3, abs=1e-12)
    assert s.std == pytest.approx(math.sqrt(7 / 3), abs=1e-12)  # 1.5275..., not the population 1.2472...
    assert s.std != pytest.approx(math.sqrt(14 / 9))


def test_mean_std_of_accuracies():
    # 0.80, 0.84, 0.86: mean 0.8333..., deviations -1/30, 1/150, 2/75 -> sum of squares 0.0018667, / 2 -> 0.00093333
    s = mean_std([0.80, 0.84, 0.86])
    assert s.mean == pytest.approx(0.833333, abs=1e-6)
    assert s.std == pytest.approx(0.030551, abs=1e-6)


def test_one_seed_has_no_std_and_none_values_are_left_out():
    assert mean_std([0.5]).std is None
    s = mean_std([2.0, None, 4.0])
    assert (s.mean, s.n) == (3.0, 2)
    assert s.std == pytest.approx(math.sqrt(2.0))  # (1 + 1) / 1
    empty = mean_std([])
    assert empty.n == 0 and math.isnan(empty.mean) and empty.std is None


def test_best_rows_higher_lower_ties_and_nan():
    assert best_rows([0.81, 0.86, 0.84]) == {1}
    assert best_rows([0.81, 0.86, 0.84], higher_is_better=False) == {0}
    assert best_rows([0.86, 0.81, 0.86]) == {0, 2}
    assert best_rows([math.nan, 0.5, None]) == {1}
    assert best_rows([None, math.nan]) == set()
    # 0.8571 and 0.8574 both read 0.857 in a 3-decimal table: both are marked
    assert best_rows([0.8571, 0.8574, 0.85], ndigits=3) == {0, 1}
    assert best_rows([0.8571, 0.8574, 0.85]) == {1}


def test_direction_of_metric_names():
    for name in ("accuracy", "f1", "exact_match", "matthews_correlation", "pearson", "mean_rank"):
        assert higher_is_better(name)
    for name in ("loss", "eval_loss", "generalization_error", "mean_orthogonality_loss"):
        assert not higher_is_better(name)


def test_group_by_keeps_first_seen_order():
    records = [{"m": "b", "s": 0}, {"m": "a", "s": 0}, {"m": "b", "s": 1}]
    groups = group_by(records, ("m",))
    assert list(groups) == [("b",), ("a",)]
    assert [r["s"] for r in groups[("b",)]] == [0, 1]


def test_split_and_metric_names():
    with_test = [
        {"metrics": {"eval_accuracy": 0.8, "test_accuracy": 0.7, "test_f1": 0.6, "test_loss": 1.0, "test_runtime": 3.0}}
    ]
    assert split_of(with_test) == "test"
    assert metric_names(with_test, "test") == ["accuracy", "f1"]
    assert metric_names(with_test, "test", include_loss=True) == ["accuracy", "f1", "loss"]
    # one run without a test split makes the whole table report the validation split
    assert split_of(with_test + [{"metrics": {"eval_accuracy": 0.9}}]) == "eval"
