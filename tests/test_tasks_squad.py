"""SQuAD v1.1: reading the official JSON, n-best post-processing, and `rmlora train` on encoder and decoder."""

import json
import os

import numpy as np
import pytest

from helpers import FIXTURES, read_jsonl, run_train, save_text_model, tmp_env
from rmlora.errors import DataError
from rmlora.tasks.squad import postprocess_predictions, read_squad_json

SQUAD = os.path.join(FIXTURES, "squad")


def test_read_squad_json_keeps_every_question_and_its_gold_answers():
    with open(os.path.join(SQUAD, "dev.json"), encoding="utf-8") as f:
        doc = json.load(f)
    qas = [(p["context"], qa) for a in doc["data"] for p in a["paragraphs"] for qa in p["qas"]]
    ds = read_squad_json(os.path.join(SQUAD, "dev.json"), "validation file")
    assert len(ds) == len(qas)
    for row, (context, qa) in zip(ds, qas):
        assert row["id"] == qa["id"] and row["context"] == context
        assert row["answers"]["text"] == [a["text"] for a in qa["answers"]]
        assert len(row["answers"]["text"]) == 3  # several annotators per dev question


def test_an_answer_that_is_not_at_its_answer_start_names_the_question(tmp_path):
    doc = {
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    {
                        "context": "alice was in paris",
                        "qas": [
                            {"id": "good-1", "question": "who?", "answers": [{"text": "alice", "answer_start": 0}]},
                            {"id": "bad-7", "question": "where?", "answers": [{"text": "paris", "answer_start": 3}]},
                        ],
                    }
                ],
            }
        ]
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="question bad-7.*answer_start=3"):
        read_squad_json(str(path))
    path.write_text(json.dumps({"version": "1.1"}))
    with pytest.raises(DataError, match="SQuAD v1.1 format"):
        read_squad_json(str(path))


def test_postprocess_picks_the_best_valid_span_across_features():
    context = "alice was in paris in 1998"
    #          0    5   9  12    18 21
    examples = [{"id": "q", "context": context}]
    # two features of the same example; None marks question / special tokens
    features = {
        "example_id": ["q", "q"],
        "offset_mapping": [
            [None, (0, 5), (6, 9), (10, 12), (13, 18)],
            [None, (10, 12), (13, 18), (19, 21), (22, 26)],
        ],
    }
    start = np.array([[9.0, 1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 3.0, 0.0, 0.0]])
    end = np.array([[9.0, 0.0, 0.0, 0.0, 2.5], [0.0, 0.0, 1.0, 0.0, 2.0]])
    # feature 0: token 0 scores 18 but is not in the context; best valid: (4, 4) = 4.5 -> "paris"
    # feature 1: (2, 4) = 3 + 2 = 5 -> "paris in 1998" beats it; (2, 2) = 4
    assert postprocess_predictions(examples, features, start, end, n_best_size=5, max_answer_length=30) == {
        "q": "paris in 1998"
    }
    # a span longer than max_answer_length tokens is not allowed: (2, 4) is 3 tokens
    assert postprocess_predictions(examples, features, start, end, n_best_size=5, max_answer_length=2) == {"q": "paris"}
    # an end before its start is never chosen: (4, 1) scores 17, the valid (4, 4) only 9
    start2 = np.array([[0.0, 0.0, 0.0, 0.0, 9.0]])
    end2 = np.array([[0.0, 8.0, 0.0, 0.0, 0.0]])
    one = {"example_id": ["q"], "offset_mapping": features["offset_mapping"][:1]}
    assert postprocess_predictions(examples, one, start2, end2, n_best_size=5, max_answer_length=30) == {"q": "paris"}


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_squad_trains_encoder_and_decoder_with_doc_stride(kind, tmp_path, monkeypatch):
    tmp_env(monkeypatch, tmp_path)
    model_dir = save_text_model(str(tmp_path / kind), kind)
    out = tmp_path / "out"
    m = run_train(
        [
            "--model_name_or_path",
            model_dir,
            "--task_name",
            "squad",
            "--train_file",
            os.path.join(SQUAD, "train.json"),
            "--validation_file",
            os.path.join(SQUAD, "dev.json"),
            "--max_seq_length",
            "32",
            "--doc_stride",
            "8",  # the fixture's contexts need several features
            "--method",
            "rm-lora",
            "--num_train_epochs",
            "2",
            "--learning_rate",
            "1e-2",
        ],
        out,
    )
    assert m["primary_metric"] == "f1" and m["family"] == "squad"
    metrics = m["metrics"]
    for key in ("eval_exact_match", "eval_f1", "train_exact_match", "train_f1"):
        assert 0.0 <= metrics[key] <= 100.0
    assert metrics["eval_f1"] >= metrics["eval_exact_match"]  # an exact match scores F1 = 100 as well
    assert np.isfinite(metrics["eval_loss"])  # eval features carry positions, so the loss is reported
    assert metrics["generalization_error"] == pytest.approx(metrics["train_f1"] - metrics["eval_f1"])
    assert len(read_jsonl(out / "history.jsonl")) == 2
    with open(out / "adapter_config.json") as f:
        assert json.load(f)["task_type"] == "QUESTION_ANS"
