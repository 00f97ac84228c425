"""What the tests share: tiny randomly initialized models (2 layers), saved model folders with a tokenizer or image
processor as `rmlora train` loads them, and helpers to run the CLI.

The tokenizer is a word-level one built with the `tokenizers` library over make_fixtures.WORDS (no download), with
BERT's [CLS] a [SEP] b [SEP] template so that pairs get sequence ids and offsets. pytest finds this module through
`pythonpath = ["tests"]` (pyproject.toml); a test that starts a Python subprocess passes `subprocess_env()`.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import threading
import time

import torch
from safetensors.torch import load_file

from fixtures.make_fixtures import WORDS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
torch.set_num_threads(1)

TESTS = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(TESTS, "fixtures")
RTE = os.path.join(FIXTURES, "glue", "rte")


def tiny_rte_flags(model_dir: str, learning_rate: str | None = "1e-2") -> list[str]:
    """`rmlora train` / `compare` flags of the tests' small RTE run: the fixture's train and validation files, 2
    epochs of batch 8, r̂ = 2, no reporting; `learning_rate=None` leaves the lr to the caller (a grid)."""
    flags = ["--model_name_or_path", model_dir, "--task_name", "rte"]
    flags += ["--train_file", os.path.join(RTE, "train.tsv"), "--validation_file", os.path.join(RTE, "validation.tsv")]
    flags += ["--num_train_epochs", "2", "--per_device_train_batch_size", "8"]
    if learning_rate is not None:
        flags += ["--learning_rate", learning_rate]
    return flags + ["--r_hat", "2", "--report_to", "none", "--disable_tqdm", "true"]


def tiny_bert(num_labels: int = 3, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(cfg).eval()


def tiny_gpt2(num_labels: int = 3, seed: int = 0):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64, num_labels=num_labels, pad_token_id=0
    )
    return GPT2ForSequenceClassification(cfg).eval()


def tiny_llama(num_labels: int = 3, seed: int = 0):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        num_labels=num_labels,
        pad_token_id=0,
    )
    return LlamaForSequenceClassification(cfg).eval()


def tiny_vit(num_labels: int = 3, seed: int = 0):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    cfg = ViTConfig(
        image_size=16,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        num_labels=num_labels,
    )
    return ViTForImageClassification(cfg).eval()


def token_batch(n: int = 8, length: int = 12, num_labels: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1, 64, (n, length), generator=g),
        "attention_mask": torch.ones(n, length, dtype=torch.long),
        "labels": torch.randint(0, num_labels, (n,), generator=g),
    }


def image_batch(n: int = 8, num_labels: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(n, 3, 16, 16, generator=g),
        "labels": torch.randint(0, num_labels, (n,), generator=g),
    }


def peft_bert(
    r: int = 4, seed: int = 0, target_modules=("query", "value"), rank_pattern=None, init_b_random=True, **kw
):
    """A tiny BERT with LoRA; B is randomized (PEFT starts it at 0) so that ΔW ≠ 0 in tests."""
    from peft import LoraConfig, get_peft_model

    model = tiny_bert(seed=seed)
    kw.setdefault("lora_alpha", 2 * r)
    cfg = LoraConfig(
        r=r, target_modules=list(target_modules), modules_to_save=["classifier"], rank_pattern=rank_pattern or {}, **kw
    )
    model = get_peft_model(model, cfg)
    if init_b_random:
        randomize_lora_b(model, seed)
    return model


def randomize_lora_b(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def word_tokenizer(pair_template: bool = True):
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(set(WORDS) | set(".,?!\"'")))}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if pair_template:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        specials = {"cls_token": "[CLS]", "sep_token": "[SEP]"}
    else:  # a decoder's tokenizer: no special tokens around the text, end of text doubles as padding
        specials = {"eos_token": "[SEP]"}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]" if pair_template else None, **specials
    )


def save_text_model(path: str, kind: str = "bert", num_labels: int = 2) -> str:
    """A tiny BERT (or GPT-2) sequence classifier + its tokenizer in `path`; QA tasks load its backbone."""
    tokenizer = word_tokenizer(pair_template=kind == "bert")
    model = (tiny_bert if kind == "bert" else tiny_gpt2)(num_labels=num_labels)
    model.resize_token_embeddings(len(tokenizer))
    if kind == "gpt2":
        model.config.pad_token_id = None  # as a real GPT-2: the task must supply a pad token
        model.config.bos_token_id = model.config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_vit(path: str, num_labels: int = 3) -> str:
    from transformers import ViTImageProcessor

    tiny_vit(num_labels=num_labels).save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(path)
    return path


def tmp_env(monkeypatch, tmp_path) -> None:
    """Keep the datasets cache and the feature cache of a test inside its tmp folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


