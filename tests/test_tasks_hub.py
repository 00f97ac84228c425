"""`--dataset_name <folder in the hub's layout>`: the code path a hub id takes (datasets.load_dataset(repo, config)).

The folders under tests/fixtures/hub are made by tests/fixtures/make_hub_fixtures.py: parquet shards plus the
README's `configs:` block, with the real columns, splits and feature types of nyu-mll/glue, rajpurkar/squad,
uoft-cs/cifar100 and ethz/food101. The expected split sizes are read from the parquet files with pandas.
"""

import os
import shutil

import pandas as pd
import pytest
import torch

from helpers import FIXTURES, run_train, save_text_model, save_vit, tmp_env
from rmlora.cli.main import main

HUB = os.path.join(FIXTURES, "hub")
GLUE = os.path.join(HUB, "glue")


def _rows(repo, folder, split) -> pd.DataFrame:
    return pd.read_parquet(os.path.join(HUB, repo, folder, f"{split}-00000-of-00001.parquet"))


@pytest.fixture
def bert_dir(tmp_path, monkeypatch):
    tmp_env(monkeypatch, tmp_path)
    return save_text_model(str(tmp_path / "bert"), "bert")


def _glue(model_dir, task, out, *extra):
    args = ["--model_name_or_path", model_dir, "--task_name", task, "--dataset_name", GLUE, "--method", "lora"]
    return run_train([*args, "--num_train_epochs", "1", *extra], out)


@pytest.mark.parametrize(
    "task, primary, keys",
    [
        ("cola", "matthews_correlation", {"eval_matthews_correlation"}),
        ("stsb", "pearson", {"eval_pearson", "eval_spearmanr"}),
        ("mnli", "accuracy", {"eval_accuracy", "eval_accuracy_mm"}),
        ("qqp", "accuracy", {"eval_accuracy", "eval_f1"}),
    ],
)
def test_glue_configs_train_from_a_hub_layout_folder(bert_dir, tmp_path, task, primary, keys):
    m = _glue(bert_dir, task, tmp_path / "out")
    assert m["primary_metric"] == primary and keys <= set(m["metrics"])
    splits = m["data"]["splits"]
    assert splits["train"] == len(_rows("glue", task, "train"))
    if task == "mnli":
        assert splits["validation"] == len(_rows("glue", "mnli", "validation_matched"))
        assert splits["validation_mm"] == len(_rows("glue", "mnli", "validation_mismatched"))
    else:
        assert splits["validation"] == len(_rows("glue", task, "validation"))
    if task == "stsb":
        assert m["data"]["num_labels"] == 1
    else:
        assert m["data"]["label_list"] == {"cola": ["unacceptable", "acceptable"]}.get(task, m["data"]["label_list"])
    assert not any(k.startswith("test_") for k in m["metrics"])  # the hub's test splits are not used


