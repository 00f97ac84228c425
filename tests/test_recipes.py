"""Recipes: the file format, the built-in recipes' contents against the paper, the cells and their flags, tuning
stages, the estimate, and every paper recipe run end to end at smoke scale with its report.

The expected values here are typed from the paper (Table 4's hyperparameters, Tables 1–3 and 5's rows), not read
from the recipe files, so a wrong number in a recipe fails a test. Where the paper's text is at hand (the
project's shared folder, absent from a user's clone) the recipes' numbers are also checked against it.
"""

from __future__ import annotations

import json
import math
import os
import re

import pytest

from rmlora.cli.main import main
from rmlora.errors import ConfigError
from rmlora.harness.arguments import parse_args
from rmlora.recipes import (
    FROM_FILE,
    asset_resolver,
    build_cells,
    builtin_names,
    chosen_values,
    estimate,
    flags_of_cell,
    load_recipe,
    parse_recipe,
)
from rmlora.recipes.cells import argv_of, candidate_text, candidates, check_flags
from rmlora.recipes.format import tomllib

PAPER_RECIPES = ["paper/table1", "paper/table2", "paper/table3", "paper/table5", "paper/figure1", "paper/figure2"]
PAPER_TEXT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "paper", "rm-lora-paper.txt")

# Table 4 of the paper: task -> (epochs, SoRA λ)
TABLE4 = {
    "cola": (3, 0.001),
    "sst2": (3, 0.005),
    "mrpc": (5, 0.001),
    "stsb": (3, 0.001),
    "qqp": (3, 0.005),
    "qnli": (3, 0.0001),
    "mnli": (3, 0.005),
    "wnli": (5, 0.01),
    "rte": (3, 0.005),
}
TABLE1_ROWS = [
    ("full", None), ("lora", 4), ("adalora", 4), ("sora", 4), ("r-lora", 4), ("rm-lora", 4),
    ("lora", 8), ("adalora", 8), ("sora", 8), ("r-lora", 8), ("rm-lora", 8),
]  # fmt: skip


