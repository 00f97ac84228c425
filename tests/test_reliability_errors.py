"""Bad input gets a typed, one-line error that names the fix; non-finite losses stop or skip; bf16 trains."""

import pytest
import torch
from datasets import Dataset
from transformers import TrainingArguments

from helpers import peft_bert, tiny_bert, tiny_gpt2, token_batch
from rmlora import AdapterError, ConfigError, NoLoraPairsError, RMLora, RMLoraConfig, RMLoraTrainer, load_adapter
from rmlora.errors import NonFiniteLossError, RMLoraError
from rmlora.methods import LoraArguments, prepare_model


def one_line(e):
    return "\n" not in str(e.value)


def args(tmp, **kw):
    base = dict(
        output_dir=str(tmp),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=1,
    )
    base.update(kw)
    return TrainingArguments(**base)


def data(n=12):
    return Dataset.from_dict({k: v.tolist() for k, v in token_batch(n, seed=3).items()})


def test_model_without_lora_pairs():
    with pytest.raises(NoLoraPairsError, match="get_peft_model") as e:
        RMLora(tiny_bert(), RMLoraConfig())
    assert one_line(e)


def test_target_modules_matching_nothing_lists_the_choices():
    with pytest.raises(ConfigError, match="match no layer") as e:
        prepare_model(tiny_bert(), RMLoraConfig(method="lora"), LoraArguments(target_modules="q_proj,v_proj"))
    assert "query" in str(e.value) and one_line(e)


def test_r_hat_larger_than_a_module_rank():
    with pytest.raises(ConfigError, match="exceeds the LoRA rank R=2"):
        RMLora(peft_bert(r=4, rank_pattern={"value": 2}), RMLoraConfig(r_hat=3))


def test_baseline_method_given_to_rmlora():
    with pytest.raises(ConfigError, match="baseline"):
        RMLora(peft_bert(), RMLoraConfig(method="sora"))


def test_adapter_that_does_not_fit_the_base_model(tmp_path):
    peft_bert(r=4).save_pretrained(tmp_path / "bert")
    with pytest.raises(AdapterError, match="does not have") as e:
        load_adapter(tiny_gpt2(), str(tmp_path / "bert"))
    assert one_line(e)
    from transformers import BertConfig, BertForSequenceClassification

    wider = BertForSequenceClassification(
        BertConfig(
            vocab_size=64,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=48,
            num_labels=3,
        )
    )
    with pytest.raises(AdapterError, match="do not fit the base layer"):
        load_adapter(wider, str(tmp_path / "bert"))
    # and the matching base loads, with the same outputs as the saved model
    assert load_adapter(tiny_bert(seed=0), str(tmp_path / "bert")) is not None


def test_all_errors_are_value_errors_for_callers():
    assert issubclass(RMLoraError, ValueError)


class NaNAfter(torch.nn.Module):
    """Wraps a model and returns a NaN loss on the micro-batches listed."""

    def __init__(self, model, bad_calls):
        super().__init__()
        self.model, self.bad_calls, self.calls = model, set(bad_calls), 0

    def forward(self, **inputs):
        out = self.model(**inputs)
        if self.calls in self.bad_calls:
            out.loss = out.loss * float("nan")
        self.calls += 1
        return out


def test_nonfinite_loss_stops_with_the_step_number(tmp_path):
    model = peft_bert(r=4)
    tr = RMLoraTrainer(
        model=model,
        args=args(tmp_path, remove_unused_columns=False),
        train_dataset=data(),
        rmlora_config=RMLoraConfig(),
    )
    tr.model = NaNAfter(model, {1})
    tr.model_wrapped = tr.model
    with pytest.raises(NonFiniteLossError, match="at optimizer step 1") as e:
        tr.train()
    assert one_line(e)


def test_nonfinite_loss_skip_leaves_weights_and_moments_untouched(tmp_path):
    model = peft_bert(r=4)
    tr = RMLoraTrainer(
        model=model,
        args=args(tmp_path, weight_decay=0.1, remove_unused_columns=False),
        train_dataset=data(),
        rmlora_config=RMLoraConfig(method="r-lora"),
        nonfinite_loss="skip",
    )
    tr.model = NaNAfter(model, {1})
    tr.model_wrapped = tr.model
    snapshots = []

    from transformers import TrainerCallback

    class Snap(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            snapshots.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})

    tr.add_callback(Snap())
    tr.train()
    assert tr.skipped_steps == [1]
    for k in snapshots[0]:
        assert torch.equal(snapshots[0][k], snapshots[1][k]), f"{k} moved on the skipped step"
    assert any(not torch.equal(snapshots[1][k], snapshots[2][k]) for k in snapshots[0])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bf16_training_keeps_penalty_float32(tmp_path):
    model = peft_bert(r=4)
    tr = RMLoraTrainer(
        model=model,
        args=args(tmp_path, bf16=True),
        train_dataset=data(),
        rmlora_config=RMLoraConfig(method="rm-lora", r_hat=2),
    )
    tr.train()
    assert tr.rmlora.penalty().dtype == torch.float32
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert "rmlora_penalty" in tr.state.log_history[0]


RTE = "tests/fixtures/glue/rte"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task_name", "foo"], "unknown --task_name 'foo'"),
        (
            [
                "--task_name",
                "rte",
                "--gguf_file",
                "nope.gguf",
                "--train_file",
                f"{RTE}/train.tsv",
                "--validation_file",
                f"{RTE}/validation.tsv",
            ],
            "GGUF file",
        ),
    ],
)
def test_cli_bad_task_and_missing_gguf_answer_in_one_line(tmp_path, capsys, argv, message):
    import os

    from rmlora.cli.main import main

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    argv = [a.replace("tests/", os.path.join(root, "tests") + "/") for a in argv]
    rc = main(["train", "--model_name_or_path", str(tmp_path), "--output_dir", str(tmp_path / "o"), *argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rmlora train: error:")]
    assert rc == 2 and len(err) == 1 and message in err[0], err
