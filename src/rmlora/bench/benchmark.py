"""Training step time and peak memory of every method, measured side by side against plain PEFT LoRA.

    rmlora bench                                   # CPU default: GPT-2-small shape (4 layers), batch 8 x 128
    rmlora bench --model bert-base --json          # on a GPU: full depth, batch 16 x 512
    python bench/step_time.py --sweep --selective  # the same, from a checkout

One training step is what a training loop runs: forward, penalty into the loss, backward,
before_optimizer_step, AdamW step, after_optimizer_step, zero_grad. Every method trains its own copy of
one randomly initialized model of a real shape on the same batch; the frozen base weights are shared
between the adapter methods (they are never written), full fine-tuning gets its own copy. After
warm-up, the methods run interleaved repetition by repetition in a shuffled order, so that a burst of
load from another process hits all of them alike; each method's ratio to plain PEFT LoRA is the median
over repetitions of (its step time / PEFT LoRA's step time in the same repetition), with a bootstrap 95%
interval of that median (how precisely this run pins the ratio down).

Measured per method:
- median step time, wall clock and process CPU time (on a shared CPU the CPU time excludes the time the
  process waited for a core; on CUDA only the wall time means anything);
- peak memory: the bytes the method holds between steps (its model's weights including the frozen base,
  buffers, optimizer state) plus the largest extra allocation during one step (activations, gradients,
  temporaries, strict-mode snapshots). The extra allocation is torch.cuda.max_memory_allocated on CUDA
  and, on CPU, the running total of the CPU allocator's allocations recorded by torch.profiler
  (profile_memory) during one step; buffers allocated inside oneDNN/MKL are not seen on CPU;
- the hooks alone (penalty forward + backward, before/after the optimizer step) timed in isolation on
  the same model, which is the overhead rmlora adds to a LoRA step, without the noise of whole steps.

`--output FILE` saves the whole result as JSON; `--report FILE` prints a saved result's tables again.
Optional sections: `--sweep` times the hooks on synthetic LoRA models of chosen #pairs, R and width
(how the overhead grows), `--selective` times GM-LoRA's "gradients of the selected directions only"
in the LoRA branch's backward against the full backward.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

# -- what is measured ----------------------------------------------------------------------------------------

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


SHAPES = {
    "bert-base": ModelShape(
        "bert",
        12,
        30522,
        ("query", "key", "value", "output.dense", "intermediate.dense"),
        dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512),
    ),
    "gpt2-small": ModelShape(
        "gpt2", 12, 50257, ("c_attn", "c_proj", "c_fc"), dict(n_embd=768, n_head=12, n_positions=1024)
    ),
    # TinyLlama-1.1B's shape (grouped-query attention, SwiGLU MLP)
    "llama": ModelShape(
        "llama",
        22,
        32000,
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        dict(
            hidden_size=2048,
            intermediate_size=5632,
            num_attention_heads=32,
            num_key_value_heads=4,
            max_position_embeddings=2048,
        ),
    ),
    # tiny versions of the three, for tests and smoke runs
    "bert-tiny": ModelShape(
        "bert",
        2,
        512,
        ("query", "key", "value", "output.dense", "intermediate.dense"),
        dict(hidden_size=32, num_attention_heads=4, intermediate_size=48, max_position_embeddings=64),
    ),
    "gpt2-tiny": ModelShape("gpt2", 2, 512, ("c_attn", "c_proj", "c_fc"), dict(n_embd=32, n_head=4, n_positions=64)),
    "llama-tiny": ModelShape(
        "llama",
        2,
        512,
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
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
            raise ValueError(f"unknown model shape {a.model!r}: choose one of {', '.join(SHAPES)}")
        if a.device == "auto":
            a.device = "cuda" if torch.cuda.is_available() else "cpu"
        cuda = a.device.startswith("cuda")
        a.layers = a.layers or (SHAPES[a.model].layers if cuda else 4)
        a.batch_size = a.batch_size or (16 if cuda else 8)
        a.seq_len = a.seq_len or (512 if cuda else 128)
        a.repeats = a.repeats or (20 if cuda else 8)
        if a.optim not in ("adamw_torch_fused", "adamw_torch"):
            raise ValueError(f"unknown optim {a.optim!r}: adamw_torch_fused or adamw_torch")
        return a

    def method_names(self) -> list[str]:
        if self.methods.strip() == "all":
            return list(METHODS)
        names = [m.strip() for m in self.methods.split(",") if m.strip()]
        unknown = [m for m in names if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}: choose from {', '.join(METHODS)}")
        return [m for m in METHODS if m in names or m == ANCHOR]


# -- models and the batch ------------------------------------------------------------------------------------
def build_base_model(
    name: str, layers: int, seed: int = 0, num_labels: int = 2, vocab: int | None = None, **dims
) -> nn.Module:
    """A randomly initialized sequence classifier of the named shape (in train mode)."""
    shape = SHAPES[name]
    d = {**shape.dims, **dims}
    vocab = vocab or shape.vocab
    torch.manual_seed(seed)
    if shape.family == "bert":
        from transformers import BertConfig, BertForSequenceClassification

        model = BertForSequenceClassification(
            BertConfig(vocab_size=vocab, num_hidden_layers=layers, num_labels=num_labels, **d)
        )
    elif shape.family == "gpt2":
        from transformers import GPT2Config, GPT2ForSequenceClassification

        special = {} if vocab > 50256 else {"bos_token_id": vocab - 1, "eos_token_id": vocab - 1}  # tiny vocabularies
        model = GPT2ForSequenceClassification(
            GPT2Config(vocab_size=vocab, n_layer=layers, num_labels=num_labels, pad_token_id=0, **special, **d)
        )
    else:
        from transformers import LlamaConfig, LlamaForSequenceClassification

        model = LlamaForSequenceClassification(
            LlamaConfig(vocab_size=vocab, num_hidden_layers=layers, num_labels=num_labels, pad_token_id=0, **d)
        )
    return model.train()


def make_batch(vocab: int, batch_size: int, seq_len: int, device, seed: int = 0, num_labels: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    # token 0 is the pad token of GPT-2 / Llama here: keep it out so every sequence is full length
    batch = {
        "input_ids": torch.randint(1, vocab, (batch_size, seq_len), generator=g),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
        "labels": torch.randint(0, num_labels, (batch_size,), generator=g),
    }
    return {k: v.to(device) for k, v in batch.items()}


def share_frozen_copy(template: nn.Module) -> nn.Module:
    """A copy of `template` whose parameters and buffers are the template's own tensors.

    The adapter methods never write the base weights, so one copy of them serves all of them; full
    fine-tuning gets a real copy (copy.deepcopy).
    """
    memo = {id(t): t for t in list(template.parameters()) + list(template.buffers())}
    return copy.deepcopy(template, memo)


# -- one method, ready to step ----------------------------------------------------------------------------------
@dataclass
class Entry:
    name: str
    model: nn.Module | None = None
    method: object | None = None  # rmlora TrainingMethod; None for plain PEFT LoRA
    optimizer: torch.optim.Optimizer | None = None
    error: str | None = None
    step: int = 0
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return self.error is None


def _optimizer(params, args: BenchArguments, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=args.optim == "adamw_torch_fused")


def build_entry(name: str, template: nn.Module, args: BenchArguments, total_steps: int) -> Entry:
    """Wrap a copy of `template` for method `name`; an import or build error makes it 'unavailable'."""
    from peft import LoraConfig, get_peft_model

    shape = SHAPES[args.model]
    targets = list(shape.target_modules)
    rm_method, mask_mode = METHODS[name]
    try:
        if name == ANCHOR:
            # plain, unmodified PEFT: nothing from rmlora touches this model or its step
            model = get_peft_model(
                share_frozen_copy(template),
                LoraConfig(
                    r=args.lora_r,
                    lora_alpha=2 * args.lora_r,
                    target_modules=targets,
                    task_type="SEQ_CLS",
                    fan_in_fan_out=shape.family == "gpt2",
                ),
            )
            params = [p for p in model.parameters() if p.requires_grad]
            return Entry(name, model, None, _optimizer(params, args, 1e-3))
        from rmlora.config import RMLoraConfig
        from rmlora.methods import LoraArguments, build_training_method, prepare_model

        lr = 1e-5 if rm_method == "full" else 1e-3
        settings: dict = {"total_steps": total_steps, "learning_rate": lr}
        if rm_method == "adalora":
            from rmlora.methods import AdaLoraArguments

            settings["adalora"] = AdaLoraArguments(adalora_init_r=(3 * args.lora_r) // 2, adalora_target_r=args.lora_r)
        if rm_method == "sora":
            from rmlora.methods import SoraArguments

            settings["sora"] = SoraArguments()
        r_hat = int(args.r_hat) if args.r_hat >= 1 else float(args.r_hat)
        config = RMLoraConfig(method=rm_method, r_hat=r_hat, **({"mask_mode": mask_mode} if mask_mode else {}))
        lora = LoraArguments(lora_r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=",".join(targets))
        base = copy.deepcopy(template) if rm_method == "full" else share_frozen_copy(template)
        model = prepare_model(base, config, lora, task_type="SEQ_CLS", **settings)
        method = build_training_method(model, config, **settings)
        excluded = {id(p) for p in method.excluded_parameters()}
        params = [p for p in model.parameters() if p.requires_grad and id(p) not in excluded]
        return Entry(name, model.train(), method, _optimizer(params, args, lr))
    except Exception as e:  # noqa: BLE001 -- a baseline still being written must not stop the benchmark
        return Entry(name, error=f"{type(e).__name__}: {e}")


def _autocast(args: BenchArguments):
    if args.bf16:
        return torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(entry: Entry, batch: dict, args: BenchArguments) -> None:
    """One optimizer step exactly as a training loop runs it (RMLora's module docstring)."""
    model, method, opt = entry.model, entry.method, entry.optimizer
    with _autocast(args):
        loss = model(**batch).loss
    if method is not None:
        loss = loss + method.penalty()
    loss.backward()
    if method is not None:
        method.before_optimizer_step(opt, entry.step)
    opt.step()
    if method is not None:
        method.after_optimizer_step(opt, entry.step)
    # the model's zero_grad, as the Trainer does: it also clears parameters with an optimizer of their own
    model.zero_grad(set_to_none=True)
    entry.step += 1


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _clock(device: str):
    """The clock of the hooks-alone and micro timings: process CPU time on CPU, where other processes on
    the same cores stretch wall time but not the work done; wall time (after a sync) on CUDA."""
    return time.perf_counter if device.startswith("cuda") else time.process_time


def timed_step(entry: Entry, batch: dict, args: BenchArguments) -> tuple[float, float]:
    _sync(args.device)
    w0, c0 = time.perf_counter(), time.process_time()
    train_step(entry, batch, args)
    _sync(args.device)
    return time.perf_counter() - w0, time.process_time() - c0


# -- memory ----------------------------------------------------------------------------------------------------
def _unique_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None or not torch.is_tensor(t) or t.device.type == "meta":
            continue
        s = t.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
    return total


def persistent_tensors(entry: Entry) -> list[torch.Tensor]:
    """What a method holds between steps: weights, buffers, and the state of every optimizer it owns."""
    tensors = list(entry.model.parameters()) + list(entry.model.buffers())
    optimizers = [entry.optimizer]
    if entry.method is not None:  # e.g. SoRA's gates have an AdamW of their own
        optimizers += [v for v in vars(entry.method).values() if isinstance(v, torch.optim.Optimizer)]
    for opt in optimizers:
        for state in opt.state.values():
            tensors += [v for v in state.values() if torch.is_tensor(v)]
    return tensors


@contextlib.contextmanager
def _quiet_stderr():
    """Mute file descriptor 2: the profiler's C++ side logs every start and stop there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_peak_extra_bytes(fn) -> int:
    """Largest total of CPU tensor bytes allocated by `fn()` and not yet freed, at any moment of its run."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    # allocations (+) and frees (-) of the CPU allocator, in time order; frees of tensors made before
    # the step are not reported, which can only overstate the peak
    mem = sorted(
        (e["ts"], e["args"]["Bytes"])
        for e in events
        if e.get("name") == "[memory]" and e["args"].get("Device Type", 0) == 0
    )
    live = peak = 0
    for _, nbytes in mem:
        live += nbytes
        peak = max(peak, live)
    return peak


def step_peak_bytes(entry: Entry, batch: dict, args: BenchArguments) -> int:
    """Largest extra allocation during one training step, over what was allocated when it started."""
    if args.device.startswith("cuda"):
        _sync(args.device)
        torch.cuda.reset_peak_memory_stats(args.device)
        start = torch.cuda.memory_allocated(args.device)
        train_step(entry, batch, args)
        _sync(args.device)
        return torch.cuda.max_memory_allocated(args.device) - start
    return cpu_peak_extra_bytes(lambda: train_step(entry, batch, args))


# -- the hooks alone -------------------------------------------------------------------------------------------
def time_hooks(method, optimizer, step: int, iters: int, device: str) -> dict[str, float]:
    """Median µs of penalty (forward + backward), before_optimizer_step and after_optimizer_step.

    Runs on gradients a real backward left in place (the caller keeps them); the optimizer step between
    the hooks is not timed. Steps are numbered from `step` so that every iteration draws new directions.
    """
    parts: dict[str, list[float]] = {"penalty": [], "before": [], "after": []}
    clock = _clock(device)
    for i in range(iters):
        s = step + i
        _sync(device)
        t0 = clock()
        pen = method.penalty()
        if pen.requires_grad:
            pen.backward()
        _sync(device)
        t1 = clock()
        method.before_optimizer_step(optimizer, s)
        _sync(device)
        t2 = clock()
        optimizer.step()
        _sync(device)
        t3 = clock()
        method.after_optimizer_step(optimizer, s)
        _sync(device)
        t4 = clock()
        parts["penalty"].append(t1 - t0)
        parts["before"].append(t2 - t1)
        parts["after"].append(t4 - t3)
    out = {k: statistics.median(v) * 1e6 for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out


def hooks_of(entry: Entry, batch: dict, args: BenchArguments) -> dict[str, float]:
    if entry.method is None:
        return {"penalty": 0.0, "before": 0.0, "after": 0.0, "total": 0.0}
    with _autocast(args):
        loss = entry.model(**batch).loss
    loss.backward()  # real gradients for the masks to act on
    out = time_hooks(entry.method, entry.optimizer, entry.step, args.hook_iters, args.device)
    entry.step += args.hook_iters
    entry.model.zero_grad(set_to_none=True)
    return out


# -- the run -----------------------------------------------------------------------------------------------------
def environment(args: BenchArguments) -> dict:
    import peft
    import transformers

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": args.device,
    }
    if args.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(args.device)
        env["cuda"] = torch.version.cuda
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [values[0], values[0]] if values else []
    q = statistics.quantiles(values, n=4)
    return [q[0], q[2]]


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _log(args: BenchArguments, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


def time_interleaved(entries: list[Entry], batch: dict, args: BenchArguments) -> None:
    """warmup + repeats repetitions; in each, every available method steps once, in a shuffled order."""
    rng = random.Random(args.seed)
    for rep in range(args.warmup + args.repeats):
        order = [e for e in entries if e.available]
        rng.shuffle(order)
        for entry in order:
            try:
                wall, cpu = timed_step(entry, batch, args)
            except Exception as e:  # noqa: BLE001 -- e.g. a baseline that builds but cannot step
                entry.error = f"{type(e).__name__} in a training step: {e}"
                _log(args, f"  {entry.name}: unavailable ({entry.error})")
                continue
            if rep >= args.warmup:
                entry.wall.append(wall)
                entry.cpu.append(cpu)
        if rep < args.warmup:
            _log(args, f"  warm-up {rep + 1}/{args.warmup} done")
        else:
            times = ", ".join(f"{e.name} {e.wall[-1]:.3f}" for e in entries if e.available and e.wall)
            _log(args, f"  repetition {rep + 1 - args.warmup}/{args.repeats} (s): {times}")


def measure(entry: Entry, batch: dict, args: BenchArguments) -> dict:
    """One method's row, before the ratios: medians, peak memory, the hooks alone."""
    if not entry.available:
        return {"method": entry.name, "available": False, "reason": entry.error}
    gc.collect()
    extra = step_peak_bytes(entry, batch, args)
    persistent = _unique_bytes(persistent_tensors(entry))
    return {
        "method": entry.name,
        "available": True,
        "median_step_s": statistics.median(entry.wall),
        "median_cpu_s": statistics.median(entry.cpu),
        "peak_mem_bytes": persistent + extra,
        "persistent_bytes": persistent,
        "step_extra_bytes": extra,
        "hooks_us": hooks_of(entry, batch, args),
        "trainable_params": sum(p.numel() for p in entry.model.parameters() if p.requires_grad),
        "step_s": entry.wall,
        "cpu_s": entry.cpu,
    }


def median_ci95(values: list[float], resamples: int = 2000, seed: int = 0) -> list[float]:
    """Bootstrap 95% interval of the median: how far the median itself could move under this noise."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return [medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]]


def add_ratios(row: dict, anchor_row: dict, anchor_step_s: float) -> None:
    """Ratios to PEFT LoRA from the per-repetition times stored in the rows (also for a saved result)."""
    # paired: each repetition's ratio, then the median (robust to load that drifts between repetitions)
    for key, times in (("ratio", "step_s"), ("cpu_ratio", "cpu_s")):
        ratios = [m / a for m, a in zip(row[times], anchor_row[times])]
        row[f"{key}_to_peft_lora"] = statistics.median(ratios)
        row[f"{key}_iqr"] = _quartiles(ratios)
        row[f"{key}_ci95"] = median_ci95(ratios)
    row["mem_ratio_to_peft_lora"] = row["peak_mem_bytes"] / anchor_row["peak_mem_bytes"]
    # the hooks were timed alone with _clock: compare them with PEFT LoRA's step on the same clock
    row["hooks_share_of_peft_lora_step"] = row["hooks_us"]["total"] * 1e-6 / anchor_step_s


def anchor_step(rows: list[dict], device: str) -> tuple[dict, float]:
    anchor_row = next(r for r in rows if r["method"] == ANCHOR)
    return anchor_row, anchor_row["median_step_s"] if device.startswith("cuda") else anchor_row["median_cpu_s"]


def run_benchmark(args: BenchArguments) -> dict:
    """Build every method, time them interleaved, measure memory and the hooks; returns the result dict."""
    args = args.resolve()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    phases, started, load_start = {}, time.time(), _load()
    _log(
        args,
        f"rmlora bench: {args.model} x{args.layers} layers, batch {args.batch_size}x{args.seq_len}, "
        f"{len(args.method_names())} methods, {args.warmup}+{args.repeats} repetitions on {args.device}",
    )
    shape = SHAPES[args.model]
    template = build_base_model(args.model, args.layers, args.seed).to(args.device)
    batch = make_batch(shape.vocab, args.batch_size, args.seq_len, args.device, seed=args.seed + 1)
    # every step any method will take, so that AdaLoRA's and SoRA's schedules stay in range
    total_steps = args.warmup + args.repeats + args.hook_iters + 2
    entries = []
    for name in args.method_names():
        entries.append(build_entry(name, template, args, total_steps))
        _log(args, f"  built {name}" + ("" if entries[-1].available else f": unavailable ({entries[-1].error})"))
    phases["build"] = time.time() - started

    t = time.time()
    time_interleaved(entries, batch, args)
    phases["timed_steps"] = time.time() - t

    t = time.time()
    rows = []
    for entry in entries:
        rows.append(measure(entry, batch, args))
        _log(args, f"  measured memory and hooks of {entry.name}")
    anchor = next(e for e in entries if e.name == ANCHOR)
    if not anchor.available:
        raise RuntimeError(f"plain PEFT LoRA, the anchor, failed: {anchor.error}")
    anchor_row, anchor_step_s = anchor_step(rows, args.device)
    for row in rows:
        if row["available"]:
            add_ratios(row, anchor_row, anchor_step_s)
    phases["memory_and_hooks"] = time.time() - t

    result = {
        "benchmark": "step_time",
        "settings": asdict(args),
        "environment": environment(args),
        "load_average_start": load_start,
        "methods": rows,
    }
    if args.sweep:
        _log(args, "  overhead sweep")
        t = time.time()
        result["sweep"] = overhead_sweep(args.device)
        phases["sweep"] = time.time() - t
    if args.selective:
        _log(args, "  selected-directions-only backward")
        t = time.time()
        r_hat = int(args.r_hat) if args.r_hat >= 1 else max(1, round(args.r_hat * args.lora_r))
        result["selective"] = selective_backward_report(
            _pair_shapes(anchor.model), args.batch_size * args.seq_len, args.lora_r, r_hat, args.device, anchor_step_s
        )
        phases["selective"] = time.time() - t
    result["load_average_end"] = _load()
    result["phases_s"] = {k: round(v, 1) for k, v in phases.items()}
    result["wall_s"] = round(time.time() - started, 1)
    return result


# -- how the overhead grows -------------------------------------------------------------------------------------
def synthetic_lora_model(num_pairs: int, d_in: int, d_out: int, rank: int, device="cpu", seed: int = 0) -> nn.Module:
    """A PEFT LoRA model of `num_pairs` d_in -> d_out linear layers whose base weights are never allocated.

    The hooks only touch the LoRA matrices, so the base layers live on the meta device and any width fits.
    """
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(d_in, d_out, bias=False) for _ in range(num_pairs)])

    with torch.device("meta"):
        base = Stack()
    model = get_peft_model(
        base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=[f"layers.{i}" for i in range(num_pairs)])
    )
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for part in (module.lora_A, module.lora_B):
                part.to_empty(device=device)
                for p in part.parameters():
                    with torch.no_grad():
                        p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return model


def hooks_on_synthetic(num_pairs: int, d: int, rank: int, mask_mode: str, device: str, iters: int = 20) -> dict:
    from rmlora.config import RMLoraConfig
    from rmlora.core.rm_lora import RMLora

    model = synthetic_lora_model(num_pairs, d, d, rank, device)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    rm = RMLora(model, RMLoraConfig(method="rm-lora", mask_mode=mask_mode, r_hat=0.5))
    opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    opt.step()  # create the optimizer state strict mode snapshots
    time_hooks(rm, opt, 0, 3, device)  # warm-up
    return time_hooks(rm, opt, 3, iters, device)


def overhead_sweep(device: str = "cpu", iters: int = 20) -> list[dict]:
    """rm-lora's hooks (µs per step) across #pairs and R at width 768, and across width at fixed #pairs·R²."""
    configs = [(48, 768, r) for r in (4, 8, 16, 32, 64)]
    configs += [(n, 768, 8) for n in (12, 24, 96, 192)]
    configs += [(48, d, 8) for d in (256, 2048, 4096)]
    rows = []
    for num_pairs, d, rank in configs:
        grad = hooks_on_synthetic(num_pairs, d, rank, "grad", device, iters)
        strict = hooks_on_synthetic(num_pairs, d, rank, "strict", device, iters)
        rows.append(
            {
                "pairs": num_pairs,
                "d": d,
                "R": rank,
                "pairs_R2": num_pairs * rank * rank,
                # Eq. 10's forward + closed-form backward: 4 R² (d_in + d_out) per pair
                "penalty_mflop": 4 * rank * rank * 2 * d * num_pairs / 1e6,
                "lora_params": num_pairs * rank * 2 * d,
                "penalty_us": grad["penalty"],
                "grad_mask_us": grad["before"],
                "strict_before_us": strict["before"],
                "strict_after_us": strict["after"],
                "rm_lora_grad_us": grad["total"],
                "rm_lora_strict_us": strict["total"],
            }
        )
    return rows


# -- GM-LoRA: gradients of the selected directions only -----------------------------------------------------------
class SelectiveLoraBranch(torch.autograd.Function):
    """y = scaling · (x Aᵀ) Bᵀ, whose backward computes only A's rows and B's columns in `idx`.

    The other rows/columns get exact zeros, which is what grad-mode masking leaves in them. The input
    gradient still needs every direction (h = ∂y·B is T x R either way), so only ∂A and ∂B shrink:
    2·T·r̂·(d_in + d_out) FLOPs instead of 2·T·R·(d_in + d_out). With idx = all R directions it is the
    same computation as autograd's, so timing it at R and at r̂ isolates what the selection saves.
    """

    @staticmethod
    def forward(ctx, x, A, B, idx, scaling):
        u = x @ A.t()
        ctx.save_for_backward(x, A, B, u, idx)
        ctx.scaling = scaling
        return (u @ B.t()) * scaling

    @staticmethod
    def backward(ctx, gy):
        x, A, B, u, idx = ctx.saved_tensors
        x2, u2 = x.reshape(-1, x.shape[-1]), u.reshape(-1, u.shape[-1])
        gy2 = gy.reshape(-1, gy.shape[-1]) * ctx.scaling
        h = gy2 @ B  # T x R
        gx = (h @ A).reshape(x.shape)
        # (r̂ x T)(T x d) products: on CPU, torch's mm runs the transposed form (d x T)(T x r̂) several
        # times slower for r̂ this small (see docs/PERFORMANCE.md)
        gA = torch.zeros_like(A)
        gA[idx] = h[:, idx].t() @ x2
        gB = torch.zeros_like(B)
        gB[:, idx] = (u2[:, idx].t() @ gy2).t()
        return gx, gA, gB, None, None


def lora_branch(x, A, B, scaling):
    """PEFT's LoRA branch, lora_B(lora_A(x)) · scaling, differentiated by autograd (the simple path)."""
    return nn.functional.linear(nn.functional.linear(x, A), B) * scaling


def _pair_shapes(model: nn.Module) -> list[tuple[int, int, int]]:
    """(count, d_in, d_out) of every group of same-shaped LoRA pairs of a PEFT model."""
    from rmlora.core.pairs import find_lora_pairs, group_pairs

    return [(len(g.pairs), g.pairs[0].d_in, g.pairs[0].d_out) for g in group_pairs(find_lora_pairs(model))]


def _median_us(fn, iters: int, device: str) -> float:
    times, clock = [], _clock(device)
    for _ in range(iters):
        _sync(device)
        t = clock()
        fn()
        _sync(device)
        times.append(clock() - t)
    return statistics.median(times) * 1e6


def selective_backward_time(
    tokens: int, d_in: int, d_out: int, rank: int, r_hat: int, device: str = "cpu", iters: int = 20
) -> dict:
    """Median µs of one LoRA branch's backward three ways, interleaved call by call:

    autograd: PEFT's path (autograd of two linears) followed by grad-mode masking of ∂A, ∂B;
    all_R:    SelectiveLoraBranch with every direction selected (the same products as autograd);
    r_hat:    SelectiveLoraBranch with r̂ directions: all_R − r_hat is what the selection saves.
    Each includes the forward, whose time (measured alone) is subtracted.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, d_in, generator=g).to(device).requires_grad_(True)
    A = torch.randn(rank, d_in, generator=g).to(device).requires_grad_(True)
    B = torch.randn(d_out, rank, generator=g).to(device).requires_grad_(True)
    gy = torch.randn(tokens, d_out, generator=g).to(device)
    idx = torch.randperm(rank, generator=g)[:r_hat].sort().values.to(device)
    every = torch.arange(rank, device=device)
    mask = torch.zeros(rank, device=device)
    mask[idx] = 1

    def autograd_then_mask():
        y = lora_branch(x, A, B, 2.0)
        _, gA, gB = torch.autograd.grad(y, (x, A, B), gy)
        gA.mul_(mask[:, None])
        gB.mul_(mask[None, :])

    def selective(which):
        return lambda: torch.autograd.grad(SelectiveLoraBranch.apply(x, A, B, which, 2.0), (x, A, B), gy)

    def forward_only():
        with torch.no_grad():
            lora_branch(x, A, B, 2.0)

    fns = {"autograd": autograd_then_mask, "all_R": selective(every), "r_hat": selective(idx)}
    for fn in list(fns.values()) + [forward_only]:
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for k, fn in fns.items():
            times[k].append(_median_us(fn, 1, device))
    fwd = _median_us(forward_only, iters, device)
    us = {k: statistics.median(v) - fwd for k, v in times.items()}
    return {
        "tokens": tokens,
        "d_in": d_in,
        "d_out": d_out,
        "R": rank,
        "r_hat": r_hat,
        "autograd_backward_us": us["autograd"],
        "all_directions_backward_us": us["all_R"],
        "selected_backward_us": us["r_hat"],
        "saving_us": us["all_R"] - us["r_hat"],
    }


def selective_backward_report(groups, tokens: int, rank: int, r_hat: int, device: str, step_s: float) -> dict:
    rows = []
    for count, d_in, d_out in groups:
        r = selective_backward_time(tokens, d_in, d_out, rank, r_hat, device)
        r["pairs"] = count
        rows.append(r)

    def per_step(key):
        return sum(r[key] * r["pairs"] for r in rows)

    return {
        "shapes": rows,
        "autograd_backward_us_per_step": per_step("autograd_backward_us"),
        "all_directions_backward_us_per_step": per_step("all_directions_backward_us"),
        "saving_us_per_step": per_step("saving_us"),
        "peft_lora_step_s": step_s,
        "saving_share_of_peft_lora_step": per_step("saving_us") * 1e-6 / step_s,
    }


# -- output --------------------------------------------------------------------------------------------------------
def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def format_report(result: dict) -> str:
    s, env = result["settings"], result["environment"]
    lines = [
        f"rmlora bench: {s['model']} shape, {s['layers']} layers, batch {s['batch_size']} x {s['seq_len']}, "
        f"LoRA R={s['lora_r']}, r̂={s['r_hat']}, {s['optim']}{', bf16 autocast' if s['bf16'] else ''}, "
        f"{s['warmup']} warm-up + {s['repeats']} timed repetitions (interleaved)",
        f"device {env['device']}"
        + (f" ({env['gpu']}, CUDA {env['cuda']})" if "gpu" in env else f" ({env['cpu']}, {env['cpu_count']} cores)")
        + f", torch threads {env['torch_threads']}, torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}",
        f"load average (1, 5, 15 min) at start {result['load_average_start']}, at end {result['load_average_end']}; "
        f"run took {result['wall_s']} s",
        "",
    ]
    header = (
        f"{'method':<16} {'step s':>8} {'ratio':>6} {'95% CI':>13} {'cpu s':>8} {'cpu ratio':>9} {'95% CI':>13} "
        f"{'peak MiB':>9} {'mem ratio':>9} {'hooks µs':>9} {'hooks %':>8} {'trainable':>11}"
    )
    lines += [header, "-" * len(header)]
    for r in result["methods"]:
        if not r["available"]:
            lines.append(f"{r['method']:<16} unavailable: {r['reason']}")
            continue
        lines.append(
            f"{r['method']:<16} {r['median_step_s']:>8.4f} {r['ratio_to_peft_lora']:>6.3f} {'{:.3f}-{:.3f}'.format(*tuple(r['ratio_ci95'])):>13} "
            f"{r['median_cpu_s']:>8.4f} {r['cpu_ratio_to_peft_lora']:>9.3f} {'{:.3f}-{:.3f}'.format(*tuple(r['cpu_ratio_ci95'])):>13} "
            f"{_mib(r['peak_mem_bytes']):>9} {r['mem_ratio_to_peft_lora']:>9.4f} "
            f"{r['hooks_us']['total']:>9.0f} {100 * r['hooks_share_of_peft_lora_step']:>7.2f}% {r['trainable_params']:>11,}"
        )
    lines += [
        "",
        "ratio: median over repetitions of (step time / PEFT LoRA's step time in the same repetition); 95% CI: bootstrap "
        "interval of that median. hooks: penalty fwd+bwd + before/after the optimizer step, timed alone "
        f"({'wall' if env['device'].startswith('cuda') else 'CPU'} time), as a % of PEFT LoRA's median step on the same clock.",
        "peak: weights (incl. the shared frozen base) + buffers + optimizer state + largest extra allocation in a step.",
    ]
    hook_rows = [r for r in result["methods"] if r["available"] and r["hooks_us"]["total"] > 0]
    if hook_rows:
        lines += ["", f"{'hooks µs/step':<16} {'penalty':>9} {'before':>9} {'after':>9} {'total':>9}"]
        for r in hook_rows:
            h = r["hooks_us"]
            lines.append(
                f"{r['method']:<16} {h['penalty']:>9.0f} {h['before']:>9.0f} {h['after']:>9.0f} {h['total']:>9.0f}"
            )
    if "sweep" in result:
        lines += [
            "",
            "rm-lora hooks on synthetic models (µs per step; r̂ = R/2; d_in = d_out = d; one shape group)",
            f"{'pairs':>5} {'d':>5} {'R':>3} {'pairs·R²':>9} {'pen MFLOP':>9} {'penalty':>8} {'grad mask':>9} "
            f"{'strict bef':>10} {'strict aft':>10} {'rm grad':>8} {'rm strict':>9}",
        ]
        for r in result["sweep"]:
            lines.append(
                f"{r['pairs']:>5} {r['d']:>5} {r['R']:>3} {r['pairs_R2']:>9} {r['penalty_mflop']:>9.1f} {r['penalty_us']:>8.0f} "
                f"{r['grad_mask_us']:>9.0f} {r['strict_before_us']:>10.0f} {r['strict_after_us']:>10.0f} "
                f"{r['rm_lora_grad_us']:>8.0f} {r['rm_lora_strict_us']:>9.0f}"
            )
    if "selective" in result:
        sel = result["selective"]
        lines += [
            "",
            "GM-LoRA: one LoRA branch's backward (µs): PEFT's autograd + masking, the closed form over all R "
            "directions, and over the r̂ selected ones only",
            f"{'pairs':>5} {'tokens':>6} {'d_in':>5} {'d_out':>5} {'R':>3} {'r̂':>3} {'autograd':>9} {'all R':>8} "
            f"{'r̂ only':>8} {'saving':>8}",
        ]
        for r in sel["shapes"]:
            lines.append(
                f"{r['pairs']:>5} {r['tokens']:>6} {r['d_in']:>5} {r['d_out']:>5} {r['R']:>3} {r['r_hat']:>3} "
                f"{r['autograd_backward_us']:>9.0f} {r['all_directions_backward_us']:>8.0f} "
                f"{r['selected_backward_us']:>8.0f} {r['saving_us']:>8.0f}"
            )
        lines.append(
            f"per step: LoRA branches' backward {sel['autograd_backward_us_per_step'] / 1e3:.1f} ms with autograd, "
            f"{sel['all_directions_backward_us_per_step'] / 1e3:.1f} ms in closed form; selecting r̂ saves "
            f"{sel['saving_us_per_step'] / 1e3:.1f} ms = {100 * sel['saving_share_of_peft_lora_step']:.2f}% of PEFT LoRA's step"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> BenchArguments:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(BenchArguments, prog="rmlora bench", description=__doc__.split("\n\n")[0])
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.report:
        with open(args.report) as f:
            result = json.load(f)
        rows = [r for r in result["methods"] if r["available"]]
        anchor_row, anchor_step_s = anchor_step(rows, result["environment"]["device"])
        for row in rows:
            add_ratios(row, anchor_row, anchor_step_s)
    else:
        result = run_benchmark(args)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_report(result))
    return 0
