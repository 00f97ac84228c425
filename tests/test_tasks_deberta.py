"""DeBERTa-v3 as microsoft/deberta-v3-base ships it: a SentencePiece `spm.model`, a 52-byte tokenizer_config.json
and no tokenizer.json, so transformers must convert the tokenizer (sentencepiece + protobuf, the harness extra).

The folder is the smoke-scale asset `deberta-v3` (rmlora.assets.smoke), built in the test's folder: a tiny
SentencePiece model trained on the corpus words and a tiny random DebertaV2Model (the checkpoint holds the encoder
only, so every task adds its head, as with the real one).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import FIXTURES, read_jsonl, run_train, subprocess_env, tmp_env
from rmlora.assets.smoke import smoke_asset

HUB = os.path.join(FIXTURES, "hub")


@pytest.fixture
def deberta_dir(tmp_path, monkeypatch):
    tmp_env(monkeypatch, tmp_path)
    path = smoke_asset("deberta-v3", root=str(tmp_path / "smoke"))
    assert os.path.getsize(os.path.join(path, "tokenizer_config.json")) == 52
    assert not os.path.exists(os.path.join(path, "tokenizer.json"))
    return path


def test_the_readme_deberta_command_reaches_training(deberta_dir, tmp_path):
    out = tmp_path / "runs" / "rte_rm-lora_r8_s0"
    # the README's command (docs/TASKS.md), with the data from a hub-layout copy of nyu-mll/glue and 1 epoch
    m = run_train(
        ["--model_name_or_path", deberta_dir, "--task_name", "rte", "--dataset_name", os.path.join(HUB, "glue")]
        + ["--method", "rm-lora", "--lora_r", "8", "--r_hat", "4", "--lora_alpha", "32", "--reg_weight", "0.1"]
        + ["--lora_placement", "all", "--learning_rate", "1e-3", "--num_train_epochs", "1"]
        + ["--per_device_train_batch_size", "32", "--max_seq_length", "128", "--validation_split_percentage", "10"]
        + ["--seed", "0"],
        out,
    )
    assert m["total_steps"] >= 1 and m["lora_r"] == 8
    targets = m["target_modules"].split(",")
    # all linear layers of each DeBERTa block, as the authors' GLUE script
    for suffix in ("query_proj", "key_proj", "value_proj", "attention.output.dense", "intermediate.dense"):
        assert any(t.endswith(suffix) for t in targets), suffix
    assert "test_accuracy" in m["metrics"]  # GLUE's dev set, held apart by the carve
    # the tokenizer was converted and saved as a fast one: the run folder loads without sentencepiece
    assert (out / "tokenizer.json").exists()


def _stsb_dev():
    import pandas as pd

    return pd.read_parquet(os.path.join(HUB, "glue", "stsb", "validation-00000-of-00001.parquet"))


def test_stsb_regression_with_deberta_flattened_logits(deberta_dir, tmp_path):
    from peft import PeftModel
    from scipy.stats import pearsonr
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "out"
    m = run_train(
        ["--model_name_or_path", deberta_dir, "--task_name", "stsb", "--dataset_name", os.path.join(HUB, "glue")]
        + ["--method", "lora", "--num_train_epochs", "2", "--learning_rate", "1e-2"],
        out,
    )
    assert len(read_jsonl(out / "history.jsonl")) == 2  # the history callback ran each epoch
    # independent check: Pearson of the saved adapter's scores on the dev rows, computed with SciPy
    dev = _stsb_dev()
    tok = AutoTokenizer.from_pretrained(str(out))
    base = AutoModelForSequenceClassification.from_pretrained(deberta_dir, num_labels=1)
    model = PeftModel.from_pretrained(base, str(out)).eval()
    enc = tok(list(dev["sentence1"]), list(dev["sentence2"]), padding=True, return_tensors="pt")
    labels = torch.tensor(dev["label"].to_numpy(), dtype=torch.float32)
    with torch.no_grad():
        scores = model(**enc, labels=labels).logits.numpy()
    # what DeBERTa-v2 returns for a regression when given labels (as in the Trainer's evaluation): no trailing 1
    assert scores.shape == (len(dev),)
    assert m["metrics"]["eval_pearson"] == pytest.approx(pearsonr(scores, dev["label"])[0], abs=1e-5)


def test_squad_with_deberta(deberta_dir, tmp_path):
    m = run_train(
        ["--model_name_or_path", deberta_dir, "--task_name", "squad", "--dataset_name", os.path.join(HUB, "squad")]
        + ["--max_seq_length", "48", "--doc_stride", "16", "--method", "rm-lora", "--num_train_epochs", "1"],
        tmp_path / "out",
    )
    assert 0 <= m["metrics"]["eval_exact_match"] <= m["metrics"]["eval_f1"] <= 100
    assert np.isfinite(m["metrics"]["eval_loss"])


_WITHOUT = """
import sys
sys.modules[{module!r}] = None  # as if the package were not installed
from rmlora.cli.main import main
sys.exit(main(["train", "--model_name_or_path", {model!r}, "--task_name", "rte", "--dataset_name", {data!r},
               "--output_dir", {out!r}, "--report_to", "none"]))
"""


@pytest.mark.parametrize("module, package", [("sentencepiece", "sentencepiece"), ("google.protobuf", "protobuf")])
def test_without_sentencepiece_or_protobuf_the_error_names_them(deberta_dir, tmp_path, module, package):
    code = _WITHOUT.format(module=module, model=deberta_dir, data=os.path.join(HUB, "glue"), out=str(tmp_path / "o"))
    if module == "google.protobuf":
        code = code.replace(
            "sys.modules['google.protobuf'] = None", "sys.modules['google'] = sys.modules['google.protobuf'] = None"
        )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=300
    )
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode == 2, run.stderr[-2000:]
    assert last.startswith("rmlora train: error: ") and package in last and "pip install 'rmlora[harness]'" in last
    assert "tiktoken" not in last and "Traceback" not in run.stderr


def test_a_question_too_long_for_max_seq_length_and_doc_stride_is_one_line(deberta_dir, tmp_path, capfd):
    from rmlora.cli.main import main

    with open(os.path.join(FIXTURES, "squad", "train.json"), encoding="utf-8") as f:
        doc = json.load(f)
    qa = doc["data"][1]["paragraphs"][0]["qas"][0]
    qa["question"] = " ".join(["where"] * 30) + " " + qa["question"]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    rc = main(
        ["train", "--model_name_or_path", deberta_dir, "--task_name", "squad", "--train_file", str(path)]
        + ["--max_seq_length", "48", "--doc_stride", "16", "--output_dir", str(tmp_path / "o"), "--report_to", "none"]
    )
    err = capfd.readouterr().err
    last = err.strip().splitlines()[-1]
    assert rc == 2 and "panicked" not in err and "PanicException" not in err
    assert qa["id"] in last and "--max_seq_length" in last and "--doc_stride" in last
    # the length named is the tokenizer's own count of the question
    from transformers import AutoTokenizer

    n = len(AutoTokenizer.from_pretrained(deberta_dir)(qa["question"], add_special_tokens=False)["input_ids"])
    assert f"is {n} tokens long" in last
