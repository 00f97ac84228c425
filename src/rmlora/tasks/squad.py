"""SQuAD v1.1 extractive question answering: reading, features with doc stride, n-best post-processing.

Encoders (BERT, DeBERTa) and decoders (GPT-2, Llama: `...ForQuestionAnswering`) both predict a start and
an end logit per token. As in transformers' run_qa.py, a context longer than --max_seq_length is cut
into overlapping features (--doc_stride), each feature's answer span is mapped to tokens through the
offset mapping (a feature that does not contain the answer points at the first token), and a
prediction is the best-scoring valid span (start ≤ end, at most --max_answer_length tokens, inside the
context) among the --n_best_size top starts and ends of all features of an example. Eval features
carry positions too, so that the Trainer reports an eval loss beside EM / F1.

Local files are the official JSON format, read here because datasets' json loader flattens its nesting
poorly: {"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", "answers":
[{"text", "answer_start"}]}]}]}]}. Every answer must be the context's text at answer_start.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
from datasets import Dataset
from transformers import AutoModelForQuestionAnswering, default_data_collator

from rmlora.errors import ConfigError, DataError
from rmlora.tasks.base import Task, ensure_pad_token
from rmlora.tasks.data import check_file, load_hub_dataset, pick_splits, require_columns, seeded_subset
from rmlora.tasks.loading import from_pretrained_quietly, load_tokenizer
from rmlora.tasks.metrics import squad_metrics

HUB_DATASET = "rajpurkar/squad"
SQUAD_COLUMNS = ("id", "context", "question", "answers")


def read_squad_json(path: str, what: str = "train file"):
    """A SQuAD v1.1 JSON file as a datasets.Dataset in the hub's columns (id, title, context, question, answers)."""

    check_file(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{what} {path!r} is not valid JSON ({e}): pass a SQuAD v1.1 file") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f'{what} {path!r} is not in the SQuAD v1.1 format: expected {{"data": [articles]}}')
    rows = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    try:
        for article in doc["data"]:
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    answers = qa["answers"]
                    for a in answers:
                        start, text = int(a["answer_start"]), a["text"]
                        if context[start : start + len(text)] != text:
                            raise DataError(
                                f"in {path}, question {qa['id']}: the answer {text!r} is not the context's text at "
                                f"answer_start={start} (found {context[start : start + len(text)]!r}): fix answer_start"
                            )
                    rows["id"].append(str(qa["id"]))
                    rows["title"].append(article.get("title", ""))
                    rows["context"].append(context)
                    rows["question"].append(qa["question"])
                    rows["answers"].append(
                        {
                            "text": [a["text"] for a in answers],
                            "answer_start": [int(a["answer_start"]) for a in answers],
                        }
                    )
    except (KeyError, TypeError) as e:
        raise DataError(f"{what} {path!r} is not in the SQuAD v1.1 format: missing or malformed field {e}") from None
    if not rows["id"]:
        raise DataError(f"{what} {path!r} holds no questions: pass a SQuAD v1.1 file with at least one question")
    if len(set(rows["id"])) != len(rows["id"]):
        raise DataError(f"{what} {path!r} repeats question ids: every question needs its own id")
    return Dataset.from_dict(rows)


def postprocess_predictions(
    examples, features, start_logits, end_logits, n_best_size: int = 20, max_answer_length: int = 30
) -> dict[str, str]:
    """Question id -> predicted answer text: the best valid span over all features of each example."""
    by_example = defaultdict(list)
    for i, example_id in enumerate(features["example_id"]):
        by_example[example_id].append(i)
    all_offsets = features["offset_mapping"]
    predictions = {}
    for example in examples:
        best = None  # (score, start_char, end_char)
        for fi in by_example[example["id"]]:
            starts, ends, offsets = start_logits[fi], end_logits[fi], all_offsets[fi]
            top_starts = np.argsort(starts)[-1 : -n_best_size - 1 : -1]
            top_ends = np.argsort(ends)[-1 : -n_best_size - 1 : -1]
            for s in top_starts:
                for e in top_ends:
                    if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                        continue
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    score = float(starts[s] + ends[e])
                    if best is None or score > best[0]:
                        best = (score, offsets[s][0], offsets[e][1])
        predictions[example["id"]] = example["context"][best[1] : best[2]] if best else ""
    return predictions


class QuestionAnsweringTask(Task):
    family = "squad"
    primary_metric = "f1"
    trainer_label_names = ("start_positions", "end_positions")

    def __init__(self, name, model_args, data_args, seed=42):
        super().__init__(name, model_args, data_args, seed)
        self.examples: dict = {}
        self.doc_stride = data_args.doc_stride if data_args.doc_stride is not None else data_args.max_seq_length // 3
        if not 0 <= self.doc_stride < data_args.max_seq_length:
            raise ConfigError(
                f"--doc_stride {self.doc_stride} must lie in [0, --max_seq_length {data_args.max_seq_length}): lower it"
            )

    def _load_splits(self) -> dict:
        d = self.data_args
        if d.train_file:
            splits = {"train": read_squad_json(d.train_file, "train file")}
            if d.validation_file:
                splits["validation"] = read_squad_json(d.validation_file, "validation file")
            if d.test_file:
                splits["test"] = read_squad_json(d.test_file, "test file")
            return splits
        name = d.dataset_name or HUB_DATASET
        hint = "without internet pass --train_file and --validation_file (SQuAD v1.1 JSON)"
        hub = load_hub_dataset(name, d.dataset_config_name, self.model_args.cache_dir, hint)
        splits = pick_splits(hub, {"train": "train", "validation": "validation", "test": "test"}, name)
        for split, ds in splits.items():
            require_columns(ds, SQUAD_COLUMNS, split, "SQuAD needs them (rajpurkar/squad's columns)")
        return splits

    @property
    def num_labels(self) -> int:
        return 2

    def peft_task_type(self):
        return None if self.placement == "head" else "QUESTION_ANS"

    def _load_pretrained(self):

        kwargs = self.from_pretrained_kwargs()
        tokenizer = load_tokenizer(self.model_args.tokenizer_name or self.model_args.model_name_or_path, **kwargs)
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(
                "SQuAD needs a fast tokenizer (offset mappings): pass a model or --tokenizer_name with tokenizer.json"
            )
        model = from_pretrained_quietly(AutoModelForQuestionAnswering, self.model_args.model_name_or_path, **kwargs)
        ensure_pad_token(tokenizer, model)
        self.processing_class = tokenizer
        return model

    # -- features --------------------------------------------------------------------------------------
    def _features(self, examples, keep_offsets: bool):
        tokenizer = self.processing_class
        pad_on_right = tokenizer.padding_side == "right"
        context_index = 1 if pad_on_right else 0
        questions = [q.lstrip() for q in examples["question"]]  # leading spaces waste the truncation budget
        contexts = examples["context"]
        try:
            enc = tokenizer(
                questions if pad_on_right else contexts,
                contexts if pad_on_right else questions,
                truncation="only_second" if pad_on_right else "only_first",
                max_length=self.data_args.max_seq_length,
                stride=self.doc_stride,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
                padding="max_length",
            )
        except BaseException as e:  # noqa: B036 - the tokenizers' Rust panic is a BaseException (pyo3 PanicException)
            if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
                raise  # KeyboardInterrupt, SystemExit
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(
                f"cannot cut contexts into features ({first}): lower --doc_stride or raise --max_seq_length"
            ) from None
        sample_map = enc.pop("overflow_to_sample_mapping")
        offsets_all = enc.pop("offset_mapping")
        enc["start_positions"], enc["end_positions"] = [], []
        if keep_offsets:
            enc["example_id"], enc["offset_mapping"] = [], []
        for i, offsets in enumerate(offsets_all):
            input_ids = enc["input_ids"][i]
            cls = tokenizer.cls_token_id
            cls_index = input_ids.index(cls) if cls is not None and cls in input_ids else 0
            seq_ids = enc.sequence_ids(i)
            sample = sample_map[i]
            answers = examples["answers"][sample]
            start_pos = end_pos = cls_index
            context_tokens = [t for t, s in enumerate(seq_ids) if s == context_index]
            if answers["answer_start"] and context_tokens:
                start_char = answers["answer_start"][0]
                end_char = start_char + len(answers["text"][0])
                first, last = context_tokens[0], context_tokens[-1]
                if offsets[first][0] <= start_char and offsets[last][1] >= end_char:
                    start_pos, end_pos = first, last
                    while start_pos <= last and offsets[start_pos][0] <= start_char:
                        start_pos += 1
                    start_pos -= 1
                    while end_pos >= first and offsets[end_pos][1] >= end_char:
                        end_pos -= 1
                    end_pos += 1
            enc["start_positions"].append(start_pos)
            enc["end_positions"].append(end_pos)
            if keep_offsets:
                enc["example_id"].append(examples["id"][sample])
                enc["offset_mapping"].append(
                    [o if seq_ids[k] == context_index else None for k, o in enumerate(offsets)]
                )
        return enc

    def check_lengths(self, ds, split: str) -> None:
        """The longest question must leave the context more than --doc_stride tokens of --max_seq_length.

        Otherwise the tokenizers library panics while cutting features (`stride` must be less than the room
        left for the context); checked here, before tokenizing, to name the example and the flag to change.
        """
        tokenizer = self.processing_class
        questions = [q.lstrip() for q in ds["question"]]
        if not questions:
            return
        lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
        i = int(np.argmax(lengths))
        longest, specials = lengths[i], tokenizer.num_special_tokens_to_add(pair=True)
        max_len, stride = self.data_args.max_seq_length, self.doc_stride
        room = max_len - specials - longest  # tokens left for the context in each feature
        if room > stride:
            return
        lower = f" or lower --doc_stride below {room}" if room > 0 else ""
        raise DataError(
            f"question {ds['id'][i]!r} of the {split} split is {longest} tokens long: with {specials} special tokens "
            f"it leaves {room} of --max_seq_length {max_len} for the context, not more than --doc_stride {stride}: "
            f"raise --max_seq_length to at least {longest + specials + stride + 1}{lower}"
        )

    def _prepare(self, ds, split: str):

        self.check_lengths(ds, split)
        self.data_collator = default_data_collator
        keep_offsets = split != "train"
        if keep_offsets:
            self.examples[split] = ds
        return ds.map(
            lambda batch: self._features(batch, keep_offsets),
            batched=True,
            remove_columns=ds.column_names,
            desc=f"features of {split}",
        )

    def _train_eval_dataset(self):
        n = self.data_args.train_eval_samples or None
        subset = seeded_subset(self.raw["train"], n, self.seed)
        return self._prepare(subset, "train_eval")

    # -- evaluation ------------------------------------------------------------------------------------
    def trainer_metrics(self):
        return None  # EM / F1 need the n-best post-processing over features: _predict_metrics does it

    def _predict_metrics(self, trainer, split: str, prefix: str) -> dict:
        features = self.eval_datasets[split]
        out = trainer.predict(features, metric_key_prefix=prefix)
        start_logits, end_logits = out.predictions[:2]
        examples = self.examples[split]
        predicted = postprocess_predictions(
            examples, features, start_logits, end_logits, self.data_args.n_best_size, self.data_args.max_answer_length
        )
        references = {ex["id"]: ex["answers"]["text"] for ex in examples}
        metrics = dict(out.metrics)
        metrics.update({f"{prefix}_{k}": v for k, v in squad_metrics(predicted, references).items()})
        return metrics
