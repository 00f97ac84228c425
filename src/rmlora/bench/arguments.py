"""What `rmlora bench` measures and with which flags: the methods, the model shapes, BenchArguments."""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field

import torch

from rmlora.errors import ConfigError
from rmlora.lists import split_list

# name -> (rmlora method, mask mode); "peft-lora" is plain PEFT with no rmlora code in its step
METHODS = {
    "full": ("full", None),
    "peft-lora": (None, None),
    "lora": ("lora", None),
    "r-lora": ("r-lora", None),
    "gm-lora/grad": ("gm-lora", "grad"),
    "gm-lora/strict": ("gm-lora", "strict"),
    "rm-lora/grad": ("rm-lora", "grad"),
    "rm-lora/strict": ("rm-lora", "strict"),
    "adalora": ("adalora", None),
    "sora": ("sora", None),
}
ANCHOR = "peft-lora"


@dataclass
class ModelShape:
    """A real architecture's shape; `layers` is its true depth (the benchmark may use fewer on CPU)."""

    family: str
    layers: int
    vocab: int
    # LoRA on every linear layer of each block (the paper's placement for DeBERTa, GPT-2: attention + MLP)
    target_modules: tuple[str, ...]
    dims: dict = field(default_factory=dict)


BERT_TARGETS = ("query", "key", "value", "output.dense", "intermediate.dense")
GPT2_TARGETS = ("c_attn", "c_proj", "c_fc")
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _tiny(family: str, targets: tuple[str, ...], dims: dict) -> ModelShape:
    """A tiny version of an architecture, for tests and smoke runs: 2 blocks, a 512-token vocabulary."""
    return ModelShape(family, 2, 512, targets, dims)


SHAPES = {
    "bert-base": ModelShape(
        "bert",
        12,
        30522,
        BERT_TARGETS,
        dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512),
    ),
    "gpt2-small": ModelShape("gpt2", 12, 50257, GPT2_TARGETS, dict(n_embd=768, n_head=12, n_positions=1024)),
    # TinyLlama-1.1B's shape (grouped-query attention, SwiGLU MLP)
    "llama": ModelShape(
        "llama",
        22,
        32000,
        LLAMA_TARGETS,
        dict(
            hidden_size=2048,
            intermediate_size=5632,
            num_attention_heads=32,
            num_key_value_heads=4,
            max_position_embeddings=2048,
        ),
    ),
    "bert-tiny": _tiny(
        "bert",
        BERT_TARGETS,
        dict(hidden_size=32, num_attention_heads=4, intermediate_size=48, max_position_embeddings=64),
    ),
    "gpt2-tiny": _tiny("gpt2", GPT2_TARGETS, dict(n_embd=32, n_head=4, n_positions=64)),
    "llama-tiny": _tiny(
        "llama",
        LLAMA_TARGETS,
        dict(
            hidden_size=32,
            intermediate_size=48,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        ),
    ),
}


@dataclass
class BenchArguments:
    """Flags of `rmlora bench` (defaults depend on the device where they are None)."""

    model: str = field(default="gpt2-small", metadata={"help": f"Model shape: {', '.join(SHAPES)}."})
    layers: int | None = field(
        default=None, metadata={"help": "Number of blocks; default: 4 on CPU, the real depth on CUDA."}
    )
    batch_size: int | None = field(default=None, metadata={"help": "Sequences per step; default 8 on CPU, 16 on CUDA."})
    seq_len: int | None = field(
        default=None, metadata={"help": "Tokens per sequence; default 128 on CPU, 512 on CUDA."}
    )
    methods: str = field(
        default="all",
        metadata={"help": f"Comma-separated subset of: {', '.join(METHODS)} ('all'). peft-lora is always run."},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank R (AdaLoRA: its target rank; it starts at 1.5 R)."})
    r_hat: float = field(
        default=0.5,
        metadata={"help": "Directions updated per step for gm-lora / rm-lora: a fraction < 1 of R, or a count ≥ 1."},
    )
    warmup: int = field(default=1, metadata={"help": "Untimed repetitions first (every method once each)."})
    repeats: int | None = field(default=None, metadata={"help": "Timed repetitions; default 8 on CPU, 20 on CUDA."})
    hook_iters: int = field(default=10, metadata={"help": "Iterations of the hooks-alone timing per method."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto (cuda when available)."})
    threads: int = field(
        default=1, metadata={"help": "torch.set_num_threads on CPU (1: processes sharing a machine do not fight)."}
    )
    bf16: bool = field(default=False, metadata={"help": "Run forward and loss under torch.autocast(bfloat16)."})
    optim: str = field(
        default="adamw_torch_fused", metadata={"help": "adamw_torch_fused (the Trainer's default) or adamw_torch."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the model, batch and the order of methods."})
    sweep: bool = field(
        default=False, metadata={"help": "Also time the hooks on synthetic models across #pairs, R and width."}
    )
    selective: bool = field(
        default=False, metadata={"help": "Also time selected-directions-only gradients in the LoRA branch's backward."}
    )
    json: bool = field(default=False, metadata={"help": "Print one JSON object instead of tables."})
    output: str | None = field(default=None, metadata={"help": "Also write the JSON object to this file."})
    report: str | None = field(
        default=None,
        metadata={"help": "Print the tables of a saved --output file (ratios recomputed) instead of running."},
    )
    quiet: bool = field(default=False, metadata={"help": "No progress lines on stderr."})

    def resolve(self) -> BenchArguments:
        """Fill the device-dependent defaults; returns a copy."""
        a = copy.copy(self)
        if a.model not in SHAPES:
            raise ConfigError(f"unknown model shape {a.model!r}: choose one of {', '.join(SHAPES)}")
        if a.device == "auto":
            a.device = "cuda" if torch.cuda.is_available() else "cpu"
        cuda = a.device.startswith("cuda")
        a.layers = a.layers or (SHAPES[a.model].layers if cuda else 4)
        a.batch_size = a.batch_size or (16 if cuda else 8)
        a.seq_len = a.seq_len or (512 if cuda else 128)
        a.repeats = a.repeats or (20 if cuda else 8)
        if a.optim not in ("adamw_torch_fused", "adamw_torch"):
            raise ConfigError(f"unknown optim {a.optim!r}: adamw_torch_fused or adamw_torch")
        return a

    def method_names(self) -> list[str]:
        """The methods to run, in METHODS' order, the anchor (plain PEFT LoRA) always among them."""
        names = split_list(self.methods)
        if names == ["all"]:
            return list(METHODS)
        unknown = [m for m in names if m not in METHODS]
        if unknown or not names:
            raise ConfigError(f"unknown methods {unknown or names}: choose from {', '.join(METHODS)} or all")
        return [m for m in METHODS if m in names or m == ANCHOR]

    def log(self, msg: str) -> None:
        """A progress line on stderr, unless --quiet."""
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)
