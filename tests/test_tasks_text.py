"""Text classification from a local CSV (the tweet sentiment format: latin-1, sentiment / confidence / text)."""

import csv
import os

import pytest

from helpers import FIXTURES, read_jsonl, run_train, save_text_model, tmp_env
from rmlora.cli.main import main

TWEETS = os.path.join(FIXTURES, "text", "tweets.csv")
TEXT_ARGS = [
    "--task_name",
    "text",
    "--text_column",
    "text",
    "--label_column",
    "sentiment",
    "--file_encoding",
    "latin-1",
]


@pytest.fixture
def bert_dir(tmp_path, monkeypatch):
    tmp_env(monkeypatch, tmp_path)
    return save_text_model(str(tmp_path / "bert"), "bert", num_labels=3)


def _one_error(capsys) -> str:
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rmlora train: error:")]
    assert len(errors) == 1, errors
    return errors[0]


def test_latin1_csv_with_a_stratified_validation_carve(bert_dir, tmp_path):
    with open(TWEETS, encoding="latin-1", newline="") as f:
        rows = list(csv.DictReader(f))
    out = tmp_path / "out"
    m = run_train(
        [
            "--model_name_or_path",
            bert_dir,
            *TEXT_ARGS,
            "--train_file",
            TWEETS,
            "--validation_split_percentage",
            "25",
            "--method",
            "rm-lora",
            "--num_train_epochs",
            "2",
            "--learning_rate",
            "2e-2",
        ],
        out,
    )
    assert m["data"]["label_list"] == sorted({r["sentiment"] for r in rows})
    n_val = round(len(rows) * 0.25)
    assert m["data"]["splits"] == {"train": len(rows) - n_val, "validation": n_val}
    history = read_jsonl(out / "history.jsonl")
    assert len(history) == 2
    for r in history:
        assert r["generalization_error"] == pytest.approx(r["train_accuracy"] - r["eval_accuracy"])
        assert r["train_loss"] > 0 and r["diagnostics"]["num_modules"] > 0


def test_a_test_label_outside_the_train_labels_is_an_error(bert_dir, tmp_path, capsys):
    test = tmp_path / "test.csv"
    test.write_text(
        "sentiment,confidence,text\npositive,1.0,good day\nsarcastic,1.0,great so great\n", encoding="latin-1"
    )
    rc = main(
        [
            "train",
            "--model_name_or_path",
            bert_dir,
            *TEXT_ARGS,
            "--train_file",
            TWEETS,
            "--test_file",
            str(test),
            "--output_dir",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2
    assert "label 'sarcastic' in row 1 of the test split is not in the label set" in _one_error(capsys)


def test_missing_column_and_wrong_encoding(bert_dir, tmp_path, capsys):
    rc = main(
        [
            "train",
            "--model_name_or_path",
            bert_dir,
            *TEXT_ARGS,
            "--text_column",
            "tweet",
            "--train_file",
            TWEETS,
            "--output_dir",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and "no column 'tweet'" in _one_error(capsys)
    # the real file is latin-1: read as utf-8 it cannot be decoded
    rc = main(
        [
            "train",
            "--model_name_or_path",
            bert_dir,
            "--task_name",
            "text",
            "--text_column",
            "text",
            "--label_column",
            "sentiment",
            "--train_file",
            TWEETS,
            "--output_dir",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and "--file_encoding" in _one_error(capsys)
