"""The model and data flags of `rmlora train`, named as in transformers' run_glue.py / run_qa.py /
run_image_classification.py so that users of those scripts know them already."""

from __future__ import annotations

from dataclasses import dataclass, field

PLACEMENTS = ("head", "attention", "all")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={
            "help": "Hub model id or local folder of the pre-trained model "
            "(with --gguf_file: the folder or repo of that file)."
        }
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer (or image processor) to use if not the model's own."}
    )
    gguf_file: str | None = field(
        default=None,
        metadata={
            "help": "Name of a GGUF file inside --model_name_or_path; transformers dequantizes it to float32 on load."
        },
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models and datasets are cached."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of a hub model."})
    lora_placement: str | None = field(
        default=None,
        metadata={
            "help": "Which linear layers get LoRA, when --target_modules is not given: "
            "head (only the task head, e.g. the "
            "classification layer as in the paper's Figure 1), attention (every linear layer of the attention blocks), "
            "all (every linear layer of the backbone: attention and MLP). Default: PEFT's per-architecture default, "
            "else attention. With attention/all the task head is trained fully (modules_to_save).",
            "choices": list(PLACEMENTS),
        },
    )
    ignore_mismatched_sizes: bool = field(
        default=True,
        metadata={
            "help": "Let a pre-trained head of another size (e.g. ImageNet's 1000 classes) be replaced by a new one."
        },
    )


@dataclass
class DataArguments:
    task_name: str | None = field(
        default=None,
        metadata={
            "help": "GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli), squad, "
            "image (or cifar100, food101, "
            "fashion_mnist), or text (a local text classification file)."
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset (or a local folder in the hub's layout) to load with datasets.load_dataset "
            "(default per task: nyu-mll/glue, rajpurkar/squad, ...)."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of --dataset_name."})
    train_file: str | None = field(
        default=None,
        metadata={"help": "Local training file: csv, tsv, json/jsonl or parquet (squad: a SQuAD v1.1 JSON file)."},
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "Local validation file, same format as --train_file."}
    )
    test_file: str | None = field(
        default=None, metadata={"help": "Local test file with labels, held apart: reported as test_<metric>."}
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Image data folder: an imagefolder (train/, validation/, test/ with one folder per class) "
            "or a folder of "
            "Fashion-MNIST IDX gz files (default for fashion_mnist: /usr/share/datasets/fashion-mnist)."
        },
    )
    text_column: str | None = field(
        default=None, metadata={"help": "Text column (text task: default 'text'; GLUE: the task's own columns)."}
    )
    text_pair_column: str | None = field(default=None, metadata={"help": "Second text column of a sentence-pair task."})
    label_column: str | None = field(
        default=None, metadata={"help": "Label column (default 'label'; image: 'label', 'labels' or 'fine_label')."}
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column (default 'image' or 'img')."})
    file_encoding: str = field(
        default="utf-8", metadata={"help": "Encoding of csv/tsv files (the tweet sentiment CSV is latin-1)."}
    )
    max_seq_length: int = field(default=128, metadata={"help": "Longest tokenized input; longer ones are truncated."})
    doc_stride: int | None = field(
        default=None,
        metadata={
            "help": "SQuAD: overlap in tokens between chunks of a long context "
            "(default: a third of --max_seq_length, as run_qa.py's 128 of 384)."
        },
    )
    n_best_size: int = field(default=20, metadata={"help": "SQuAD: start and end candidates kept per feature."})
    max_answer_length: int = field(default=30, metadata={"help": "SQuAD: longest answer in tokens."})
    image_size: int | None = field(
        default=None, metadata={"help": "Resize images to this side instead of the image processor's size."}
    )
    validation_split_percentage: float | None = field(
        default=None,
        metadata={
            "help": "Carve this percentage of train (seeded by --seed, stratified by label) as the validation split; a "
            "dataset's own validation split then becomes the test split when it has no labelled test split."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep a seeded random subset of this many training examples."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep a seeded random subset of this many validation examples."}
    )
    max_test_samples: int | None = field(
        default=None, metadata={"help": "Keep a seeded random subset of this many test examples."}
    )
    train_eval_samples: int = field(
        default=1000,
        metadata={
            "help": "Size of the fixed train subset evaluated each epoch for the train metric "
            "(0: the whole train split)."
        },
    )
    eval_every_epochs: int = field(
        default=1,
        metadata={
            "help": "Evaluate every split for history.jsonl every this many epochs (and after the last one): 1 draws "
            "Figure 1's per-epoch curves; more saves the evaluations of short many-epoch runs (a grid)."
        },
    )
    cache_features: bool = field(
        default=True,
        metadata={
            "help": "With --lora_placement head and a single linear head: compute the frozen backbone's features once, "
            "cache them, and train the head on them."
        },
    )
    feature_cache_dir: str | None = field(
        default=None, metadata={"help": "Where cached features are kept (default: ~/.cache/rmlora/features)."}
    )
