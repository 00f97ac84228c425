"""The grid runner: cells, overrides, resume after a kill, atomic results, the CLI.

A stand-in for `rmlora train` (FakeTrain) writes a finished run's files as the contract says, so that
resume is tested in milliseconds; the real `rmlora train` runs in the tiny end-to-end test at the end.
"""

from __future__ import annotations

import json
import os

import pytest

import rmlora.harness.sweep as sweep_mod
from helpers import tiny_rte_flags
from rmlora.cli.main import main as rmlora_main
from rmlora.errors import ConfigError, DataError
from rmlora.harness.grid import Cell, build_grid, cell_args, cell_ranks, flag_map, parse_overrides
from rmlora.harness.sweep import Sweep
from rmlora.io.atomic import write_json
from rmlora.io.run_files import append_result, read_results

COMMON = ["--model_name_or_path", "tiny", "--task_name", "rte", "--num_train_epochs", "2"]


class FakeTrain:
    """Writes history.jsonl (appending, so leftovers of an interrupted run would show), diagnostics.json
    and, last, metrics.json; `interrupt_at` / `fail_at` stop a cell after its first epoch."""

    def __init__(self, interrupt_at=None, fail_at=None):
        self.calls: list[str] = []
        self.argv: dict[str, list[str]] = {}
        self.interrupt_at, self.fail_at = interrupt_at, fail_at

    def __call__(self, argv):
        flags = flag_map(argv)
        out, method, seed = flags["output_dir"][0], flags["method"][0], int(flags["seed"][0])
        rank = int(flags["lora_r"][0]) if "lora_r" in flags else None
        name = Cell(method, rank, seed).name
        self.calls.append(name)
        self.argv[name] = list(argv)
        with open(os.path.join(out, "history.jsonl"), "a") as f:
            f.write(
                json.dumps(
                    {
                        "epoch": 1.0,
                        "train_loss": 1.0,
                        "eval_loss": 1.1,
                        "train_accuracy": 0.7,
                        "eval_accuracy": 0.6,
                        "generalization_error": 0.1,
                    }
                )
                + "\n"
            )
        if name == self.interrupt_at:
            raise KeyboardInterrupt
        if name == self.fail_at:
            raise RuntimeError("out of memory")
        acc = 0.5 + 0.01 * seed + (0.1 if method == "rm-lora" else 0.0)
        diagnostics = None
        if method != "full":
            diagnostics = {
                "modules": [
                    {
                        "module": "m",
                        "rank": rank,
                        "lora_rank": rank,
                        "singular_values": [1.0] * rank,
                        "orthogonality_loss": 0.0,
                    }
                ],
                "summary": {"mean_rank": rank, "mean_orthogonality_loss": 1.0},
            }
            write_json(os.path.join(out, "diagnostics.json"), diagnostics)
        metrics = {
            "method": method,
            "lora_r": rank,
            "seed": seed,
            "task": "rte",
            "model": "tiny",
            "primary_metric": "accuracy",
            "metrics": {"eval_accuracy": acc, "eval_loss": 1.0},
            "param_counts": {"trainable": 100, "inference": 100},
            "wall_time_s": 0.1,
            "versions": {},
        }
        if diagnostics:
            metrics["diagnostics"] = diagnostics["summary"]
        write_json(os.path.join(out, "metrics.json"), metrics)
        return 0


def cells_of(path):
    return [r["cell"] for r in read_results(path).records]


# -- grid, overrides ----------------------------------------------------------------------------------


def test_grid_names_and_order():
    cells = build_grid(["full", "lora", "rm-lora"], [4, 8], [0, 1])
    names = [c.name for c in cells]
    assert names[:5] == ["full_s0", "lora_r4_s0", "lora_r8_s0", "rm-lora_r4_s0", "rm-lora_r8_s0"]
    assert len(names) == 10 and names[5] == "full_s1"  # seed by seed: whole comparisons first
    assert len(build_grid(["lora", "lora"], [8, 8], [0])) == 1
    with pytest.raises(ConfigError, match="unknown method 'dora'"):
        build_grid(["dora"], [8], [0])
    with pytest.raises(ConfigError, match="at least 1"):
        build_grid(["lora"], [0], [0])
    with pytest.raises(ConfigError, match="empty"):
        build_grid(["lora"], [8], [])


