"""What every task family provides to `rmlora train`, and the steps they share.

    task = build_task(model_args, data_args, seed)       # registry.py
    task.load_data()                                     # splits, label set, subsets (data.py)
    model = task.load_model()                            # pre-trained model with the task's head
    model = task.place_lora(model, lora_args, method)    # LoRA targets; may swap in a cached-feature head
    task.prepare_datasets()                              # tokenize / transform; task.train_dataset, ...
    task.evaluate(trainer, "validation")                 # {"eval_<metric>": ..., "eval_loss": ...}

A family implements `_load_splits`, `_load_pretrained` and `_prepare`; classification families
share the label handling below. The train split's fixed subset (`train_eval`) is what the history
measures each epoch for the train metric; its loss is reported as `train_subset_loss` so that it does
not clash with the Trainer's training loss.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from datasets import ClassLabel

try:  # transformers 5 aligns the config's special-token ids with the tokenizer's when training starts
    from transformers.trainer_utils import align_special_tokens
except ImportError:  # older versions do not, and print nothing
    align_special_tokens = None

from rmlora.errors import ConfigError, DataError
from rmlora.tasks.data import EVAL_SPLITS, finish_splits, seeded_subset, split_prefix
from rmlora.tasks.placement import has_peft_default, head_modules, placement_modules

logger = logging.getLogger(__name__)

_DROPPED_KEYS = ("_runtime", "_samples_per_second", "_steps_per_second")


def _drop_gguf_quantizer(model) -> None:
    """A GGUF model dequantized to float tensors, marked as the plain model it is.

    transformers (5.x) keeps its GGUF "quantizer" on a model whose weights it dequantized, and Trainer then
    refuses to train it ("quantized with QuantizationMethod.GGUF ... do not support training"). transformers
    itself drops the marker when asked to dequantize (GgufConfig(dequantize=True)); this does the same after the
    load, once every weight is a plain float tensor.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if str(getattr(method, "value", method)).lower() != "gguf":
        return
    packed = [n for n, m in model.named_modules() if type(m).__name__.startswith("Gguf")]
    if packed or any(not p.is_floating_point() for p in model.parameters()):
        raise ConfigError(
            f"the GGUF weights stayed packed ({len(packed)} GGUF modules, e.g. {packed[:1]}): LoRA needs them "
            "dequantized; uninstall the `kernels` package, or convert the model once with save_pretrained and train "
            "from that folder"
        )
    quantizer.remove_quantization_config(model)


class Task:
    family = ""
    primary_metric = "accuracy"
    trainer_label_names: Sequence[str] = ("labels",)
    remove_unused_columns = True

    def __init__(self, name: str, model_args, data_args, seed: int = 42):
        self.name, self.model_args, self.data_args, self.seed = name, model_args, data_args, seed
        self.raw: dict = {}
        self.label_list: list[str] | None = None
        self.processing_class = None
        self.data_collator = None
        self.train_dataset = None
        self.eval_datasets: dict = {}
        self.placement: str | None = None

    # -- data ------------------------------------------------------------------------------------------
    def load_data(self) -> dict:
        splits = self._load_splits()
        splits = {k: v for k, v in splits.items() if v is not None}
        splits = self._encode_labels(splits)
        self.raw = finish_splits(splits, self.data_args, self.seed, self._stratify_column())
        return self.raw

    def _load_splits(self) -> dict:
        raise NotImplementedError

    def _encode_labels(self, splits: dict) -> dict:
        return splits

    def _stratify_column(self) -> str | None:
        return None

    @property
    def evaluation_splits(self) -> list[str]:
        return [s for s in EVAL_SPLITS if s in self.raw]

    @property
    def num_labels(self) -> int:
        return len(self.label_list) if self.label_list else 1

    # -- model -----------------------------------------------------------------------------------------
    def from_pretrained_kwargs(self) -> dict:
        m = self.model_args
        kwargs = {"cache_dir": m.cache_dir, "revision": m.model_revision}
        if m.gguf_file:
            # transformers reads gguf_file inside model_name_or_path (a folder or a hub repo); a missing local
            # file would surface as a hub lookup error with a traceback
            path = m.gguf_file if os.path.isabs(m.gguf_file) else os.path.join(m.model_name_or_path, m.gguf_file)
            if (os.path.isdir(m.model_name_or_path) or os.path.isabs(m.gguf_file)) and not os.path.isfile(path):
                raise ConfigError(
                    f"GGUF file {path} does not exist: pass the folder that holds it as --model_name_or_path "
                    "and the file's name as --gguf_file"
                )
            kwargs["gguf_file"] = m.gguf_file
        return kwargs

    def load_model(self):
        model = self._load_pretrained()
        if self.model_args.gguf_file:
            _drop_gguf_quantizer(model)
        return model

    def _load_pretrained(self):
        raise NotImplementedError

    def peft_task_type(self) -> str | None:
        return None

    def place_lora(self, model, lora_args, method: str):
        """Fill lora_args.target_modules / modules_to_save from --lora_placement; returns the model to wrap."""

        placement = self.model_args.lora_placement
        if method == "full":
            return model
        if placement is None and not lora_args.target_modules and not has_peft_default(model):
            placement = "attention"  # PEFT knows no default targets for this architecture
        self.placement = placement
        if placement is None and not lora_args.target_modules and not lora_args.modules_to_save:
            # PEFT's default targets: the new head is trained and saved beside them, all of it (PEFT's task type
            # saves only `classifier` / `score`; DeBERTa's new head also has `pooler.dense`, which would be lost)
            try:
                lora_args.modules_to_save = ",".join(head_modules(model)) or None
            except ConfigError:  # no separate backbone: PEFT's task type picks the head
                pass
        if placement is not None:
            if lora_args.target_modules:
                raise ConfigError("--lora_placement and --target_modules both given: pass only one of them")
            targets, save = placement_modules(model, placement)
            lora_args.target_modules = ",".join(targets)
            if save and not lora_args.modules_to_save:
                lora_args.modules_to_save = ",".join(save)
        return model

    # -- datasets --------------------------------------------------------------------------------------
    def prepare_datasets(self) -> None:
        """Turn raw splits into model inputs: train_dataset, eval_datasets[split], eval_datasets['train_eval']."""
        self.train_dataset = self._prepare(self.raw["train"], "train")
        for split in self.evaluation_splits:
            self.eval_datasets[split] = self._prepare(self.raw[split], split)
        self.eval_datasets["train_eval"] = self._train_eval_dataset()

    def _prepare(self, ds, split: str):
        raise NotImplementedError

    def _train_eval_dataset(self):
        n = self.data_args.train_eval_samples or None
        return seeded_subset(self.train_dataset, n, self.seed)

    # -- evaluation ------------------------------------------------------------------------------------
    def compute_metrics(self, eval_pred) -> dict:
        raise NotImplementedError

    def trainer_metrics(self):
        """The Trainer's compute_metrics: None where predictions need post-processing first (SQuAD)."""
        return self.compute_metrics

    def evaluate(self, trainer, split: str) -> dict:
        """Metrics of one split with their key prefix: train_eval -> train_*, validation -> eval_*, test -> test_*."""
        prefix, suffix = ("train", "") if split == "train_eval" else split_prefix(split)
        metrics = self._predict_metrics(trainer, split, prefix)
        out = {}
        for key, value in metrics.items():
            if key.endswith(_DROPPED_KEYS):
                continue
            if key == "train_loss":  # the Trainer's own train_loss is the training objective
                key = "train_subset_loss"
            out[key + suffix] = value
        return out

    def _predict_metrics(self, trainer, split: str, prefix: str) -> dict:
        return trainer.predict(self.eval_datasets[split], metric_key_prefix=prefix).metrics

    def describe(self) -> dict:
        return {
            "task": self.name,
            "family": self.family,
            "num_labels": self.num_labels,
            "label_list": self.label_list,
            "splits": {k: len(v) for k, v in self.raw.items()},
            "lora_placement": self.placement,
        }


