"""`rmlora train` flags and files, the history callback, the curves figure, and `rmlora demo`."""

import json
import os

import numpy as np
import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from helpers import FIXTURES, read_jsonl, run_train, save_text_model, tmp_env
from rmlora.cli import demo
from rmlora.cli.main import main
from rmlora.config import METHODS
from rmlora.errors import ConfigError, DataError
from rmlora.harness import demo as demo_run
from rmlora.harness.arguments import num_training_steps, parse_args, rmlora_config
from rmlora.io.run_files import read_history
from rmlora.training.history import HistoryCallback

TWEETS = os.path.join(FIXTURES, "text", "tweets.csv")
BASE = ["--model_name_or_path", "m", "--output_dir", "o"]


def test_help_documents_the_flags(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in (
        "--model_name_or_path",
        "--task_name",
        "--train_file",
        "--validation_split_percentage",
        "--method",
        "--lora_r",
        "--lora_alpha",
        "--target_modules",
        "--r_hat",
        "--reg_weight",
        "--rmlora_seed",
        "--seed",
        "--lora_placement",
        "--gguf_file",
        "--adalora_target_r",
        "--sora_lambda",
        "--per_device_train_batch_size",
        "--max_train_samples",
    ):
        assert flag in text, flag


def test_an_argument_error_prints_a_short_usage_and_the_one_line_error(capsys):
    """argparse would print the usage of every TrainingArguments flag (hundreds of lines) before the error."""
    for argv, bad in ((["--method", "dora"], "'dora'"), (["--lora_r", "four"], "'four'")):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", *BASE, *argv])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 3, err
        assert err[0].startswith("usage: rmlora train [--help]") and "rmlora train --help" in err[1]
        assert err[2].startswith("rmlora train: error: argument") and bad in err[2]
    with pytest.raises(SystemExit):
        main(["train", *BASE, "--method", "dora"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert all(f"'{m}'" in error for m in METHODS)  # the valid choices, in the same line


def test_seed_and_r_hat_reach_the_rmlora_config():
    model, data, method, lora, ada, sora, training = parse_args(
        [*BASE, "--seed", "7", "--r_hat", "4", "--method", "gm-lora"]
    )
    config = rmlora_config(method, training.seed)
    assert (config.seed, config.r_hat, config.method) == (7, 4, "gm-lora") and isinstance(config.r_hat, int)
    *_, method, _, _, _, training = parse_args([*BASE, "--seed", "7", "--r_hat", "0.25", "--rmlora_seed", "3"])
    config = rmlora_config(method, training.seed)
    assert (config.seed, config.r_hat, training.seed) == (3, 0.25, 7)
    *_, method, _, _, _, training = parse_args([*BASE, "--r_hat", "many"])
    with pytest.raises(ConfigError, match="--r_hat"):
        rmlora_config(method, training.seed)


def test_num_training_steps_follows_the_trainer():
    # 10 examples, batch 4 -> 3 batches; GA 2 -> 2 optimizer steps per epoch (the last one short); 3 epochs -> 6
    args = TrainingArguments(
        output_dir="o", per_device_train_batch_size=4, gradient_accumulation_steps=2, num_train_epochs=3, use_cpu=True
    )
    assert num_training_steps(10, args) == 6
    args = TrainingArguments(output_dir="o", per_device_train_batch_size=4, max_steps=5, use_cpu=True)
    assert num_training_steps(10, args) == 5


def test_history_records_epoch_loss_metrics_and_generalization_error(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"epoch": 9, "step": 99}\n')  # a stale file of an earlier run
    metrics = iter(
        [
            {"train_accuracy": 0.9, "eval_accuracy": 0.7, "test_accuracy": 0.6, "eval_loss": 0.5},
            {"train_accuracy": 1.0, "eval_accuracy": 0.75, "test_accuracy": 0.8, "eval_loss": 0.4},
        ]
    )
    cb = HistoryCallback(str(path), lambda: next(metrics), "accuracy", lambda: {"mean_rank": 3.0})
    args, state, control = TrainingArguments(output_dir=str(tmp_path), use_cpu=True), TrainerState(), TrainerControl()
    cb.on_train_begin(args, state, control)
    assert read_jsonl(path) == []
    for step, loss in ((2, 1.0), (4, 2.0)):
        state.global_step = step
        cb.on_log(args, state, control, logs={"loss": loss})
    state.global_step, state.epoch = 5, 1.0
    control = cb.on_epoch_end(args, state, control)
    assert control.should_log and read_jsonl(path) == []  # waits for the loss of step 5
    cb.on_log(args, state, control, logs={"eval_loss": 0.5})  # not a training loss: ignored
    cb.on_log(args, state, control, logs={"loss": 4.0})
    state.global_step, state.epoch = 10, 2.0
    cb.on_log(args, state, TrainerControl(), logs={"loss": 3.0})  # steps 6..10 already logged
    cb.on_epoch_end(args, state, TrainerControl())
    first, second = read_jsonl(path)
    assert first["train_loss"] == pytest.approx((1.0 * 2 + 2.0 * 2 + 4.0 * 1) / 5)
    assert first["generalization_error"] == pytest.approx(0.2) and first["test_generalization_error"] == pytest.approx(
        0.3
    )
    assert (first["epoch"], first["step"], first["diagnostics"]) == (1.0, 5, {"mean_rank": 3.0})
    assert second["train_loss"] == pytest.approx(3.0) and second["test_generalization_error"] == pytest.approx(0.2)


def test_a_resumed_history_skips_a_torn_last_line_with_a_warning(tmp_path):
    """A run killed while an older writer appended its history leaves half a line; resuming keeps the whole records
    up to the checkpoint and drops the torn one instead of failing on it."""
    path = tmp_path / "history.jsonl"
    path.write_text('{"epoch": 1.0, "step": 5}\n{"epoch": 2.0, "step": 10}\n{"epoch": 3.0, "st')
    cb = HistoryCallback(str(path), dict, "accuracy")
    state = TrainerState()
    state.global_step = 10
    with pytest.warns(UserWarning, match="history.jsonl:3: damaged last line skipped"):
        cb.on_train_begin(TrainingArguments(output_dir=str(tmp_path), use_cpu=True), state, TrainerControl())
    assert [r["step"] for r in cb.records] == [5, 10] and read_jsonl(path) == cb.records
    path.write_text('{"epoch": 1.0, "step": 5}\nnot json\n{"epoch": 2.0, "step": 10}\n')
    with pytest.raises(DataError, match="history.jsonl:2 .*fix or delete that line"):
        read_history(str(tmp_path))


def test_full_fine_tuning_writes_metrics_without_delta_w(tmp_path, monkeypatch):
    tmp_env(monkeypatch, tmp_path)
    bert = save_text_model(str(tmp_path / "bert"), "bert", num_labels=3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")  # a stale file must not survive into the new run
    m = run_train(
        [
            "--model_name_or_path",
            bert,
            "--task_name",
            "text",
            "--train_file",
            TWEETS,
            "--test_file",
            TWEETS,
            "--text_column",
            "text",
            "--label_column",
            "sentiment",
            "--file_encoding",
            "latin-1",
            "--method",
            "full",
            "--num_train_epochs",
            "1",
            "--seed",
            "5",
        ],
        out,
    )
    for key in (
        "task",
        "model",
        "method",
        "seed",
        "primary_metric",
        "metrics",
        "param_counts",
        "wall_time_s",
        "versions",
    ):
        assert key in m, key
    assert (m["method"], m["lora_r"], m["seed"], m["diagnostics"]) == ("full", None, 5, None)
    assert set(m["versions"]) == {"torch", "transformers", "peft", "rmlora"}
    assert m["param_counts"]["trainable"] == m["param_counts"]["inference"] > 10_000
    assert "test_accuracy" in m["metrics"] and not (out / "diagnostics.json").exists()
    assert (out / "model.safetensors").exists()


def test_a_failed_run_leaves_no_metrics_json(tmp_path, monkeypatch, capsys):
    tmp_env(monkeypatch, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    rc = main(
        [
            "train",
            "--model_name_or_path",
            str(tmp_path),
            "--task_name",
            "text",
            "--train_file",
            str(tmp_path / "none.csv"),
            "--output_dir",
            str(out),
        ]
    )
    assert rc == 2 and not (out / "metrics.json").exists()


def test_plot_curves_writes_png_and_svg_for_runs_and_seeds(tmp_path):
    from rmlora.harness.plots.curves import plot_curves

    def run(offset):
        return [
            {
                "epoch": e,
                "test_loss": 1.0 / e + offset,
                "test_accuracy": 0.5 + 0.1 * e,
                "train_accuracy": 0.6 + 0.1 * e,
                "test_generalization_error": 0.1 + offset,
            }
            for e in (1, 2, 3)
        ]

    paths = plot_curves({"LoRA": run(0.0), "RM-LoRA": [run(0.0), run(0.1)]}, str(tmp_path / "fig" / "curves"))
    assert paths == [str(tmp_path / "fig" / "curves.png"), str(tmp_path / "fig" / "curves.svg")]
    with open(paths[0], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    svg = open(paths[1], encoding="utf-8").read()
    for title in ("test loss", "test accuracy", "train accuracy", "generalization error"):
        assert title in svg


def test_plot_curves_gives_every_label_its_own_colour_beyond_ten(tmp_path, saved_figures):
    """13 labels (5 methods x 3 ranks): matplotlib's default 10-colour cycle would draw two of them alike."""
    from matplotlib.colors import to_hex

    from rmlora.harness.plots.curves import plot_curves

    history = [
        {"epoch": e, "test_loss": 1.0, "test_accuracy": 0.5, "train_accuracy": 0.6, "test_generalization_error": 0.1}
        for e in (1, 2)
    ]
    plot_curves({f"label {i}": history for i in range(13)}, str(tmp_path / "curves"))
    for ax in saved_figures[0].axes:
        assert len({to_hex(line.get_color()) for line in ax.get_lines()}) == 13


def test_demo_without_assets_says_to_run_setup(monkeypatch, capsys):
    real = demo_run.importlib.util.find_spec
    assets = {demo_run.MODEL_PATH[0], demo_run.TWEETS_PATH[0]}
    monkeypatch.setattr(
        demo_run.importlib.util, "find_spec", lambda name, *a: None if name in assets else real(name, *a)
    )
    assert main(["demo", "--output_dir", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "scripts/setup.sh" in err


def test_demo_runs_end_to_end_on_tiny_stand_ins(tmp_path, monkeypatch, capsys):
    tmp_env(monkeypatch, tmp_path)
    bert = save_text_model(str(tmp_path / "bert"), "bert", num_labels=3)
    monkeypatch.setattr(demo, "demo_assets", lambda: (bert, TWEETS))
    out = tmp_path / "demo"
    flags = ["demo", "--output_dir", str(out), "--train_samples", "12", "--test_samples", "6"]
    flags += ["--train_eval_samples", "6", "--epochs", "2", "--lora_r", "4", "--seeds", "0,1"]
    assert main(flags) == 0
    text = capsys.readouterr().out
    assert "LoRA " in text and "RM-LoRA" in text and "test acc" in text and "paired difference" in text
    assert (out / "curves.png").exists() and (out / "curves.svg").exists()
    summary = json.loads((out / "summary.json").read_text())
    rm = next(r for r in summary["rows"] if r["label"] == "RM-LoRA")
    lora = next(r for r in summary["rows"] if r["label"] == "LoRA")
    per_seed = {
        (m, s): json.loads((out / m / f"seed{s}" / "metrics.json").read_text())["metrics"]
        for m in ("lora", "rm-lora")
        for s in (0, 1)
    }
    assert rm["test_accuracy"] == [per_seed["rm-lora", s]["test_accuracy"] for s in (0, 1)]
    assert rm["generalization_error"] == pytest.approx(
        [per_seed["rm-lora", s]["train_accuracy"] - per_seed["rm-lora", s]["test_accuracy"] for s in (0, 1)]
    )
    diffs = [per_seed["rm-lora", s]["test_accuracy"] - per_seed["lora", s]["test_accuracy"] for s in (0, 1)]
    assert summary["differences"]["RM-LoRA"] == pytest.approx(diffs)
    assert summary["verdict"] in text and summary["verdict"] == demo_run.verdict("RM-LoRA", "LoRA", diffs, 6)
    assert lora["seeds"] == [0, 1]
    # the two seeds are different runs of the same data
    assert per_seed["lora", 0] != per_seed["lora", 1]
    # rerun with the same flags: every run is read back, none retrained
    stamp = (out / "rm-lora" / "seed1" / "metrics.json").stat().st_mtime_ns
    assert main(flags) == 0
    assert (out / "rm-lora" / "seed1" / "metrics.json").stat().st_mtime_ns == stamp
    capsys.readouterr()
    # the subset is class-balanced and train / test are disjoint
    import pandas as pd

    train, test = pd.read_csv(out / "data" / "train.csv"), pd.read_csv(out / "data" / "test.csv")
    assert sorted(train["sentiment"].value_counts().tolist()) == [4, 4, 4]
    assert not set(train["text"]) & set(test["text"])


@pytest.mark.parametrize(
    ("diffs", "says"),
    [
        ([0.002, -0.003], "are level"),
        ([0.02, 0.01], "beat LoRA on all 2 seeds"),
        ([-0.02, -0.01], "fell below LoRA on all 2 seeds"),
        ([0.03, -0.02], "The seeds disagree"),
        ([0.03, 0.0], "beat LoRA on 1 of 2 seeds and level on the other 1"),
        ([-0.03, 0.001], "fell below LoRA on 1 of 2 seeds and level on the other 1"),
    ],
)
def test_demo_verdict_follows_the_signs_of_the_paired_differences(diffs, says):
    sentence = demo_run.verdict("RM-LoRA", "LoRA", diffs, 300)
    assert says in sentence
    assert f"{min(diffs):+.3f}" in sentence and f"{max(diffs):+.3f}" in sentence


@pytest.mark.integration
def test_demo_assets_load():
    try:
        model_dir, tweets = demo.demo_assets()
    except Exception as e:  # noqa: BLE001 - any missing piece means: not installed here
        pytest.skip(f"demo assets not installed ({e}); run scripts/setup.sh")
    import pandas as pd
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3).eval()
    assert tok.is_fast and model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    with torch.no_grad():
        logits = model(**tok(["google's self-driving car", "I love it"], padding=True, return_tensors="pt")).logits
    assert logits.shape == (2, 3)
    df = pd.read_csv(tweets, encoding="latin-1")
    assert list(df.columns) == ["sentiment", "confidence", "text"] and len(df) == 38158
    assert set(df["sentiment"]) == {"negative", "neutral", "positive"}


@pytest.mark.parametrize("method", ["adalora", "sora"])
def test_baselines_train_through_the_cli_with_their_own_flags(method, tmp_path, monkeypatch):
    tmp_env(monkeypatch, tmp_path)
    bert = save_text_model(str(tmp_path / "bert"), "bert", num_labels=3)
    m = run_train(
        [
            "--model_name_or_path",
            bert,
            "--task_name",
            "text",
            "--train_file",
            TWEETS,
            "--text_column",
            "text",
            "--label_column",
            "sentiment",
            "--file_encoding",
            "latin-1",
            "--validation_split_percentage",
            "25",
            "--method",
            method,
            "--num_train_epochs",
            "1",
            "--adalora_init_r",
            "6",
            "--adalora_target_r",
            "2",
            "--sora_lambda",
            "0.01",
        ],
        tmp_path / "out",
    )
    counts = m["param_counts"]
    # both keep fewer parameters at inference than they train (AdaLoRA's pruned triplets, SoRA's gates)
    assert counts["inference"] < counts["trainable"]
    assert (tmp_path / "out" / "adapter_config.json").exists()
    assert (tmp_path / "out" / "diagnostics.json").exists()
    if method == "adalora":
        # against the saved adapter loaded by plain PEFT: the numerical rank of each get_delta_weight (dense SVD)
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification

        from rmlora.io.adapters import adalora_pattern_warning_ignored

        with adalora_pattern_warning_ignored():  # PEFT's false "rank_pattern keys ... were ignored" (test_adalora)
            model = PeftModel.from_pretrained(
                AutoModelForSequenceClassification.from_pretrained(bert), str(tmp_path / "out")
            )
        deltas = [
            module.get_delta_weight("default").detach().numpy()
            for module in model.modules()
            if hasattr(module, "lora_E") and "default" in module.lora_E
        ]
        # numpy's rule (σ_max · max(shape) · eps) at float32, the precision ΔW is computed in
        ranks = [
            np.linalg.matrix_rank(
                dw, tol=np.linalg.svd(dw, compute_uv=False)[0] * max(dw.shape) * np.finfo(np.float32).eps
            )
            for dw in deltas
        ]
        ranks += [0] * len(model.peft_config["default"].exclude_modules or ())  # modules the export left out: rank 0
        assert ranks and max(ranks) <= 6
        assert m["diagnostics"]["mean_rank"] == pytest.approx(np.mean(ranks))


def test_placements_find_the_head_and_peft_defaults_that_exist():
    from helpers import tiny_bert, tiny_gpt2, tiny_vit
    from rmlora.tasks.placement import has_peft_default, placement_modules

    bert, gpt2, vit = tiny_bert(), tiny_gpt2(), tiny_vit()
    assert placement_modules(bert, "head") == (["classifier"], [])
    assert placement_modules(gpt2, "head") == (["score"], [])
    targets, save = placement_modules(bert, "attention")
    assert save == ["classifier"]
    assert sorted(targets) == sorted(
        f"bert.encoder.layer.{i}.attention.{m}"
        for i in range(2)
        for m in ("self.query", "self.key", "self.value", "output.dense")
    )
    # PEFT's table says query/value for BERT (present) and ViT (renamed to q_proj/v_proj in transformers 5)
    assert has_peft_default(bert) and not has_peft_default(vit)


def test_demo_with_a_bad_seed_list_says_what_to_give(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--seeds", "0,one"])
    assert exit_info.value.code == 2
    assert "--seeds '0,one': give comma-separated integers" in capsys.readouterr().err


@pytest.mark.parametrize("every, epochs_recorded", [(1, [1, 2, 3, 4, 5]), (2, [2, 4, 5])])
def test_eval_every_epochs_records_every_nth_epoch_and_the_last(every, epochs_recorded, tmp_path, monkeypatch):
    tmp_env(monkeypatch, tmp_path)
    bert = save_text_model(str(tmp_path / "bert"), "bert", num_labels=3)
    flags = ["--model_name_or_path", bert, "--task_name", "text", "--train_file", TWEETS, "--test_file", TWEETS]
    flags += ["--text_column", "text", "--label_column", "sentiment", "--file_encoding", "latin-1"]
    flags += ["--max_train_samples", "8", "--num_train_epochs", "5", "--method", "lora"]
    m = run_train([*flags, "--eval_every_epochs", str(every)], tmp_path / "out")
    history = read_jsonl(tmp_path / "out" / "history.jsonl")
    assert [round(r["epoch"]) for r in history] == epochs_recorded
    # the final metrics are the last epoch's, evaluated whatever the spacing
    assert m["metrics"]["test_accuracy"] == history[-1]["test_accuracy"]
