"""Reading local files and hub datasets into splits, carving a validation split, taking subsets.

Splits are a plain dict: "train", "validation", "test", and for MNLI "validation_mm" / "test_mm"
(mismatched). Metric keys follow the split: validation -> eval_<metric>, test -> test_<metric>, and the
mismatched ones get run_glue.py's "_mm" suffix (eval_accuracy_mm).
"""

from __future__ import annotations

import csv
import logging
import os

from datasets import get_dataset_config_names, load_dataset

from rmlora.errors import DataError

logger = logging.getLogger(__name__)

# file extension -> (datasets builder, extra load_dataset arguments)
_BUILDERS = {
    ".csv": ("csv", {}),
    # GLUE's tsv files hold unbalanced quotes inside sentences: read them as the GLUE loader does, unquoted
    ".tsv": ("csv", {"delimiter": "\t", "quoting": csv.QUOTE_NONE}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
EVAL_SPLITS = ("validation", "validation_mm", "test", "test_mm")


def split_prefix(split: str) -> tuple[str, str]:
    """(metric key prefix, suffix) of a split: validation_mm -> ("eval", "_mm")."""
    prefix = "eval" if split.startswith("validation") else "test" if split.startswith("test") else split
    return prefix, "_mm" if split.endswith("_mm") else ""


def check_file(path: str | None, what: str) -> str:
    if not path:
        raise DataError(f"no {what} given: pass --{what.replace(' ', '_')}")
    if not os.path.exists(path):
        raise DataError(f"{what} {path!r} does not exist: check the path")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise DataError(f"{what} {path!r} is empty: pass a file with a header and at least one row")
    return path


def load_file(path: str, what: str = "train file", encoding: str = "utf-8"):
    """One local csv/tsv/json(l)/parquet file as a datasets.Dataset, with one-line errors."""

    check_file(path, what)
    ext = os.path.splitext(path)[1].lower()
    if ext not in _BUILDERS:
        raise DataError(f"{what} {path!r} has an unknown extension {ext!r}: use one of {', '.join(_BUILDERS)}")
    builder, kwargs = _BUILDERS[ext]
    if builder == "csv":
        kwargs = {**kwargs, "encoding": encoding}
    try:
        ds = load_dataset(builder, data_files={"data": os.path.abspath(path)}, split="data", **kwargs)
    except Exception as e:  # datasets wraps pandas/arrow parse errors in its own types
        cause = e.__cause__ or e
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise DataError(
            f"cannot read {what} {path!r} as {builder}: {first}; check its format and --file_encoding"
        ) from None
    if len(ds) == 0:
        raise DataError(f"{what} {path!r} has no rows: pass a file with at least one example")
    return ds


_NETWORK_ERRORS = ("ConnectionError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError", "Timeout")


def _is_network_error(e: BaseException) -> bool:
    """Whether `e` (or what it wraps) is a failed connection: datasets, huggingface_hub, httpx and requests all
    raise their own types, so they are recognised by name along the exception chain."""
    seen = 0
    while e is not None and seen < 5:
        if isinstance(e, (ConnectionError, TimeoutError)) or any(n in type(e).__name__ for n in _NETWORK_ERRORS):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _config_names(name: str) -> list[str] | None:

    try:
        return list(get_dataset_config_names(name))
    except Exception:  # the repo itself cannot be read: the caller reports the original error
        return None


def load_hub_dataset(name: str, config: str | None, cache_dir: str | None, offline_hint: str):
    """`datasets.load_dataset(name, config)` (a hub id or a local folder in the hub's layout), with one-line errors
    that name the real cause: a config the repo does not have (listing its configs), a repo that does not exist, or
    a connection failure (only then `offline_hint`, e.g. "pass --train_file ...")."""

    try:
        return load_dataset(name, config, cache_dir=cache_dir)
    except Exception as e:  # datasets raises ValueError, FileNotFoundError, DatasetNotFoundError, ConnectionError
        if _is_network_error(e):
            raise DataError(f"cannot reach the hub to load {name!r} ({_first_line(e)}): {offline_hint}") from None
        configs = _config_names(name) if isinstance(e, ValueError) else None
        if configs and config not in configs:
            given = (
                f"--dataset_config_name {config!r} is not" if config else "no --dataset_config_name given, and it is"
            )
            raise DataError(
                f"{given} one of the configs of {name!r}: pass --dataset_config_name with one of {', '.join(configs)}"
            ) from None
        if isinstance(e, FileNotFoundError) or type(e).__name__ == "DatasetNotFoundError":
            raise DataError(
                f"dataset {name!r} is neither a local folder nor a hub dataset ({_first_line(e)}): check --dataset_name"
            ) from None
        raise DataError(f"cannot load dataset {name!r}: {_first_line(e)}") from None


def pick_splits(hub, mapping: dict[str, str], name: str, required: tuple[str, ...] = ("train",)) -> dict:
    """{our split: hub[their split]} for the splits present; a required one that is missing lists the splits."""
    for ours in required:
        if mapping.get(ours, ours) not in hub:
            raise DataError(
                f"dataset {name!r} has no {mapping.get(ours, ours)!r} split (it has {', '.join(hub)}): "
                "pass a dataset or config with that split, or local files (--train_file / --data_dir)"
            )
    return {ours: hub[theirs] for ours, theirs in mapping.items() if theirs in hub}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def require_columns(ds, columns, split: str, fix: str | None = None) -> None:
    missing = [c for c in columns if c and c not in ds.column_names]
    if missing:
        fix = fix or "rename the column or pass --text_column / --text_pair_column / --label_column"
        raise DataError(
            f"the {split} split has no column {', '.join(map(repr, missing))} (it has {', '.join(ds.column_names)}): "
            + fix
        )


def seeded_subset(ds, n: int | None, seed: int):
    """A seeded random subset of n examples (the whole set when n is None or larger)."""
    if n is None or n >= len(ds):
        return ds
    if n < 1:
        raise DataError(f"a subset size must be at least 1, got {n}")
    # a random subset, not the first n: files such as the tweet CSV are sorted by label
    return ds.shuffle(seed=seed).select(range(n))


def carve_validation(splits: dict, percentage: float, seed: int, stratify_column: str | None = None) -> dict:
    """Move `percentage` % of train into a new validation split; the old validation becomes test if none."""
    if not 0 < percentage < 100:
        raise DataError(f"--validation_split_percentage must lie in (0, 100), got {percentage}")
    train = splits["train"]
    n_val = int(round(len(train) * percentage / 100))
    if n_val < 1 or n_val >= len(train):
        raise DataError(
            f"{percentage}% of {len(train)} training examples leaves no validation or no training example: "
            "use a larger train set or another percentage"
        )
    try:
        parts = train.train_test_split(test_size=n_val, seed=seed, stratify_by_column=stratify_column)
    except ValueError:  # too few examples of some class to stratify
        parts = train.train_test_split(test_size=n_val, seed=seed)
    out = dict(splits)
    if "validation" in splits and "test" in splits:
        logger.warning("the validation split is carved from train; the dataset's validation split is not used")
    if "validation" in splits and "test" not in splits:
        logger.warning("the validation split is carved from train; the dataset's validation split serves as test")
        out["test"] = splits["validation"]
        if "validation_mm" in splits and "test_mm" not in splits:
            out["test_mm"] = splits["validation_mm"]
    out.pop("validation_mm", None)
    out["train"], out["validation"] = parts["train"], parts["test"]
    return out


def finish_splits(splits: dict, data_args, seed: int, stratify_column: str | None = None) -> dict:
    """Carve validation (if asked) and take the --max_*_samples subsets, in that order."""
    if "train" not in splits:
        raise DataError("no training data: pass --train_file, --dataset_name or --data_dir")
    if data_args.validation_split_percentage is not None:
        splits = carve_validation(splits, data_args.validation_split_percentage, seed, stratify_column)
    limits = {"train": data_args.max_train_samples}
    for name in EVAL_SPLITS:
        limits[name] = data_args.max_eval_samples if name.startswith("validation") else data_args.max_test_samples
    return {name: seeded_subset(ds, limits.get(name), seed) for name, ds in splits.items()}


def load_local_splits(data_args) -> dict:
    """{"train", "validation"?, "test"?} from --train_file / --validation_file / --test_file."""
    d = data_args
    splits = {"train": load_file(d.train_file, "train file", d.file_encoding)}
    if d.validation_file:
        splits["validation"] = load_file(d.validation_file, "validation file", d.file_encoding)
    if d.test_file:
        splits["test"] = load_file(d.test_file, "test file", d.file_encoding)
    return splits
