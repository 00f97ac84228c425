"""Sequence classification (one text or a text pair -> a class, or a score for regression).

Shared by GLUE (glue.py) and local text files (text.py): tokenization with dynamic padding
(DataCollatorWithPadding), AutoModelForSequenceClassification with the label set in its config, and
predictions -> metrics. With `--lora_placement head` and a head that reads one pooled vector per text
(BERT's classifier after its pooler), the frozen backbone's pooled outputs are computed once and cached,
and only the head trains on them (features.py), as for images. Decoder models (GPT-2, Llama) need a pad
token to find each sequence's last token; when the tokenizer has none, its end-of-sequence token is used, as
transformers' examples do.
"""

from __future__ import annotations

import logging

import numpy as np

from rmlora.tasks.base import Task, encode_label_column, ensure_pad_token
from rmlora.tasks.data import require_columns
from rmlora.tasks.loading import from_pretrained_quietly, load_tokenizer

logger = logging.getLogger(__name__)


class SequenceClassificationTask(Task):
    family = "text-classification"
    is_regression = False

    def __init__(self, name, model_args, data_args, seed=42):
        super().__init__(name, model_args, data_args, seed)
        self.text_column = data_args.text_column or "text"
        self.text_pair_column = data_args.text_pair_column
        self.label_column = data_args.label_column or "label"
        self.feature_head: str | None = None  # set when the head trains alone on cached pooled features
        self._backbone = None
        self.batch_size, self.device = 32, "cpu"
        self.feature_cache_hits: dict[str, bool] = {}

    # -- labels ----------------------------------------------------------------------------------------
    def _label_aliases(self) -> dict:
        return {}

    def _encode_labels(self, splits: dict) -> dict:
        for split, ds in splits.items():
            require_columns(ds, [self.text_column, self.text_pair_column, self.label_column], split)
        if self.is_regression:
            return {split: self._float_labels(ds, split) for split, ds in splits.items()}
        if self.label_list is None:
            from datasets import ClassLabel

            from rmlora.tasks.base import label_set

            feature = splits["train"].features[self.label_column]
            names = feature.names if isinstance(feature, ClassLabel) else None
            self.label_list = names or label_set(splits["train"][self.label_column])
        return encode_label_column(splits, self.label_column, self.label_list, self._label_aliases())

    def _float_labels(self, ds, split: str):
        from rmlora.errors import DataError

        values = ds[self.label_column]
        for row, v in enumerate(values):
            try:
                if v is None or np.isnan(float(v)):
                    raise ValueError
            except (TypeError, ValueError):
                raise DataError(
                    f"label {v!r} in row {row} of the {split} split is not a number: "
                    "a regression task needs numeric scores"
                ) from None
        ds = ds.remove_columns([c for c in (self.label_column, "labels") if c in ds.column_names])
        return ds.add_column("labels", [float(v) for v in values])

    def _stratify_column(self):
        return None if self.is_regression else "labels"

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.label_list)

    # -- model -----------------------------------------------------------------------------------------
    def peft_task_type(self) -> str | None:
        # PEFT's SEQ_CLS type also adds the head (classifier / score) to modules_to_save; with LoRA on the
        # head itself that would train the head twice over, so that placement uses no task type
        return None if self.placement == "head" else "SEQ_CLS"

    def _load_pretrained(self):
        from transformers import AutoModelForSequenceClassification

        kwargs = self.from_pretrained_kwargs()
        tokenizer = load_tokenizer(self.model_args.tokenizer_name or self.model_args.model_name_or_path, **kwargs)
        labels = {}
        if not self.is_regression:
            labels = {
                "id2label": dict(enumerate(self.label_list)),
                "label2id": {n: i for i, n in enumerate(self.label_list)},
            }
        model = from_pretrained_quietly(
            AutoModelForSequenceClassification,
            self.model_args.model_name_or_path,
            num_labels=self.num_labels,
            ignore_mismatched_sizes=self.model_args.ignore_mismatched_sizes,
            **labels,
            **kwargs,
        )
        ensure_pad_token(tokenizer, model)
        self.processing_class = tokenizer
        return model

    def place_lora(self, model, lora_args, method: str):
        from rmlora.tasks.features import FeatureClassifier, head_reads_pooled_input, single_linear_head

        model = super().place_lora(model, lora_args, method)
        if method == "full" and self.model_args.lora_placement == "head":
            self.placement = "head"  # full fine-tuning of the head alone: cached features as for LoRA on the head
        if self.placement != "head" or not self.data_args.cache_features:
            return model
        head = single_linear_head(model)
        probe = self.processing_class(["a probe text"], return_tensors="pt")
        if head is None or not head_reads_pooled_input(model, head, probe):
            # e.g. GPT-2's score layer runs on every token and the last one is picked after it
            logger.warning(
                "the head of %s does not read one pooled vector: features are not cached", type(model).__name__
            )
            return model
        self.feature_head, self._backbone = head, model
        return FeatureClassifier(model.get_submodule(head), head, model.config)

    def prepare_datasets(self) -> None:
        super().prepare_datasets()
        if self.feature_head is not None:
            from transformers import default_data_collator

            self.data_collator = default_data_collator
            self._backbone = None  # the frozen backbone is no longer needed: free it

    # -- datasets --------------------------------------------------------------------------------------
    def _prepare(self, ds, split: str):
        from transformers import DataCollatorWithPadding

        tokenizer = self.processing_class
        self.data_collator = DataCollatorWithPadding(tokenizer)
        text, pair = self.text_column, self.text_pair_column
        max_length = min(self.data_args.max_seq_length, _model_max_length(tokenizer))

        def tokenize(batch):
            first = [t if t is not None else "" for t in batch[text]]
            second = [t if t is not None else "" for t in batch[pair]] if pair else None
            return tokenizer(first, second, truncation=True, max_length=max_length)

        keep = {"labels"}
        tokens = ds.map(
            tokenize,
            batched=True,
            remove_columns=[c for c in ds.column_names if c not in keep],
            desc=f"tokenizing {split}",
        )
        if self.feature_head is None:
            return tokens
        return self._cached_features(ds, tokens, split, max_length)

    def _cached_features(self, raw, tokens, split: str, max_length: int):
        """The head's inputs over `tokens`, from the cache when the same model, tokenizer, length, pooling and
        data made them before (the key names each; see features.py)."""
        from rmlora.tasks.features import cached_feature_dataset, model_identity, tokenizer_identity

        m = self.model_args
        parts = {
            "model": model_identity(m.model_name_or_path, m.model_revision, m.gguf_file),
            "config": self._backbone.config.to_json_string(use_diff=False),
            "tokenizer": tokenizer_identity(self.processing_class),
            "max_seq_length": max_length,
            "columns": [self.text_column, self.text_pair_column],
            "pooling": type(self._backbone).__name__,  # the architecture decides how the head's input is pooled
            "head": self.feature_head,
            "data": raw._fingerprint,
        }
        cache_dir = self.data_args.feature_cache_dir
        ds, hit, path = cached_feature_dataset(
            parts,
            cache_dir,
            self._backbone,
            self.feature_head,
            tokens,
            self.data_collator,
            self.batch_size,
            self.device,
        )
        self.feature_cache_hits[split] = hit
        logger.info("features of %s: %s (%s)", split, "cache hit" if hit else "computed", path)
        return ds

    # -- metrics ---------------------------------------------------------------------------------------
    def predictions(self, logits) -> np.ndarray:
        logits = np.asarray(logits[0] if isinstance(logits, tuple) else logits)
        if self.is_regression:
            # one score per example: BERT returns (N, 1), DeBERTa-v2 flattens regression logits to (N,)
            return logits.reshape(len(logits), -1)[:, 0]
        return np.argmax(logits, axis=-1)

    def compute_metrics(self, eval_pred) -> dict:
        from rmlora.tasks.metrics import accuracy

        return accuracy(self.predictions(eval_pred.predictions), eval_pred.label_ids)


def _model_max_length(tokenizer) -> int:
    n = getattr(tokenizer, "model_max_length", None)
    # tokenizers without a limit report a huge sentinel (int(1e30))
    return n if isinstance(n, int) and 0 < n < 1_000_000 else 1_000_000
