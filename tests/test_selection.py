"""Hyperparameter axes (--grid) and their selection on validation (--select_on): cell names and flags, the choice
against a naive computation from results.jsonl, ties, lower-is-better metrics, and that test labels never matter."""

from __future__ import annotations

import csv
import json
import os
import statistics

import pytest

from helpers import RTE, tiny_rte_flags
from rmlora.cli.main import main as rmlora_main
from rmlora.errors import ConfigError
from rmlora.harness.grid import build_grid, cell_args, flag_map, parse_axes, parse_overrides
from rmlora.harness.selection import check_criterion, selected_records
from rmlora.io.run_files import read_results


def test_axes_make_one_cell_per_value_with_the_setting_in_name_and_flags():
    axes = parse_axes(["learning_rate=1e-3,1e-2", "rm-lora:reg_weight=0.01, 0.1"])
    cells = build_grid(["lora", "rm-lora"], [4], [0], axes)
    names = [c.name for c in cells]
    assert names == [
        "lora_r4_learning_rate=1e-3_s0",
        "lora_r4_learning_rate=1e-2_s0",
        "rm-lora_r4_learning_rate=1e-3_reg_weight=0.01_s0",
        "rm-lora_r4_learning_rate=1e-3_reg_weight=0.1_s0",
        "rm-lora_r4_learning_rate=1e-2_reg_weight=0.01_s0",
        "rm-lora_r4_learning_rate=1e-2_reg_weight=0.1_s0",
    ]
    flags = flag_map(cell_args(cells[3], ["--learning_rate", "5e-4", "--reg_weight", "1"], {}))
    assert flags["learning_rate"] == ("1e-3",) and flags["reg_weight"] == ("0.1",)  # the axis wins over common
    # no axis: today's names, so old comparison folders resume
    assert [c.name for c in build_grid(["lora"], [4], [0], {})] == ["lora_r4_s0"]
    # a method's own axis replaces a common axis of the same flag
    own = build_grid(["lora", "full"], [4], [0], parse_axes(["learning_rate=1e-3", "full:learning_rate=1e-5,1e-4"]))
    assert [c.name for c in own] == [
        "lora_r4_learning_rate=1e-3_s0",
        "full_learning_rate=1e-5_s0",
        "full_learning_rate=1e-4_s0",
    ]