def test_overrides_win_for_their_method_only():
    overrides = parse_overrides(["full:learning_rate=1e-5", "sora:--sora_lambda=1e-3"])
    full = cell_args(Cell("full", None, 0), ["--learning_rate", "1e-3"], overrides)
    lora = cell_args(Cell("lora", 8, 1), ["--learning_rate", "1e-3"], overrides)
    sora = cell_args(Cell("sora", 4, 0), [], overrides)
    assert flag_map(full)["learning_rate"] == ("1e-5",) and "lora_r" not in flag_map(full)
    assert flag_map(lora) == {"learning_rate": ("1e-3",), "method": ("lora",), "seed": ("1",), "lora_r": ("8",)}
    assert flag_map(sora)["sora_lambda"] == ("1e-3",)
    for bad, match in [
        ("full", "METHOD:FLAG=VALUE"),
        ("dora:lr=1", "unknown method"),
        ("lora:lora_r=4", "--ranks"),
        ("adalora:adalora_target_r=2", "--ranks"),
        ("lora:seed=1", "--seeds"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse_overrides([bad])


def test_adalora_and_sora_start_at_twice_the_rank_like_the_paper():
    ada = flag_map(cell_args(Cell("adalora", 4, 0), [], {}))
    assert (ada["adalora_init_r"], ada["adalora_target_r"], ada["lora_r"]) == (("8",), ("4",), ("4",))
    assert flag_map(cell_args(Cell("sora", 4, 0), [], {}))["lora_r"] == ("8",)
    assert flag_map(cell_args(Cell("sora", 4, 0), [], {}, init_rank_factor=1))["lora_r"] == ("4",)
    # a common or per-method adalora_init_r replaces the 2R default
    assert flag_map(cell_args(Cell("adalora", 4, 0), ["--adalora_init_r", "6"], {}))["adalora_init_r"] == ("6",)
    assert flag_map(cell_args(Cell("adalora", 4, 0), [], parse_overrides(["adalora:adalora_init_r=12"])))[
        "adalora_init_r"
    ] == ("12",)
    assert cell_ranks("adalora", cell_args(Cell("adalora", 4, 0), [], {})) == {"trainable": 8, "inference": 4}
    assert cell_ranks("sora", cell_args(Cell("sora", 4, 0), [], {})) == {"trainable": 8, "inference": 8}
    assert cell_ranks("rm-lora", cell_args(Cell("rm-lora", 4, 0), [], {})) == {"trainable": 4, "inference": 4}
    assert cell_ranks("full", cell_args(Cell("full", None, 0), [], {})) is None


def test_grid_flags_in_the_train_flags_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="--methods"):
        Sweep(str(tmp_path), [], ["--method", "lora"])
    with pytest.raises(ConfigError, match="--ranks"):
        Sweep(str(tmp_path), [], ["--lora_r=4"])


# -- resume -------------------------------------------------------------------------------------------


def test_resume_skips_finished_and_reruns_the_interrupted_cell(tmp_path):
    out = str(tmp_path)
    cells = build_grid(["lora", "rm-lora"], [4], [0, 1])  # lora_r4_s0, rm-lora_r4_s0, lora_r4_s1, rm-lora_r4_s1
    results = os.path.join(out, "results.jsonl")
    killed = FakeTrain(interrupt_at="lora_r4_s1")
    with pytest.raises(KeyboardInterrupt):
        Sweep(out, cells, COMMON, train=killed, progress=False).run()
    assert killed.calls == ["lora_r4_s0", "rm-lora_r4_s0", "lora_r4_s1"]
    assert cells_of(results) == ["lora_r4_s0", "rm-lora_r4_s0"]  # the finished ones, whole lines only
    status = Sweep(out, cells, COMMON).status()
    assert status == {
        "lora_r4_s0": "finished",
        "rm-lora_r4_s0": "finished",
        "lora_r4_s1": "interrupted",
        "rm-lora_r4_s1": "todo",
    }

    again = FakeTrain()
    result = Sweep(out, cells, COMMON, train=again, progress=False).run()
    assert again.calls == ["lora_r4_s1", "rm-lora_r4_s1"]
    assert result.skipped == ["lora_r4_s0", "rm-lora_r4_s0"] and result.trained == ["lora_r4_s1", "rm-lora_r4_s1"]
    assert cells_of(results) == ["lora_r4_s0", "rm-lora_r4_s0", "lora_r4_s1", "rm-lora_r4_s1"]
    # the interrupted run's folder was deleted before the retry: its history has one epoch, not two
    with open(os.path.join(out, "runs", "lora_r4_s1", "history.jsonl")) as f:
        assert len(f.read().splitlines()) == 1

    third = FakeTrain()
    Sweep(out, cells, COMMON, train=third, progress=False).run()
    assert third.calls == []


def test_finished_run_without_results_line_is_recovered_not_retrained(tmp_path):
    out = str(tmp_path)
    cells = build_grid(["lora"], [4], [0, 1])
    Sweep(out, cells, COMMON, train=FakeTrain(), progress=False).run()
    # as if the sweep was killed after `rmlora train` wrote metrics.json, before the line was appended
    path = os.path.join(out, "results.jsonl")
    first = read_results(path).records[0]
    with open(path, "w") as f:
        f.write(json.dumps(first) + "\n")
    train = FakeTrain()
    result = Sweep(out, cells, COMMON, train=train, progress=False).run()
    assert train.calls == [] and result.recovered == ["lora_r4_s1"]
    line = read_results(path).by_cell()["lora_r4_s1"]
    assert line["rank"] == 4 and line["seed"] == 1 and line["run_dir"] == os.path.join("runs", "lora_r4_s1")
    assert line["train_args"] == cell_args(cells[1], COMMON, {})
    assert line["metrics"]["eval_accuracy"] == pytest.approx(0.51)


def test_resuming_with_other_flags_is_refused_but_reordering_is_fine(tmp_path):
    out = str(tmp_path)
    cells = build_grid(["lora"], [4], [0])
    Sweep(out, cells, COMMON, train=FakeTrain(), progress=False).run()
    reordered = COMMON[2:] + COMMON[:2]
    assert Sweep(out, cells, reordered, train=FakeTrain(), progress=False).run().skipped == ["lora_r4_s0"]
    with pytest.raises(ConfigError, match=r"--num_train_epochs 2 → 3"):
        Sweep(out, cells, COMMON[:-1] + ["3"], train=FakeTrain(), progress=False).run()
    with pytest.raises(ConfigError, match="--learning_rate unset → 1e-5"):
        Sweep(out, cells, COMMON, parse_overrides(["lora:learning_rate=1e-5"]), train=FakeTrain(), progress=False).run()


def test_a_failed_cell_stops_the_sweep_or_is_skipped_with_keep_going(tmp_path):
    cells = build_grid(["lora", "rm-lora"], [4], [0])
    out = str(tmp_path / "stop")
    with pytest.raises(RuntimeError, match="out of memory"):
        Sweep(out, cells, COMMON, train=FakeTrain(fail_at="rm-lora_r4_s0"), progress=False).run()
    assert cells_of(os.path.join(out, "results.jsonl")) == ["lora_r4_s0"]

    out = str(tmp_path / "go")
    cells = build_grid(["rm-lora", "lora"], [4], [0])
    result = Sweep(out, cells, COMMON, train=FakeTrain(fail_at="rm-lora_r4_s0"), keep_going=True, progress=False).run()
    assert result.failed == [("rm-lora_r4_s0", "RuntimeError: out of memory")] and result.trained == ["lora_r4_s0"]
    assert cells_of(os.path.join(out, "results.jsonl")) == ["lora_r4_s0"]


def test_a_train_that_exits_nonzero_or_writes_no_metrics_is_a_failure(tmp_path):
    cells = build_grid(["lora"], [4], [0])
    with pytest.raises(RuntimeError, match="status 3"):
        Sweep(str(tmp_path / "a"), cells, COMMON, train=lambda argv: 3, progress=False).run()
    with pytest.raises(RuntimeError, match="without writing metrics.json"):
        Sweep(str(tmp_path / "b"), cells, COMMON, train=lambda argv: 0, progress=False).run()


# a stand-in for `python -m rmlora.cli.main train` that starts in milliseconds (no torch import)
FAKE_TRAIN_SCRIPT = """
import json, os, sys
argv = sys.argv[1:]
flags = {argv[i][2:]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
print("training", flags["method"], flags["seed"])
if flags.get("num_train_epochs") == "99":
    sys.exit(7)
metrics = {"method": flags["method"], "lora_r": int(flags["lora_r"]), "seed": int(flags["seed"]),
           "task": "rte", "model": "tiny",
           "metrics": {"eval_accuracy": 0.5}, "param_counts": {"trainable": 1, "inference": 1}}
with open(os.path.join(flags["output_dir"], "metrics.json"), "w") as f:
    json.dump(metrics, f)
"""


def test_isolated_cells_run_as_subprocesses_with_their_own_log(tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(sweep_mod, "train_command", lambda argv: [sys.executable, "-c", FAKE_TRAIN_SCRIPT, *argv])
    out = str(tmp_path)
    cells = build_grid(["lora"], [4], [0, 1])
    result = Sweep(out, cells, COMMON, isolate=True, progress=False).run()
    assert result.trained == ["lora_r4_s0", "lora_r4_s1"]
    assert cells_of(os.path.join(out, "results.jsonl")) == ["lora_r4_s0", "lora_r4_s1"]
    with open(os.path.join(out, "runs", "lora_r4_s1", "train.log")) as f:
        assert f.read().strip() == "training lora 1"
    with pytest.raises(RuntimeError, match="status 7"):
        Sweep(str(tmp_path / "failing"), cells, COMMON[:-1] + ["99"], isolate=True, progress=False).run()


SIGTERM_PARENT_SCRIPT = """
import os, sys
import rmlora.harness.sweep as sweep_mod
from rmlora.harness.grid import build_grid
from rmlora.harness.sweep import Sweep
child = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"
sweep_mod.train_command = lambda argv: [sys.executable, "-c", child, sys.argv[2]]
Sweep(sys.argv[1], build_grid(["lora"], [4], [0]), ["--model_name_or_path", "tiny", "--task_name", "rte"],
      isolate=True, progress=False).run()
"""


@pytest.mark.slow  # a sweep in its own process, killed with SIGTERM
def test_sigterm_of_an_isolated_sweep_stops_its_child(tmp_path):
    """`kill <sweep pid>` (SIGTERM) must not leave the cell's training process running on its own."""
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", SIGTERM_PARENT_SCRIPT, str(tmp_path / "cmp"), str(pid_file)])
    try:
        deadline = time.time() + 300  # generous: on a loaded machine the imports alone can take a minute
        while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
            assert parent.poll() is None, "the sweep ended before its cell started"
            time.sleep(0.1)
        child = int(pid_file.read_text())
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 128 + signal.SIGTERM
        with pytest.raises(ProcessLookupError):  # terminated and reaped by the sweep before it exited
            os.kill(child, 0)
        assert cells_of(str(tmp_path / "cmp" / "results.jsonl")) == []
    finally:
        parent.kill()


# -- results.jsonl ------------------------------------------------------------------------------------


def test_damaged_last_line_is_reported_skipped_and_dropped_on_append(tmp_path):
    path = str(tmp_path / "results.jsonl")
    append_result(path, {"cell": "a", "method": "lora", "seed": 0, "metrics": {}})
    with open(path, "a") as f:
        f.write('{"cell": "b", "method": "lo')  # a cut write
    with pytest.warns(UserWarning, match="damaged last line"):
        results = read_results(path)
    assert [r["cell"] for r in results.records] == ["a"] and len(results.skipped) == 1
    append_result(path, {"cell": "c", "method": "lora", "seed": 0, "metrics": {}})
    with open(path) as f:
        assert [json.loads(line)["cell"] for line in f] == ["a", "c"]


def test_damaged_middle_line_is_an_error_naming_the_line(tmp_path):
    path = str(tmp_path / "results.jsonl")
    with open(path, "w") as f:
        line = '{"cell": "%s", "method": "lora", "seed": 0, "metrics": {}}\n'
        f.write(line % "a" + "not json\n" + line % "b")
    with pytest.raises(DataError, match=r"results.jsonl:2 .*fix or delete that line"):
        read_results(path)
    with pytest.raises(DataError, match="lacks seed, metrics"):
        append_result(path, {"cell": "x", "method": "lora"})


def test_a_kill_during_append_leaves_the_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "results.jsonl")
    append_result(path, {"cell": "a", "method": "lora", "seed": 0, "metrics": {}})
    before = open(path).read()

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr("rmlora.io.atomic.os.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        append_result(path, {"cell": "b", "method": "lora", "seed": 0, "metrics": {}})
    assert open(path).read() == before
    assert os.listdir(tmp_path) == ["results.jsonl"]  # no temp file left behind


# -- the CLI ------------------------------------------------------------------------------------------


def test_cli_dry_run_lists_cells_and_their_flags(tmp_path, capsys):
    out = str(tmp_path)
    rc = rmlora_main(
        [
            "compare",
            "--output_dir",
            out,
            "--methods",
            "full,rm-lora",
            "--ranks",
            "4",
            "8",
            "--seeds",
            "0",
            "--override",
            "full:learning_rate=1e-5",
            "--dry_run",
            "--learning_rate",
            "1e-3",
        ]
        + COMMON
    )
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["full_s0", "rm-lora_r4_s0", "rm-lora_r8_s0"]
    assert all(line.split()[1] == "todo" for line in lines)
    assert "--learning_rate 1e-5" in lines[0] and "--learning_rate 1e-3" in lines[1]
    assert f"--output_dir {os.path.join(out, 'runs', 'rm-lora_r8_s0')}" in lines[2]


def test_cli_comma_lists_may_have_spaces(tmp_path, capsys):
    argv = ["compare", "--output_dir", str(tmp_path), "--methods", "lora, rm-lora", "--ranks", "4, 8", "--seeds", "0"]
    assert rmlora_main(argv + ["--dry_run"] + COMMON) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["lora_r4_s0", "lora_r8_s0", "rm-lora_r4_s0", "rm-lora_r8_s0"]


def test_cli_bad_input_is_one_line_and_status_2(tmp_path, capsys):
    for argv, match in [
        (["--methods", "lora", "--method", "lora"], "use --methods"),
        (["--methods", "lora", "--ranks", "x"], "--ranks takes integers"),
        (["--methods", "lora", "--override", "lora=1"], "METHOD:FLAG=VALUE"),
        # flags are checked with rmlora train's own parser before anything trains
        (["--methods", "lora", "--no_such_flag", "1"] + COMMON, "cell lora_r8_s0: "),
        (
            ["--methods", "adalora", "--ranks", "4", "--init_rank_factor", "1"] + COMMON,
            "cell adalora_r4_s0: adalora_target_r must lie in [0, adalora_init_r)",
        ),
    ]:
        rc = rmlora_main(["compare", "--output_dir", str(tmp_path)] + argv + ["--dry_run"])
        err = capsys.readouterr().err
        assert rc == 2 and match in err and len(err.strip().splitlines()) == 1


def test_cli_a_value_train_rejects_shows_the_short_usage_then_the_cell(tmp_path, capsys):
    argv = ["compare", "--output_dir", str(tmp_path), "--methods", "lora", "--reg_form", "foo", "--dry_run"]
    assert rmlora_main(argv + COMMON) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and err[0].startswith("usage: rmlora train [--help]")
    assert "invalid choice: 'foo'" in err[2] and err[3].startswith("rmlora compare: error: cell lora_r8_s0:")


def test_cli_compare_then_report_rebuilds_from_results(tmp_path, monkeypatch, capsys):
    fake = FakeTrain()
    monkeypatch.setattr(sweep_mod, "train_and_summarize", fake)
    out = str(tmp_path)
    rc = rmlora_main(
        [
            "compare",
            "--output_dir",
            out,
            "--methods",
            "lora",
            "rm-lora",
            "--ranks",
            "4",
            "--seeds",
            "0",
            "1",
            "--no_progress",
        ]
        + COMMON
    )
    assert rc == 0 and len(fake.calls) == 4
    report = os.path.join(out, "report.md")
    text = open(report, encoding="utf-8").read()
    assert "| RM-LoRA R=4 | 100 / 100 | 2 | **0.605 ± 0.007** |" in text  # 0.60, 0.61
    os.remove(report)
    assert rmlora_main(["report", out]) == 0
    assert open(report, encoding="utf-8").read() == text
    assert rmlora_main(["report", str(tmp_path / "nothing")]) == 2
    assert "no finished runs" in capsys.readouterr().err


# -- the real thing -----------------------------------------------------------------------------------


def test_tiny_end_to_end_grid(tmp_path, monkeypatch, saved_figures):
    """2 methods × 1 rank × 2 seeds of `rmlora train` on a tiny BERT, then the report; a rerun trains nothing."""
    import time

    from helpers import save_text_model, tmp_env

    tmp_env(monkeypatch, tmp_path)
    model = save_text_model(str(tmp_path / "tiny-bert"))
    out = str(tmp_path / "cmp")
    argv = [
        "compare",
        "--output_dir",
        out,
        "--methods",
        "lora",
        "rm-lora",
        "--ranks",
        "4",
        "--seeds",
        "0",
        "1",
        "--no_progress",
        *tiny_rte_flags(model),
    ]
    start = time.time()
    assert rmlora_main(argv) == 0
    elapsed = time.time() - start

    records = read_results(os.path.join(out, "results.jsonl")).records
    assert sorted(r["cell"] for r in records) == ["lora_r4_s0", "lora_r4_s1", "rm-lora_r4_s0", "rm-lora_r4_s1"]
    for r in records:
        assert r["rank"] == r["lora_r"] == 4 and r["task"] == "rte"
        assert 0.0 <= r["metrics"]["eval_accuracy"] <= 1.0
        assert r["param_counts"]["trainable"] == r["param_counts"]["inference"] > 0
        assert 1 <= r["diagnostics"]["mean_rank"] <= 4
        assert flag_map(r["train_args"])["method"] == (r["method"],)

    text = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| Method | # T / I params"))
    assert header == "| Method | # T / I params | seeds | Acc (validation) |"
    assert [
        line.split("|")[1].strip() for line in lines if line.startswith("| LoRA") or line.startswith("| RM-LoRA")
    ] == ["LoRA R=4", "RM-LoRA R=4", "LoRA R=4", "RM-LoRA R=4"]  # Table 1, then Table 5
    assert "no separate test split" in text
    for name in ("curves.png", "curves.svg", "spectra.png", "spectra.svg"):
        assert os.path.getsize(os.path.join(out, "figures", name)) > 1000

    curves = [fig for fig in saved_figures if len(fig.axes) == 4]
    assert len(curves) == 1
    axes = curves[0].axes
    assert [ax.get_title() for ax in axes] == [
        "validation loss",
        "validation accuracy",
        "train accuracy (fixed train subset)",
        "generalization error (train − validation accuracy)",
    ]
    assert all(ax.get_xlabel() == "epoch" for ax in axes)
    assert [ax.get_ylabel() for ax in axes] == ["loss", "accuracy", "accuracy", "train accuracy − validation accuracy"]
    assert all(sorted(line.get_label() for line in ax.get_lines()) == ["LoRA R=4", "RM-LoRA R=4"] for ax in axes)
    assert all(list(line.get_xdata()) == [1.0, 2.0] for line in axes[0].get_lines())

    def no_training(argv):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(sweep_mod, "train_and_summarize", no_training)
    assert rmlora_main(argv) == 0
    assert len(read_results(os.path.join(out, "results.jsonl")).records) == 4
    assert elapsed < 120  # 4 tiny runs: about 2 s each on one CPU thread; a guard against a runaway sweep