QUICK = [
    "--per_device_train_batch_size",
    "4",
    "--per_device_eval_batch_size",
    "8",
    "--save_strategy",
    "no",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
    "--dataloader_pin_memory",
    "false",
    "--lora_r",
    "4",
    "--r_hat",
    "2",
]


def run_train(args: list[str], output_dir) -> dict:
    """`rmlora train ARGS --output_dir OUT` through the CLI entry point; returns metrics.json (rc must be 0)."""
    import json

    from rmlora.cli.main import main

    rc = main(["train", *QUICK, *args, "--output_dir", str(output_dir)])  # later flags win: the test's own
    assert rc == 0, f"rmlora train exited with {rc}"
    with open(os.path.join(output_dir, "metrics.json"), encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path) -> list[dict]:
    import json

    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def subprocess_env(**extra) -> dict:
    """os.environ with tests/ on PYTHONPATH (for `import helpers` in a child Python), plus `extra`."""
    path = os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def results_cells(out: str) -> list[str]:
    """The cell of every line of a sweep's results.jsonl, in order (each line must be whole JSON)."""
    with open(os.path.join(out, "results.jsonl")) as f:
        return [json.loads(line)["cell"] for line in f]


def cell_adapters(out: str, cells: list[str]) -> dict:
    """cell -> its adapter's tensors (every *.safetensors of its run folder under out/runs)."""
    found = {}
    for cell in cells:
        files = sorted(glob.glob(os.path.join(out, "runs", cell, "*.safetensors")))
        assert files, f"no adapter in runs/{cell}"
        found[cell] = {os.path.basename(f): load_file(f) for f in files}
    return found


def assert_same_adapters(a: dict, b: dict) -> None:
    """Two cell_adapters results hold the same cells, files, keys and bitwise-equal tensors."""
    assert a.keys() == b.keys()
    for cell in a:
        assert a[cell].keys() == b[cell].keys()
        for name in a[cell]:
            for key, tensor in a[cell][name].items():
                assert torch.equal(tensor, b[cell][name][key]), f"{cell} {name} {key} differs"


def assert_sigterm_stops_the_running_cells(driver: subprocess.Popen, pids, out: str) -> None:
    """A sweep driver running 2 cells at once (each writes its pid as a file name into `pids`) and a third queued:
    SIGTERM to the driver ends it with 143, both cells' processes are gone, no results line was written and the
    queued cell never started. Kills the driver in the end whatever happens."""
    from rmlora.io.run_files import read_results

    try:
        deadline = time.time() + 300  # the imports alone can take a minute on a loaded machine
        while len(os.listdir(pids)) < 2 and time.time() < deadline:
            assert driver.poll() is None, "the sweep ended before its cells started"
            time.sleep(0.1)
        running = [int(p) for p in os.listdir(pids)]
        assert len(running) == 2  # two cells at once, the third queued
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=60) == 128 + signal.SIGTERM
        for pid in running:
            try:  # terminated and reaped before the driver exited
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            raise AssertionError(f"cell process {pid} outlived the driver")
        assert read_results(out).records == []
        assert len(os.listdir(pids)) == 2  # the queued cell never started
    finally:
        driver.kill()


def start_killer(marker: str, stop: threading.Event) -> list[int]:
    """SIGKILL every process that writes marker/victim.pid, as an out-of-memory kill would, and mark each kill with
    marker/killed (a stand-in cell may wait for it); returns the killed pids (a list that grows until `stop`)."""
    killed = []

    def loop():
        path = os.path.join(marker, "victim.pid")
        while not stop.is_set():
            if os.path.exists(path):
                pid = int(open(path).read())
                os.remove(path)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                open(os.path.join(marker, "killed"), "w").close()
            time.sleep(0.05)

    threading.Thread(target=loop, daemon=True).start()
    return killed