@pytest.mark.parametrize(
    "spec, match",
    [
        ("reg_weight", "FLAG=V1,V2"),
        ("reg_weight=", "FLAG=V1,V2"),
        ("dora:reg_weight=1", "unknown method"),
        ("lora_r=4,8", "--ranks"),
        ("seed=1,2", "--seeds"),
        ("learning_rate=1e-3/2", "folder name"),
    ],
)
def test_bad_axes_are_one_clear_error(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_axes([spec])


def test_an_axis_and_an_override_of_the_same_flag_are_refused():
    (cell,) = build_grid(["lora"], [4], [0], parse_axes(["learning_rate=1e-3"]))
    with pytest.raises(ConfigError, match="keep one of them"):
        cell_args(cell, [], parse_overrides(["lora:learning_rate=1e-5"]))
    with pytest.raises(ConfigError, match="never reads the test split"):
        check_criterion("test")


def record(method, rank, setting, seed, eval_acc, test_acc, eval_loss=1.0):
    return {
        "cell": f"{method}_{setting}_{seed}",
        "method": method,
        "rank": rank,
        "seed": seed,
        "task": "rte",
        "model": "m",
        "primary_metric": "accuracy",
        "setting": setting,
        "metrics": {"eval_accuracy": eval_acc, "eval_loss": eval_loss, "test_accuracy": test_acc},
    }


def test_selection_is_the_best_validation_mean_ties_go_to_the_smaller_value_loss_is_minimized():
    records = [
        record("rm-lora", 4, {"reg_weight": "0.1"}, 0, 0.70, 0.99, eval_loss=0.5),
        record("rm-lora", 4, {"reg_weight": "0.1"}, 1, 0.60, 0.99, eval_loss=0.5),  # mean 0.65, best test
        record("rm-lora", 4, {"reg_weight": "0.01"}, 0, 0.66, 0.10, eval_loss=0.9),
        record("rm-lora", 4, {"reg_weight": "0.01"}, 1, 0.68, 0.10, eval_loss=0.9),  # mean 0.67: chosen
        record("lora", 4, {}, 0, 0.5, 0.5),
    ]
    kept, lines = selected_records(records)
    assert sorted((r["method"], r["seed"], r.get("selected_setting")) for r in kept) == [
        ("lora", 0, None),
        ("rm-lora", 0, "reg_weight=0.01"),
        ("rm-lora", 1, "reg_weight=0.01"),
    ]
    assert len(lines) == 1 and "rm-lora R=4: reg_weight=0.01 selected" in lines[0] and "0.6500" in lines[0]
    # another validation metric: the lower loss wins
    kept, _ = selected_records(records, "validation:loss")
    assert {r.get("selected_setting") for r in kept if r["method"] == "rm-lora"} == {"reg_weight=0.1"}
    # a tie: the setting whose value is smaller as a number (0.01 < 0.1 although "0.1" < "0.01" is false either way)
    tie = [record("lora", 4, {"learning_rate": v}, 0, 0.5, 0.5) for v in ("2e-3", "1e-2", "5e-4")]
    kept, _ = selected_records(list(reversed(tie)))
    assert [r["selected_setting"] for r in kept] == ["learning_rate=5e-4"]


def tiny_grid_argv(model, out, test_file, extra=()):
    return [
        "compare",
        "--output_dir",
        out,
        "--methods",
        "rm-lora",
        "--ranks",
        "4",
        "--seeds",
        "0,1",
        "--grid",
        "learning_rate=1e-3,3e-2",
        "--select_on",
        "validation:loss",  # continuous: on 12 validation rows two settings rarely tie in loss
        "--no_progress",
        *tiny_rte_flags(model, learning_rate=None),
        "--test_file",
        test_file,
        *extra,
    ]


def write_test_file(path, flip):
    with open(os.path.join(RTE, "validation.tsv"), newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    swap = {"entailment": "not_entailment", "not_entailment": "entailment"}
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(rows[0])
        for row in rows[1:]:
            writer.writerow(row[:-1] + [swap[row[-1]] if flip else row[-1]])
    return str(path)


def naive_choice(results_path):
    """Per setting, the mean eval_loss over seeds straight from results.jsonl; the lowest (smaller lr on a tie)."""
    means = {}
    with open(results_path) as f:
        for line in f:
            r = json.loads(line)
            means.setdefault(r["setting"]["learning_rate"], []).append(r["metrics"]["eval_loss"])
    assert all(len(v) == 2 for v in means.values())
    means = {k: statistics.mean(v) for k, v in means.items()}
    best = min(means.values())
    return min((float(k), k) for k, v in means.items() if v == best)[1], means


def test_selection_on_the_tiny_grid_follows_validation_and_ignores_test_labels(tmp_path, monkeypatch, saved_figures):
    from helpers import save_text_model, tmp_env

    tmp_env(monkeypatch, tmp_path)
    model = save_text_model(str(tmp_path / "tiny-bert"))
    reports = {}
    choices = {}
    tests = {}
    for flip in (False, True):
        out = str(tmp_path / f"cmp_{flip}")
        test_file = write_test_file(tmp_path / f"test_{flip}.tsv", flip)
        assert rmlora_main(tiny_grid_argv(model, out, test_file)) == 0
        choice, means = naive_choice(os.path.join(out, "results.jsonl"))
        choices[flip] = (choice, means)
        with open(os.path.join(out, "selection.json")) as f:  # what scripts read
            (chosen,) = json.load(f)["chosen"]
        assert chosen["setting"] == {"learning_rate": choice} and chosen["metric"] == "eval_loss"
        records = read_results(out).records
        tests[flip] = sorted((r["cell"], r["metrics"]["test_loss"]) for r in records)
        reports[flip] = open(os.path.join(out, "report.md"), encoding="utf-8").read()
        rows = [line for line in reports[flip].splitlines() if line.startswith("| RM-LoRA")]
        # the tables show the chosen setting only, named in the row, with its mean test accuracy
        assert rows and all(f"(learning_rate={choice})" in row for row in rows)
        chosen_tests = [r["metrics"]["test_accuracy"] for r in records if r["setting"]["learning_rate"] == choice]
        assert f"{statistics.mean(chosen_tests):.3f}" in rows[0] or f"{statistics.mean(chosen_tests):.2f}" in rows[0]
    assert len(set(choices[False][1].values())) == 2  # the two settings differ on validation: a real choice
    assert choices[False] == choices[True]  # validation identical, so the same choice
    assert tests[False] != tests[True]  # while the test metrics did change: the test above can fail
