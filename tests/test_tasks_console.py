"""A quiet console: the expected new head is one line, a real missing-weights report still shows, and the
harmless pin_memory / is_gradient_checkpointing warnings are not raised by `rmlora train`."""

import os
import warnings

import pytest

from helpers import FIXTURES, run_train, save_text_model, tiny_bert, tmp_env, word_tokenizer


def _save_encoder(path: str, drop: str | None = None) -> str:
    """A tiny BERT encoder checkpoint (no task head), optionally without the weights whose names contain `drop`."""
    from safetensors.torch import load_file, save_file

    tokenizer = word_tokenizer()
    model = tiny_bert()
    model.resize_token_embeddings(len(tokenizer))
    model.bert.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if drop:
        weights = os.path.join(path, "model.safetensors")
        tensors = load_file(weights)
        save_file({k: v for k, v in tensors.items() if drop not in k}, weights, metadata={"format": "pt"})
    return path


def _load(path):
    from transformers import AutoModelForSequenceClassification

    from rmlora.tasks.loading import from_pretrained_quietly

    return from_pretrained_quietly(AutoModelForSequenceClassification, path, num_labels=3)


@pytest.fixture
def report_records():
    """The records transformers' loading-report logger emits, at transformers' default verbosity (warning)."""
    import logging

    from transformers.utils import logging as hf_logging

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.records = []

        def emit(self, record):
            self.records.append(record)

    verbosity, keep = hf_logging.get_verbosity(), Keep()
    hf_logging.set_verbosity_warning()  # another test may have lowered it
    logger = logging.getLogger("transformers.modeling_utils")
    logger.addHandler(keep)
    yield keep.records
    logger.removeHandler(keep)
    hf_logging.set_verbosity(verbosity)


def test_the_expected_new_head_is_a_one_line_note(tmp_path, capfd, caplog, report_records):
    path = _save_encoder(str(tmp_path / "encoder"))
    model = _load(path)
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "MISSING" not in err
    assert not [r for r in report_records if "LOAD REPORT" in r.getMessage()]
    notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("note:")]
    assert len(notes) == 1 and "(classifier)" in notes[0]
    # and the encoder did load: its weights are the checkpoint's
    from safetensors.torch import load_file

    saved = load_file(os.path.join(path, "model.safetensors"))
    key = next(k for k in saved if k.endswith("encoder.layer.1.attention.self.query.weight"))
    assert (model.bert.encoder.layer[1].attention.self.query.weight == saved[key]).all()


def test_a_checkpoint_missing_encoder_weights_keeps_the_report(tmp_path, caplog, report_records):
    _load(_save_encoder(str(tmp_path / "broken"), drop="layer.1."))
    reports = [r.getMessage() for r in report_records if "LOAD REPORT" in r.getMessage()]
    assert len(reports) == 1 and "encoder.layer.1" in reports[0]
    assert not any(r.getMessage().startswith("note:") for r in caplog.records)


@pytest.mark.integration
def test_the_demo_model_loads_without_a_report(capfd, report_records):
    """`rmlora demo`'s model (all-MiniLM-L6-v2 of scripts/setup.sh) through the text task's loader."""
    from rmlora.cli.demo import demo_assets
    from rmlora.tasks import DataArguments, ModelArguments, build_task

    model_dir, _ = demo_assets()
    task = build_task(ModelArguments(model_name_or_path=model_dir), DataArguments(task_name="text"))
    task.label_list = ["negative", "neutral", "positive"]
    task.load_model()
    assert "LOAD REPORT" not in capfd.readouterr().err
    assert not [r for r in report_records if "LOAD REPORT" in r.getMessage()]


@pytest.mark.filterwarnings("always")  # pyproject ignores FutureWarning: show every warning to this test
def test_rmlora_train_raises_no_pin_memory_or_checkpointing_warnings(tmp_path, monkeypatch):
    tmp_env(monkeypatch, tmp_path)
    model_dir = save_text_model(str(tmp_path / "bert"), "bert")
    glue = os.path.join(FIXTURES, "glue", "rte")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_train(
            ["--model_name_or_path", model_dir, "--task_name", "rte", "--train_file", os.path.join(glue, "train.tsv")]
            + ["--validation_file", os.path.join(glue, "validation.tsv"), "--num_train_epochs", "2"]
            + ["--dataloader_pin_memory", "true"],  # the TrainingArguments default
            tmp_path / "out",
        )
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "pin_memory" in m or "is_gradient_checkpointing" in m], messages