def run_cli(argv, capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


# -- the format ---------------------------------------------------------------------------------------


def test_list_shows_the_six_paper_recipes_and_the_results_experiments(capsys):
    rc, out, _ = run_cli(["recipe", "list"], capsys)
    assert rc == 0
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert names[:6] == sorted(PAPER_RECIPES)
    assert {f"results/exp{i}" for i in range(1, 8)} <= {re.sub(r"^(results/exp\d).*", r"\1", n) for n in names}


def _sources(recipe):
    yield "seeds", recipe.seeds
    for k, v in recipe.train.items():
        yield f"[train].{k}", v
    for task in recipe.tasks.values():
        for k, v in task.flags.items():
            yield f"[tasks.{task.id}].{k}", v
        for method, flags in task.methods.items():
            for k, v in flags.items():
                yield f"[tasks.{task.id}.methods.{method}].{k}", v
        for k, v in task.tune.items():
            yield f"[tasks.{task.id}.tune].{k}", v
        for key in ("train_examples", "rank"):
            if getattr(task, key) is not None:
                yield f"[tasks.{task.id}].{key}", getattr(task, key)
    for row in recipe.rows:
        for key in ("rank", "init_rank"):
            if getattr(row, key) is not None:
                yield f"row {row.id}.{key}", getattr(row, key)
        for k, v in {**row.flags, **row.tune}.items():
            yield f"row {row.id}.{k}", v
    for k, v in recipe.estimate.items():
        yield f"[estimate].{k}", v
    if recipe.tuning:
        yield "[tuning].seeds", recipe.tuning.seeds


@pytest.mark.parametrize("name", builtin_names())
def test_every_value_of_a_builtin_recipe_says_where_it_comes_from(name):
    recipe = load_recipe(name)
    missing = [where for where, value in _sources(recipe) if value.source == FROM_FILE or not value.source.strip()]
    assert not missing, f"{name}: values without a source: {missing}"
    check_flags(recipe)  # every flag is an `rmlora train` flag


def _recipe(text: str):
    return parse_recipe(tomllib.loads(text))


MINIMAL = """
name = "mine"
[train]
learning_rate = 1e-3
[tasks.rte]
task_name = "rte"
train_examples = 100
[[rows]]
method = "lora"
rank = 4
"""


@pytest.mark.parametrize(
    "edit, message",
    [
        ("seedz = [0]\n", "unknown key 'seedz' in the recipe's top level (did you mean 'seeds'?); valid keys: name,"),
        ('[[columns]]\nid = "a"\nmetrik = "accuracy"\n', "unknown key 'metrik' in [[columns]] #1"),
        ('[[rows]]\nmethod = "rm-lora"\nrank = 4\nrnak = 2\n', "unknown key 'rnak' in [[rows]] #2"),
        ("[estimate]\nstep_time = 1\n", "unknown key 'step_time' in [estimate] (did you mean 'step_time_s'?)"),
        ("[scales.smoke]\nsteps = 2\n", "unknown key 'steps' in [scales.smoke]"),
    ],
)
def test_an_unknown_key_is_one_line_naming_it_where_it_is_and_the_valid_keys(edit, message):
    with pytest.raises(ConfigError) as e:
        _recipe(edit + MINIMAL if "top level" in message else MINIMAL + edit)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_an_unknown_train_flag_is_named_with_the_closest_real_one():
    recipe = _recipe(MINIMAL.replace("learning_rate = 1e-3", "learnin_rate = 1e-3"))
    with pytest.raises(
        ConfigError, match=r"'learnin_rate' is not an `rmlora train` flag; did you mean 'learning_rate'"
    ):
        check_flags(recipe)
    with pytest.raises(ConfigError, match="lora_r is set per cell by the recipe"):
        check_flags(_recipe(MINIMAL.replace("learning_rate = 1e-3", "lora_r = 4")))


def test_a_recipe_file_runs_through_the_cli_and_a_plain_value_says_it_comes_from_the_file(tmp_path, capsys):
    path = tmp_path / "mine.toml"
    path.write_text(MINIMAL, encoding="utf-8")
    rc, out, err = run_cli(["recipe", "run", str(path), "--dry_run", "--json", "--step_time_s", "0.5"], capsys)
    assert rc == 0
    (cell,) = [json.loads(line) for line in out.splitlines()]
    assert cell["flags"]["learning_rate"] == 1e-3 and cell["from"]["learning_rate"] == FROM_FILE
    assert cell["method"] == "lora" and cell["lora_r"] == 4 and cell["seed"] == 0
    # 100 examples, batch 8 (the Trainer's default here), 3 epochs: ceil(100 / 8) * 3 = 39 steps × 0.5 s
    assert "0.0 device-hours for 1 cells" in err and "39 optimizer steps" in err


# -- the paper recipes against the paper ------------------------------------------------------------------------


def test_table1_dry_run_is_eleven_rows_by_nine_tasks_by_three_seeds_with_table4_per_task(capsys):
    rc, out, err = run_cli(["recipe", "run", "paper/table1", "--dry_run", "--json"], capsys)
    assert rc == 0
    cells = [json.loads(line) for line in out.splitlines()]
    assert len(cells) == 11 * 9 * 3
    seen = {
        (c["task"], c["method"], c["lora_r"] if c["method"] in ("lora", "r-lora", "rm-lora") else c["row"], c["seed"])
        for c in cells
    }
    assert len(seen) == len(cells)
    for c in cells:
        flags = c["flags"]
        epochs, sora_lambda = TABLE4[c["task"]]
        assert flags["task_name"] == c["task"] and flags["model_name_or_path"] == "microsoft/deberta-v3-base"
        assert flags["num_train_epochs"] == epochs and flags["per_device_train_batch_size"] == 32
        assert flags["learning_rate"] == (1e-5 if c["method"] == "full" else 1e-3)
        assert ("sora_xi" in flags) == (c["method"] == "sora")
        if c["method"] == "sora":
            assert flags["sora_xi"] == sora_lambda and "Table 4" in c["from"]["sora_xi"]
        if c["method"] == "full":
            assert c["lora_r"] is None
        rank = 4 if c["row"].endswith("_r4") else 8
        if c["method"] == "adalora":  # 1.92M trainable at R = 4 = LoRA R=8's count: it starts at 2R
            assert (flags["adalora_init_r"], flags["adalora_target_r"], flags["lora_r"]) == (2 * rank, rank, rank)
        elif c["method"] == "sora":
            assert flags["lora_r"] == 2 * rank
        elif c["method"] != "full":
            assert flags["lora_r"] == rank
    ranks = {(c["method"], c["lora_r"] if c["method"] != "sora" else c["lora_r"] // 2) for c in cells}
    ranks = {(m, r) for m, r in ranks if m != "adalora"}
    ranks |= {("adalora", c["flags"]["adalora_target_r"]) for c in cells if c["method"] == "adalora"}
    assert ranks == {(m, r) if r else ("full", None) for m, r in TABLE1_ROWS}
    assert re.search(r"estimate: [\d.]+ device-hours for 297 cells", err)
    assert "per-step time: 0.15 s, the recipe's default" in err


def _paper_rows(table: str) -> list[list[float]]:
    """The numbers of each row of a table in the paper's text (rows between the table's caption and the next one)."""
    with open(PAPER_TEXT, encoding="utf-8") as f:
        text = f.read()
    start = text.index(table)
    block = text[start:]
    lines = []
    for line in block.splitlines()[1:]:
        if line.startswith(("Table ", "Figure ", "5.", "the test loss")) or not line.strip():
            if lines:
                break
            continue
        numbers = [float(x) for x in re.findall(r"(?<![\w.=])(\d+\.\d+)(?![\dM])", line.replace("±", " "))]
        if numbers:
            lines.append(numbers)
    return lines


@pytest.mark.skipif(not os.path.exists(PAPER_TEXT), reason="the paper's text is not in this checkout")
def test_the_recipes_numbers_are_the_papers():
    t1 = load_recipe("paper/table1")
    rows = [r for r in _paper_rows("Table 1: Results with DeBERTaV3 model on GLUE benchmark") if len(r) >= 12]
    assert len(rows) == 11
    for row, numbers in zip(t1.rows, rows):
        assert [row.paper[c.id] for c in t1.columns] == numbers[-12:], row.id
    for name, caption in (("paper/table2", "Table 2: Results"), ("paper/table3", "Table 3: Results")):
        recipe = load_recipe(name)
        got = [[row.paper[c][k] for c in ("em", "f1") for k in ("mean", "std")] for row in recipe.rows]
        assert got == [r[-4:] for r in _paper_rows(caption)], name
    t5 = load_recipe("paper/table5")
    got = [[row.paper["orth_loss"], row.paper["acc"]["mean"], row.paper["acc"]["std"]] for row in t5.rows]
    assert got == [r[-3:] for r in _paper_rows("Table 5: Correlation")]


def test_figure1_is_table5_plus_full_fine_tuning_of_the_classifier():
    t5, f1 = load_recipe("paper/table5"), load_recipe("paper/figure1")
    assert [r.id for r in f1.rows] == [r.id for r in t5.rows] + ["full"]
    assert f1.train == t5.train and f1.columns == t5.columns
    assert {(r.method, r.rank.value) for r in t5.rows} == {
        (m, R) for m in ("lora", "gm-lora", "r-lora", "rm-lora") for R in (32, 64, 80)
    }
    assert t5.train["lora_placement"].value == "head" and t5.train["num_train_epochs"].value == 60


# -- stages, inheritance, candidates ---------------------------------------------------------------------------

CHAIN = """
name = "chain"
seeds = [5]
[tuning]
seeds = [0, 1]
[tasks.a]
task_name = "rte"
[tasks.b]
task_name = "mrpc"
tune.learning_rate = [0.3, 0.4]
[[rows]]
id = "base"
method = "lora"
rank = 4
tune = { learning_rate = [0.1, 0.2] }
[[rows]]
id = "pen"
method = "rm-lora"
rank = 4
inherit = { learning_rate = "base" }
tune = { penalty = [{ label = "on", reg_weight = 0.01, r_hat = 0.5 }, \
                   { label = "off", reg_weight = 0.0, r_hat = 1.0 }] }
[[rows]]
id = "again"
method = "rm-lora"
rank = 4
tasks = ["a"]
inherit = { penalty = "pen" }
tune = { learning_rate = [0.5, 0.6] }
"""


def _record(cell, accuracy: float) -> dict:
    return {"cell": cell.name, "stage": cell.stage, "recipe_task": cell.task, "row": cell.row, "task": "t",
            "model": "m", "method": cell.method, "rank": cell.rank, "seed": cell.seed, "setting": dict(cell.setting),
            "primary_metric": "accuracy", "metrics": {"eval_accuracy": accuracy, "test_accuracy": 1.0}}  # fmt: skip


def test_tuning_runs_in_waves_and_final_cells_take_each_rows_choice_made_on_validation():
    recipe = _recipe(CHAIN)
    wave0 = build_cells(recipe, stage="tune:0")
    assert {c.row for c in wave0} == {"base"}
    # task b replaces the row's lr candidates with its own
    assert {(c.task, c.setting) for c in wave0} == {
        ("a", (("learning_rate", "0.1"),)), ("a", (("learning_rate", "0.2"),)),
        ("b", (("learning_rate", "0.3"),)), ("b", (("learning_rate", "0.4"),)),
    }  # fmt: skip
    # validation prefers 0.2 on a and 0.3 on b; the test split (1.0 everywhere) never counts
    records = [_record(c, {"0.1": 0.5, "0.2": 0.7, "0.3": 0.9, "0.4": 0.6}[c.setting[0][1]]) for c in wave0]
    chosen = chosen_values(recipe, records)
    assert chosen == {("a", "base"): {"learning_rate": "0.2"}, ("b", "base"): {"learning_rate": "0.3"}}
    wave1 = build_cells(recipe, stage="tune:1")
    assert {c.row for c in wave1} == {"pen"}
    for c in wave1:
        flags = flags_of_cell(recipe, c, chosen)
        assert flags["learning_rate"].value == chosen[(c.task, "base")]["learning_rate"]
        # a bundle candidate sets its flags, not a flag named after the axis
        assert "penalty" not in flags
        assert (flags["reg_weight"].value, flags["r_hat"].value) == {"on": (0.01, 0.5), "off": (0.0, 1.0)}[
            c.setting[0][1]
        ]
    records += [_record(c, 0.8 if c.setting[0][1] == "off" else 0.6) for c in wave1]
    chosen = chosen_values(recipe, records)
    wave2 = build_cells(recipe, stage="tune:2")
    assert {(c.row, c.task) for c in wave2} == {("again", "a")}
    records += [_record(c, 0.9 if c.setting[0][1] == "0.6" else 0.1) for c in wave2]
    chosen = chosen_values(recipe, records)
    final = {(c.task, c.row): flags_of_cell(recipe, c, chosen) for c in build_cells(recipe, stage="final")}
    assert {c.seed for c in build_cells(recipe, stage="final")} == {5}
    assert final[("a", "base")]["learning_rate"].value == "0.2"
    assert final[("b", "pen")]["learning_rate"].value == "0.3" and final[("b", "pen")]["reg_weight"].value == 0.0
    # "again" inherits pen's penalty (off) and tunes its own lr
    assert final[("a", "again")]["reg_weight"].value == 0.0 and final[("a", "again")]["learning_rate"].value == "0.6"
    assert "chosen on validation" in final[("a", "again")]["learning_rate"].source


def test_a_final_cell_waits_for_its_tuning():
    recipe = _recipe(CHAIN)
    with pytest.raises(ConfigError, match="must be chosen on validation first"):
        from rmlora.recipes.runner import RecipeSelection, cell_argv

        cell_argv(recipe, build_cells(recipe, stage="final")[0], {}, RecipeSelection(), None)


def test_the_estimate_is_steps_times_the_step_time_plus_evaluation():
    recipe = _recipe(MINIMAL + "[estimate]\nstep_time_s = 0.5\neval_overhead = 0.25\n")
    recipe.train["per_device_train_batch_size"] = recipe.train["learning_rate"].__class__(32)
    recipe.train["num_train_epochs"] = recipe.train["learning_rate"].__class__(5)
    cells = build_cells(recipe, seeds=[0, 1, 2])
    result = estimate(recipe, cells, lambda c: flags_of_cell(recipe, c))
    steps = math.ceil(100 / 32) * 5  # per cell
    assert result.steps == 3 * steps
    assert result.device_hours == pytest.approx(3 * steps * 0.5 * 1.25 / 3600)


def test_an_asset_token_becomes_its_path_and_a_dry_run_builds_nothing(tmp_path):
    resolve = asset_resolver(str(tmp_path / "smoke"), str(tmp_path / "assets"), build=False)
    assert resolve("smoke:gpt2") == str(tmp_path / "smoke" / "gpt2")
    assert resolve("asset:wordnet/train.csv") == str(tmp_path / "assets" / "wordnet" / "train.csv")
    assert resolve("plain") == "plain"
    assert not os.path.exists(tmp_path / "smoke") and not os.path.exists(tmp_path / "assets")


@pytest.mark.parametrize("name", [n for n in builtin_names() if n.startswith("results/")])
def test_every_results_recipe_cell_parses_with_rmlora_train(name, tmp_path):
    recipe = load_recipe(name)
    resolve = asset_resolver(str(tmp_path / "smoke"), str(tmp_path / "assets"), build=False)
    # as if stage tune had chosen each axis's first candidate
    chosen = {
        (task.id, row.id): {axis: candidate_text(c.value[0]) for axis, c in candidates(row, task).items()}
        for task in recipe.tasks.values()
        for row in recipe.rows_of(task.id)
    }
    # cells that differ only in their seed have the same flags but for --seed: parse each distinct argv once
    argvs = {tuple(argv_of(flags_of_cell(recipe, cell, chosen), resolve)) for cell in build_cells(recipe)}
    for argv in argvs:
        parse_args([*argv, "--output_dir", str(tmp_path / "x")])


# the settings the recorded numbers of docs/RESULTS.md were made with (the former experiments/*.sh)
PINNED = {
    "results/exp1_fmnist_head": {
        "reg_form": "squared",
        "reg_reduction": "sum",
        "learning_rate": 5e-3,
        "num_train_epochs": 60,
        "image_size": 112,
    },
    "results/exp1_fmnist_head_e120": {
        "reg_form": "squared",
        "reg_reduction": "sum",
        "reg_weight": 0.001,
        "r_hat": 0.75,
        "num_train_epochs": 120,
    },
    "results/exp2_tweets_minilm": {
        "reg_form": "squared",
        "reg_reduction": "sum",
        "learning_rate": 1e-3,
        "max_train_samples": 960,
    },
    "results/exp3a_fmnist_attention": {
        "reg_weight": 0.001,
        "r_hat": 0.75,
        "max_train_samples": 400,
        "num_train_epochs": 2,
    },
    "results/exp3b_fmnist_attention": {
        "reg_weight": 0.001,
        "r_hat": 0.75,
        "max_train_samples": 720,
        "num_train_epochs": 4,
    },
    "results/exp5_wordnet_minilm": {
        "learning_rate": 0.1,
        "reg_form": "frd",
        "reg_weight": 0.001,
        "r_hat": 0.75,
        "step_compensation": "linear",
    },
    "results/exp6_tweets_large_r": {
        "learning_rate": 2e-3,
        "reg_form": "frd",
        "reg_weight": 0.001,
        "r_hat": 0.75,
        "step_compensation": "none",
    },
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_each_results_recipe_pins_the_settings_its_numbers_were_recorded_with(name):
    recipe = load_recipe(name)
    values = {k: v.value for k, v in recipe.train.items()}
    assert {k: values.get(k) for k in PINNED[name]} == PINNED[name]


# -- smoke scale, end to end ---------------------------------------------------------------------------------


def _smoke_run(tmp_path, name, extra=(), capsys=None):
    out = tmp_path / name.replace("/", "-")
    argv = ["recipe", "run", name, "--scale", "smoke", "--output_dir", str(out), "--no_progress"]
    argv += ["--smoke_dir", str(tmp_path.parent / "smoke-assets")]
    assert main([*argv, *extra]) == 0
    with open(out / "report.md", encoding="utf-8") as f:
        return out, f.read()


def _check_report(recipe, report: str) -> None:
    for column in recipe.columns:
        assert f"| {column.label} " in report or f"| {column.label} |" in report, column.label
    for row in recipe.rows:
        line = next(line for line in report.splitlines() if line.startswith(f"| {row.label} |"))
        for column in recipe.columns:
            paper = row.paper.get(column.id)
            mean = paper.get("mean") if isinstance(paper, dict) else paper
            if mean is not None:  # the paper's number stands beside ours
                shown = [f"({mean:.2f}", f"({mean:.3f}", f"({mean};", f"({mean} "]
                assert any(s in line for s in shown), (row.label, column.id, line)
        if row.paper.get("params"):
            assert f"({row.paper['params']})" in line


@pytest.fixture(scope="module")
def smoke_tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("recipes")


def test_table1_at_smoke_scale_on_cola_and_stsb_reports_every_row_beside_the_paper(smoke_tmp):
    out, report = _smoke_run(smoke_tmp, "paper/table1", ["--tasks", "cola", "stsb"])
    recipe = load_recipe("paper/table1", "smoke")
    _check_report(recipe, report)
    assert "Smoke scale" in report and "at least as good as LoRA at equal R" in report
    records = [json.loads(line) for line in open(out / "results.jsonl", encoding="utf-8")]
    assert len(records) == 2 * 11
    for r in records:  # each cell ran with the recipe's flags: Table 4 per task
        args = r["train_args"]
        epochs, sora_lambda = TABLE4[r["recipe_task"]]
        assert args[args.index("--num_train_epochs") + 1] == str(epochs)
        assert ("--sora_xi" in args) == (r["method"] == "sora")
        if r["method"] == "sora":
            assert float(args[args.index("--sora_xi") + 1]) == sora_lambda
        assert (
            r["metrics"].get("eval_pearson" if r["recipe_task"] == "stsb" else "eval_matthews_correlation") is not None
        )
    assert os.path.exists(out / "figures" / "versus-paper.png")
    # a second run resumes: nothing retrains
    assert main(["recipe", "run", "paper/table1", "--scale", "smoke", "--output_dir", str(out), "--no_progress",
                 "--tasks", "cola", "stsb", "--smoke_dir", str(smoke_tmp.parent / "smoke-assets")]) == 0  # fmt: skip
    assert len(open(out / "results.jsonl", encoding="utf-8").read().splitlines()) == 22
    # another recipe in the same folder is refused
    with pytest.raises(ConfigError, match="holds recipe paper/table1"):
        from rmlora.cli.recipe import main as recipe_main

        recipe_main(["run", "paper/table2", "--scale", "smoke", "--output_dir", str(out)])


@pytest.mark.parametrize("name", ["paper/table2", "paper/table3", "paper/table5", "paper/figure1", "paper/figure2"])
def test_each_paper_recipe_at_smoke_scale_reports_every_row_and_column_beside_the_paper(smoke_tmp, name):
    out, report = _smoke_run(smoke_tmp, name)
    recipe = load_recipe(name, "smoke")
    _check_report(recipe, report)
    records = [json.loads(line) for line in open(out / "results.jsonl", encoding="utf-8")]
    assert {r["row"] for r in records} == {row.id for row in recipe.rows}
    if recipe.layout == "table5":
        for figure in ("curves.png", "spectra.png", "versus-paper.png" if recipe.paper != "Figure 2" else "curves.png"):
            assert os.path.exists(out / "figures" / figure), figure