# -- labels of classification tasks ------------------------------------------------------------------


def encode_label_column(splits: dict, column: str, label_list: list, aliases: dict | None = None) -> dict:
    """Replace `column` by an int `labels` column (ClassLabel) after checking every value is in the label set.

    A value is accepted as a label name (`label_list`), an alias of one, or an id 0..K-1 of a label set
    whose names are not themselves ints.
    """

    index = {str(name): i for i, name in enumerate(label_list)}
    for alias, name in (aliases or {}).items():
        index[str(alias)] = index[str(name)]
    names_are_ints = all(_is_int_like(n) for n in label_list)
    out = {}
    for split, ds in splits.items():
        if column not in ds.column_names:
            raise DataError(
                f"the {split} split has no label column {column!r} (it has {', '.join(ds.column_names)}): "
                "pass --label_column"
            )
        values = ds[column]
        ids = []
        for row, v in enumerate(values):
            key = _label_key(v)
            if key in index:
                ids.append(index[key])
            elif not names_are_ints and _is_int_like(key) and 0 <= int(float(key)) < len(label_list):
                ids.append(int(float(key)))
            else:
                shown = ", ".join(map(str, label_list[:12])) + (", ..." if len(label_list) > 12 else "")
                raise DataError(
                    f"label {v!r} in row {row} of the {split} split is not in the label set ({shown}): "
                    "fix the file or train on data that has this label"
                )
        ds = ds.remove_columns([c for c in (column, "labels") if c in ds.column_names])
        ds = ds.add_column("labels", ids).cast_column("labels", ClassLabel(names=[str(n) for n in label_list]))
        out[split] = ds
    return out


def label_set(values) -> list:
    """Sorted distinct labels of the training data (ints numerically, anything else as text)."""
    distinct = {_label_key(v) for v in values}
    if None in distinct or "None" in distinct:
        raise DataError("the train split has rows without a label: remove them or fill them in")
    if all(_is_int_like(v) for v in distinct):
        return [str(v) for v in sorted(int(float(v)) for v in distinct)]
    return sorted(distinct)


def _label_key(v) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip() if isinstance(v, str) else str(v)


def _is_int_like(v) -> bool:
    try:
        return float(v).is_integer()
    except (TypeError, ValueError):
        return False


def ensure_pad_token(tokenizer, model) -> None:
    """Decoder tokenizers (GPT-2, Llama) have no pad token: pad with EOS (or UNK), and tell the model.

    Then the model's config takes the tokenizer's special-token ids, as the Trainer does when training starts
    (transformers' align_special_tokens), but without the warning it prints on every run: a checkpoint such as
    microsoft/deberta-v3-base declares no BOS / EOS ids, so each run said it had "aligned" [CLS] / [SEP].
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if align_special_tokens is not None:
        report = logging.getLogger(align_special_tokens.__module__)
        level = report.level
        report.setLevel(logging.ERROR)  # the one message it logs is the warning above
        try:
            align_special_tokens(model, tokenizer)
        finally:
            report.setLevel(level)
