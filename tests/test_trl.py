"""TRL: SFTTrainer with RMLoraCallback and with create_rmlora_optimizer, DPOTrainer with the callback, on a tiny Llama.

Each run is checked step by step against `directions(step)` (strict mode: the unselected rows of A and columns
of B end every optimizer step bitwise where they began it), for a falling penalty, for `rmlora_penalty` in the
logs, and for an adapter that vanilla PEFT reloads with the trained model's outputs.
"""

import csv
import os

import pytest
import torch
from transformers import TrainerCallback

from helpers import FIXTURES, word_tokenizer
from rmlora import RMLoraCallback, RMLoraConfig, create_rmlora_optimizer

trl = pytest.importorskip("trl", reason="pip install 'rmlora[trl]'")

# the squared form: its penalty falls from its value at the start (B = 0) as training orthogonalizes; frd starts at 0
CONFIG = dict(method="rm-lora", r_hat=2, reg_weight=0.05, reg_form="squared", mask_mode="strict")


def tweets() -> list[str]:
    with open(os.path.join(FIXTURES, "text", "tweets.csv"), encoding="latin-1", newline="") as f:
        return [row["text"] for row in csv.DictReader(f)]


def tokenizer():
    tok = word_tokenizer(pair_template=False)
    tok.pad_token = "[PAD]"
    return tok


def tiny_causal_llama(tok, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(cfg)


def peft_llama(tok, seed: int = 0):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return get_peft_model(tiny_causal_llama(tok, seed), lora)


def is_trained_lora(name: str) -> bool:
    # DPOTrainer adds a frozen copy of the adapter ("ref") as the reference model
    return "lora_" in name and ".default." in name


class StrictMaskCheck(TrainerCallback):
    """Asserts after every optimizer step that only the directions drawn for it moved."""

    def __init__(self, rmlora_of):
        self.rmlora_of = rmlora_of  # () -> the RMLora that drew the directions
        self.checked: list[int] = []
        self.penalties: list[float] = []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters() if is_trained_lora(n)}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        rm = self.rmlora_of()
        step = state.global_step - 1
        directions = rm.directions(step)
        for n, p in model.named_parameters():
            if not is_trained_lora(n):
                continue
            rows, cols = directions[n.split(".lora_")[0]]
            is_a = ".lora_A." in n
            keep = set((rows if is_a else cols).tolist())
            frozen = [j for j in range(rm.pairs[0].rank) if j not in keep]
            b, a = self.before[n], p.detach()
            if is_a:
                assert torch.equal(b[frozen], a[frozen]) and not torch.equal(b[sorted(keep)], a[sorted(keep)]), n
            else:
                assert torch.equal(b[:, frozen], a[:, frozen]) and not torch.equal(
                    b[:, sorted(keep)], a[:, sorted(keep)]
                ), n
        with torch.no_grad():
            self.penalties.append(float(rm.penalty()))
        self.checked.append(step)


def sft_args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path),
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        max_length=24,
        logging_steps=2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        bf16=False,
    )
    base.update(kw)
    return trl.SFTConfig(**base)


def assert_reloads_in_vanilla_peft(model, tok, folder):
    from peft import PeftModel

    model.save_pretrained(folder)
    reloaded = PeftModel.from_pretrained(tiny_causal_llama(tok), folder).eval()
    batch = tok(tweets()[:4], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = model.eval()(**batch).logits
        got = reloaded(**batch).logits
        base = tiny_causal_llama(tok).eval()(**batch).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert not torch.allclose(base, want, atol=1e-4), "training should have changed the outputs"


@pytest.mark.parametrize("path", ["callback", "optimizer"])
def test_sft_trainer(path, tmp_path):
    from datasets import Dataset

    tok = tokenizer()
    model = peft_llama(tok)
    data = Dataset.from_dict({"text": tweets()})
    if path == "callback":
        rm_callback = RMLoraCallback(RMLoraConfig(**CONFIG))
        check = StrictMaskCheck(lambda: rm_callback.rmlora)
        kwargs = {"callbacks": [rm_callback, check]}
        args = sft_args(tmp_path, max_grad_norm=1.0)
    else:
        opt = create_rmlora_optimizer(model, rmlora_config=RMLoraConfig(**CONFIG), lr=1e-2, weight_decay=0.0)
        check = StrictMaskCheck(lambda: opt.rmlora)
        kwargs = {"callbacks": [check], "optimizers": (opt, None)}
        args = sft_args(tmp_path)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, **kwargs)
    trainer.train()

    assert check.checked == list(range(6))
    assert check.penalties[-1] < check.penalties[0]
    if path == "callback":
        logged = [r["rmlora_penalty"] for r in trainer.state.log_history if "rmlora_penalty" in r]
        assert len(logged) == 3 and logged[-1] < logged[0]
        assert all(r["loss"] > 0 for r in trainer.state.log_history if "rmlora_penalty" in r)
    else:
        assert opt.rmlora_step == 6
    assert_reloads_in_vanilla_peft(trainer.model, tok, tmp_path / "adapter")


def test_dpo_trainer_with_the_callback(tmp_path):
    from datasets import Dataset

    tok = tokenizer()
    model = peft_llama(tok)
    texts = tweets()
    positive = [t for t in texts if "love" in t or "great" in t or "nice" in t]
    negative = [t for t in texts if "hate" in t or "awful" in t or "bad" in t]
    n = min(len(positive), len(negative))
    pairs = Dataset.from_dict(
        {
            "prompt": ["the day was"] * n,
            "chosen": [" " + t for t in positive[:n]],
            "rejected": [" " + t for t in negative[:n]],
        }  # tiny preference pairs
    )
    rm_callback = RMLoraCallback(RMLoraConfig(**CONFIG))
    check = StrictMaskCheck(lambda: rm_callback.rmlora)
    args = trl.DPOConfig(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        max_length=32,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        bf16=False,
    )
    trainer = trl.DPOTrainer(
        model=model, args=args, train_dataset=pairs, processing_class=tok, callbacks=[rm_callback, check]
    )
    trainer.train()
    assert check.checked == list(range(4))
    assert check.penalties[-1] < check.penalties[0]
    logged = [r for r in trainer.state.log_history if "rmlora_penalty" in r]
    assert len(logged) == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in logged)
    assert_reloads_in_vanilla_peft(trainer.model, tok, tmp_path / "adapter")
