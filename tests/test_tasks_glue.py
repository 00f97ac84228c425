"""GLUE through `rmlora train` on tiny random models and the project's GLUE-format files (tsv, csv, json, parquet)."""

import csv
import json
import os

import pytest
import torch

from helpers import FIXTURES, read_jsonl, run_train, save_text_model, tmp_env
from rmlora.cli.main import main

GLUE = os.path.join(FIXTURES, "glue")


@pytest.fixture
def bert_dir(tmp_path, monkeypatch):
    tmp_env(monkeypatch, tmp_path)
    return save_text_model(str(tmp_path / "bert"), "bert")


def _predict(model_dir, adapter_dir, pairs, num_labels):
    """Logits of the base model + the saved adapter, loaded the way a user would (PEFT, no rmlora)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(adapter_dir)
    base = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=num_labels, ignore_mismatched_sizes=True
    )
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    enc = tok([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits.numpy()


def test_rte_tsv_trains_and_the_saved_adapter_reproduces_eval_accuracy(bert_dir, tmp_path):
    from sklearn.metrics import accuracy_score

    out = tmp_path / "out"
    m = run_train(
        [
            "--model_name_or_path",
            bert_dir,
            "--task_name",
            "rte",
            "--train_file",
            os.path.join(GLUE, "rte", "train.tsv"),
            "--validation_file",
            os.path.join(GLUE, "rte", "validation.tsv"),
            "--method",
            "rm-lora",
            "--learning_rate",
            "5e-2",
            "--num_train_epochs",
            "3",
        ],
        out,
    )
    assert m["task"] == "rte" and m["method"] == "rm-lora" and m["lora_r"] == 4 and m["primary_metric"] == "accuracy"
    assert {"eval_accuracy", "eval_loss", "train_accuracy", "generalization_error"} <= set(m["metrics"])
    assert m["param_counts"]["trainable"] > 0 and m["diagnostics"]["num_modules"] > 0
    for f in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "history.jsonl",
        "diagnostics.json",
        "tokenizer.json",
    ):
        assert (out / f).exists(), f

    # independent check: the validation tsv read with the csv module, labels mapped by GLUE's names
    with open(os.path.join(GLUE, "rte", "validation.tsv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    labels = [["entailment", "not_entailment"].index(r["label"]) for r in rows]
    logits = _predict(bert_dir, str(out), [(r["sentence1"], r["sentence2"]) for r in rows], 2)
    assert m["metrics"]["eval_accuracy"] == pytest.approx(accuracy_score(labels, logits.argmax(-1)))

    history = read_jsonl(out / "history.jsonl")
    assert [round(r["epoch"]) for r in history] == [1, 2, 3]
    last = history[-1]
    assert last["eval_accuracy"] == pytest.approx(m["metrics"]["eval_accuracy"])
    assert last["diagnostics"]["mean_rank"] <= 4


def test_stsb_csv_is_a_regression_scored_by_pearson(bert_dir, tmp_path):
    from scipy.stats import pearsonr

    out = tmp_path / "out"
    m = run_train(
        [
            "--model_name_or_path",
            bert_dir,
            "--task_name",
            "stsb",
            "--train_file",
            os.path.join(GLUE, "stsb", "train.csv"),
            "--validation_file",
            os.path.join(GLUE, "stsb", "validation.csv"),
            "--method",
            "lora",
            "--learning_rate",
            "2e-2",
            "--num_train_epochs",
            "2",
        ],
        out,
    )
    assert m["primary_metric"] == "pearson" and m["data"]["num_labels"] == 1
    with open(os.path.join(GLUE, "stsb", "validation.csv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    scores = _predict(bert_dir, str(out), [(r["sentence1"], r["sentence2"]) for r in rows], 1)[:, 0]
    gold = [float(r["label"]) for r in rows]
    assert m["metrics"]["eval_pearson"] == pytest.approx(pearsonr(scores, gold)[0], abs=1e-5)


def test_mrpc_json_lines_with_a_validation_carve_reports_accuracy_and_f1(bert_dir, tmp_path):
    out = tmp_path / "out"
    m = run_train(
        [
            "--model_name_or_path",
            bert_dir,
            "--task_name",
            "mrpc",
            "--train_file",
            os.path.join(GLUE, "mrpc", "train.json"),
            "--validation_split_percentage",
            "25",
            "--method",
            "gm-lora",
            "--num_train_epochs",
            "1",
        ],
        out,
    )
    with open(os.path.join(GLUE, "mrpc", "train.json"), encoding="utf-8") as f:
        n = sum(1 for line in f if line.strip())
    n_val = round(n * 0.25)
    assert m["data"]["splits"] == {"train": n - n_val, "validation": n_val}
    assert {"eval_accuracy", "eval_f1"} <= set(m["metrics"])


def test_sst2_parquet_on_a_decoder_without_pad_token(tmp_path, monkeypatch):
    tmp_env(monkeypatch, tmp_path)
    gpt2 = save_text_model(str(tmp_path / "gpt2"), "gpt2")
    m = run_train(
        [
            "--model_name_or_path",
            gpt2,
            "--task_name",
            "sst2",
            "--train_file",
            os.path.join(GLUE, "sst2", "train.parquet"),
            "--validation_file",
            os.path.join(GLUE, "sst2", "validation.parquet"),
            "--method",
            "r-lora",
            "--num_train_epochs",
            "1",
            "--lora_placement",
            "all",
        ],
        tmp_path / "out",
    )
    assert 0.0 <= m["metrics"]["eval_accuracy"] <= 1.0
    with open(tmp_path / "out" / "adapter_config.json") as f:
        targets = json.load(f)["target_modules"]
    # attention (c_attn, c_proj) and MLP (c_fc, c_proj) of both blocks, and never the head
    assert any("mlp.c_fc" in t for t in targets) and any("attn.c_attn" in t for t in targets)
    assert not any(t == "score" for t in targets)


def _write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


@pytest.mark.parametrize(
    "train_text, message",
    [
        ("idx\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n", "label 'maybe' in row 0"),
        ("idx\tsentence1\tlabel\n0\ta\tentailment\n", "no column 'sentence2'"),
        ("", "is empty"),
    ],
)
def test_bad_glue_files_fail_with_one_line(bert_dir, tmp_path, capsys, train_text, message):
    train = _write(tmp_path / "train.tsv", train_text)
    rc = main(
        [
            "train",
            "--model_name_or_path",
            bert_dir,
            "--task_name",
            "rte",
            "--train_file",
            train,
            "--output_dir",
            str(tmp_path / "o"),
        ]
    )
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rmlora train: error:")]
    assert rc == 2 and len(errors) == 1 and message in errors[0], errors


def test_missing_file_and_label_id_outside_the_set(bert_dir, tmp_path, capsys):
    rc = main(
        [
            "train",
            "--model_name_or_path",
            bert_dir,
            "--task_name",
            "rte",
            "--train_file",
            str(tmp_path / "nope.tsv"),
            "--output_dir",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    train = _write(tmp_path / "train.csv", "sentence1,sentence2,label\na,b,1\nc,d,2\n")  # RTE has ids 0 and 1 only
    rc = main(
        [
            "train",
            "--model_name_or_path",
            bert_dir,
            "--task_name",
            "rte",
            "--train_file",
            train,
            "--output_dir",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and "label 2 in row 1" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o" / "metrics.json")