def _predict_pairs(model_dir, adapter_dir, rows: pd.DataFrame, columns, num_labels):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(adapter_dir)
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=num_labels)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    enc = tok(list(rows[columns[0]]), list(rows[columns[1]]), padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits.numpy()


@pytest.mark.parametrize("task, columns", [("mrpc", ("sentence1", "sentence2")), ("qqp", ("question1", "question2"))])
def test_glue_protocol_reports_the_dev_set_and_never_the_hub_test_split(bert_dir, tmp_path, task, columns):
    """MRPC's hub test split has labels; it must be treated as every other GLUE task's: not used."""
    from sklearn.metrics import accuracy_score

    dev, test = _rows("glue", task, "validation"), _rows("glue", task, "test")
    assert len(dev) != len(test)  # the fixture's sizes tell the two apart
    if task == "mrpc":
        assert (test["label"] >= 0).all()  # as on the hub: MRPC's test labels are public
    plain = _glue(bert_dir, task, tmp_path / "plain")
    assert plain["data"]["splits"]["validation"] == len(dev) and "test" not in plain["data"]["splits"]
    assert not any(k.startswith("test_") for k in plain["metrics"])

    out = tmp_path / "carved"
    carved = _glue(bert_dir, task, out, "--validation_split_percentage", "25")
    splits = carved["data"]["splits"]
    assert splits["test"] == len(dev) and splits["validation"] == 4 and splits["train"] == 12
    # independent check: test_accuracy is the saved adapter's accuracy on GLUE's dev rows
    logits = _predict_pairs(bert_dir, str(out), dev, columns, 2)
    assert carved["metrics"]["test_accuracy"] == pytest.approx(accuracy_score(dev["label"], logits.argmax(-1)))


def test_squad_plain_text_from_a_hub_layout_folder(bert_dir, tmp_path):
    args = ["--model_name_or_path", bert_dir, "--task_name", "squad", "--dataset_name", os.path.join(HUB, "squad")]
    m = run_train(
        [*args, "--dataset_config_name", "plain_text", "--max_seq_length", "32", "--doc_stride", "8"],
        tmp_path / "out",
    )
    assert m["data"]["splits"] == {
        "train": len(_rows("squad", "plain_text", "train")),
        "validation": len(_rows("squad", "plain_text", "validation")),
    }
    assert 0 <= m["metrics"]["eval_exact_match"] <= m["metrics"]["eval_f1"] <= 100


def test_cifar100_and_food101_from_hub_layout_folders(tmp_path, monkeypatch):
    tmp_env(monkeypatch, tmp_path)
    vit = save_vit(str(tmp_path / "vit"))
    base = ["--model_name_or_path", vit, "--lora_placement", "attention", "--num_train_epochs", "1"]

    cifar = run_train(
        [*base, "--task_name", "cifar100", "--dataset_name", os.path.join(HUB, "cifar100")]
        + ["--validation_split_percentage", "25"],
        tmp_path / "cifar",
    )
    fine = pd.read_parquet(os.path.join(HUB, "cifar100", "cifar100", "train-00000-of-00001.parquet"))
    assert cifar["data"]["num_labels"] == 100  # fine_label, not the 20 coarse classes
    assert cifar["data"]["label_list"][:3] == ["apple", "aquarium_fish", "baby"]
    assert cifar["data"]["splits"] == {"train": len(fine) - 3, "validation": 3, "test": 6}
    assert "test_accuracy" in cifar["metrics"]

    food = run_train(
        [*base, "--task_name", "food101", "--dataset_name", os.path.join(HUB, "food101")], tmp_path / "food"
    )
    assert food["data"]["label_list"] == ["apple_pie", "baby_back_ribs", "baklava"]
    assert food["data"]["splits"] == {"train": 12, "validation": 6}
    assert 0 <= food["metrics"]["eval_accuracy"] <= 1


# -- errors that name the real cause ---------------------------------------------------------------------------


def _error(capsys, *args) -> str:
    rc = main(["train", "--model_name_or_path", "unused", "--output_dir", "unused_out", *args])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after datasets' progress bars
    assert rc == 2 and err.startswith("rmlora train: error: "), err
    return err


def _copy_repo(tmp_path, repo: str):
    dst = tmp_path / repo
    shutil.copytree(os.path.join(HUB, repo), dst)
    return dst


def test_a_config_the_repo_lacks_lists_the_repos_configs(tmp_path, monkeypatch, capsys):
    tmp_env(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    err = _error(capsys, "--task_name", "rte", "--dataset_name", GLUE, "--dataset_config_name", "rtee")
    assert "'rtee'" in err and "cola, mnli, mrpc, qqp, rte, stsb" in err  # the hub's order: sorted
    assert "internet" not in err and "--train_file" not in err


def test_a_missing_split_lists_the_splits(tmp_path, monkeypatch, capsys):
    tmp_env(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    repo = _copy_repo(tmp_path, "squad")
    os.rename(repo / "plain_text" / "train-00000-of-00001.parquet", repo / "plain_text" / "dev-00000-of-00001.parquet")
    readme = (
        (repo / "README.md")
        .read_text()
        .replace("split: train\n    path: plain_text/train-*", "split: dev\n    path: plain_text/dev-*")
    )
    (repo / "README.md").write_text(readme.replace("name: train\n", "name: dev\n"))
    err = _error(capsys, "--task_name", "squad", "--dataset_name", str(repo))
    assert "no 'train' split" in err and "dev, validation" in err and "internet" not in err


def test_a_missing_column_lists_the_columns(tmp_path, monkeypatch, capsys):
    tmp_env(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    repo = _copy_repo(tmp_path, "squad")
    for split in ("train", "validation"):
        path = repo / "plain_text" / f"{split}-00000-of-00001.parquet"
        pd.read_parquet(path).rename(columns={"question": "query"}).to_parquet(path)
    (repo / "README.md").write_text((repo / "README.md").read_text().replace("- name: question\n", "- name: query\n"))
    err = _error(capsys, "--task_name", "squad", "--dataset_name", str(repo))
    assert "'question'" in err and "id, title, context, query, answers" in err and "internet" not in err


def test_a_mistyped_label_column_lists_the_columns(tmp_path, monkeypatch, capsys):
    tmp_env(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    err = _error(capsys, "--task_name", "mrpc", "--dataset_name", GLUE, "--label_column", "lable")
    assert "'lable'" in err and "sentence1, sentence2, label, idx" in err and "internet" not in err


def test_only_a_connection_failure_says_to_go_offline(tmp_path, monkeypatch, capsys):
    tmp_env(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    err = _error(capsys, "--task_name", "rte")  # nyu-mll/glue, not cached: the hub cannot be reached
    assert "cannot reach the hub" in err and "--train_file" in err
    err = _error(capsys, "--task_name", "rte", "--dataset_name", str(tmp_path / "no_such_folder"))
    assert "neither a local folder nor a hub dataset" in err and "internet" not in err
