"""`rmlora train --report_to tensorboard` writes TensorBoard event files with rmlora_penalty beside the loss."""

import glob
import math
import os

import pytest

from helpers import FIXTURES, run_train, save_text_model, tmp_env

pytest.importorskip("tensorboard", reason="pip install 'rmlora[tensorboard]'")

TWEETS = os.path.join(FIXTURES, "text", "tweets.csv")


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every event file under `folder`, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = glob.glob(os.path.join(str(folder), "**", "events.out.tfevents.*"), recursive=True)
    assert files, f"no TensorBoard event file under {folder}"
    out: dict[str, list[tuple[int, float]]] = {}
    for path in files:
        acc = EventAccumulator(path)
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def test_report_to_tensorboard_logs_the_penalty_beside_the_loss(tmp_path, monkeypatch):
    tmp_env(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)  # wherever the Trainer puts its logging dir, it stays in this test's folder
    model = save_text_model(str(tmp_path / "bert"), num_labels=3)
    out = tmp_path / "run"
    run_train(
        [
            "--model_name_or_path",
            model,
            "--task_name",
            "text",
            "--train_file",
            TWEETS,
            "--file_encoding",
            "latin-1",
            "--text_column",
            "text",
            "--label_column",
            "sentiment",
            "--validation_split_percentage",
            "25",
            "--method",
            "rm-lora",
            "--reg_weight",
            "0.05",
            "--num_train_epochs",
            "2",
            "--learning_rate",
            "1e-2",
            "--logging_steps",
            "1",
            "--report_to",
            "tensorboard",
        ],
        out,
    )
    found = scalars(tmp_path)
    assert "train/loss" in found and "train/rmlora_penalty" in found, sorted(found)
    loss, penalty = dict(found["train/loss"]), dict(found["train/rmlora_penalty"])
    assert set(penalty) == set(loss) and len(penalty) >= 6  # one value per logged step, at the loss's steps
    assert all(math.isfinite(v) and v > 0 for v in penalty.values())
    assert penalty[max(penalty)] < penalty[min(penalty)]  # the penalty falls as it trains
