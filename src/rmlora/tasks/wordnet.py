"""WordNet glosses -> lexicographer category: a many-class text task (the paper's large-R head regime).

WordNet's data files (`data.noun`, `data.verb`, `data.adj`, `data.adv`; Debian package `wordnet-base`
puts them in /usr/share/wordnet) hold one synset per line: `offset lex_filenum ss_type w_cnt word ... | gloss`.
The second field is the lexicographer file number (0..44: noun.animal, verb.motion, adj.all, ...), the
class here; the text is the gloss after ` | `. Lines starting with two spaces are the licence header.
The numbers are named from the `lexnames` file where the folder has one (Princeton's distribution does,
Debian's does not: then the class is `lex<NN>`).

`write_splits` keeps the categories with enough distinct glosses, draws the same number per class for
train / validation / test (seeded, class-balanced) and writes three CSVs (`text`, `label`) that the text
task reads as they are:

    python -m rmlora.tasks.wordnet --output_dir data/wordnet --train_per_class 200
    rmlora train --task_name text --train_file data/wordnet/train.csv --validation_file data/wordnet/validation.csv \\
        --test_file data/wordnet/test.csv --text_column text --label_column label ...

Fixed files (not a per-run carve) let every seed and method share one feature cache under
`--lora_placement head`.
"""

from __future__ import annotations

import argparse
import csv
import os
from collections import defaultdict

import numpy as np

from rmlora.errors import DataError

DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
DEFAULT_DIR = "/usr/share/wordnet"  # where Debian's wordnet-base installs the data files
ENCODING = "latin-1"  # WordNet 3.0's files are not all valid UTF-8


def lexnames(folder: str) -> dict[int, str]:
    """{lexicographer file number: name} from the folder's `lexnames` file ({} when it has none)."""
    path = os.path.join(folder, "lexnames")
    if not os.path.isfile(path):
        return {}
    names = {}
    with open(path, encoding=ENCODING) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit():
                names[int(parts[0])] = parts[1]
    return names


def parse_line(line: str) -> tuple[int, str] | None:
    """(lexicographer file number, gloss) of one data-file line; None for the licence header or a line without gloss."""
    if line.startswith("  ") or " | " not in line:
        return None
    head, gloss = line.split(" | ", 1)
    fields = head.split()
    if len(fields) < 2 or not fields[1].isdigit():
        raise DataError(f"not a WordNet data line (no lexicographer file number in field 2): {line[:80]!r}")
    return int(fields[1]), gloss.strip()


def read_glosses(folder: str = DEFAULT_DIR) -> dict[str, list[str]]:
    """{category name: distinct glosses in file order} over the data files in `folder`.

    A gloss text that occurs under two categories is dropped from both (it could not be classified)."""
    present = [name for name in DATA_FILES if os.path.isfile(os.path.join(folder, name))]
    if not present:
        raise DataError(
            f"no WordNet data files ({', '.join(DATA_FILES)}) in {folder}: "
            "install them (apt-get install wordnet-base) or pass the folder that holds them"
        )
    names = lexnames(folder)
    seen: dict[str, str] = {}
    ambiguous: set[str] = set()
    for name in present:
        with open(os.path.join(folder, name), encoding=ENCODING) as f:
            for line in f:
                parsed = parse_line(line)
                if parsed is None:
                    continue
                number, gloss = parsed
                category = names.get(number, f"lex{number:02d}")
                if seen.setdefault(gloss, category) != category:
                    ambiguous.add(gloss)
    by_class: dict[str, list[str]] = defaultdict(list)
    for gloss, category in seen.items():
        if gloss not in ambiguous:
            by_class[category].append(gloss)
    return dict(by_class)


def balanced_splits(by_class: dict[str, list[str]], sizes: dict[str, int], seed: int) -> dict[str, list[tuple]]:
    """{split: [(text, label), ...]}: sizes[split] glosses per class, for the classes that have enough for all
    splits; disjoint, drawn with numpy's generator seeded by `seed`, rows shuffled."""
    need = sum(sizes.values())
    kept = sorted(c for c, glosses in by_class.items() if len(glosses) >= need)
    if len(kept) < 2:
        raise DataError(
            f"only {len(kept)} categories have {need} glosses or more: ask for fewer per class (--train_per_class ...)"
        )
    rng = np.random.default_rng(seed)
    splits: dict[str, list[tuple]] = {split: [] for split in sizes}
    for category in kept:
        order = rng.permutation(len(by_class[category]))
        start = 0
        for split, n in sizes.items():
            splits[split] += [(by_class[category][i], category) for i in order[start : start + n]]
            start += n
    for split, rows in splits.items():
        splits[split] = [rows[i] for i in rng.permutation(len(rows))]
    return splits


def write_splits(output_dir: str, folder: str = DEFAULT_DIR, sizes: dict | None = None, seed: int = 1234) -> dict:
    """Write output_dir/{train,validation,test}.csv; returns {split: rows written} and the classes kept."""
    sizes = sizes or {"train": 200, "validation": 40, "test": 60}
    splits = balanced_splits(read_glosses(folder), sizes, seed)
    os.makedirs(output_dir, exist_ok=True)
    for split, rows in splits.items():
        with open(os.path.join(output_dir, f"{split}.csv"), "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    classes = sorted({label for _, label in splits["train"]})
    return {"rows": {split: len(rows) for split, rows in splits.items()}, "classes": classes}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description="WordNet glosses -> lexicographer category, as train/validation/test CSVs",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--output_dir", required=True, help="folder for train.csv, validation.csv, test.csv")
    p.add_argument("--wordnet_dir", default=DEFAULT_DIR, help="folder with data.noun, data.verb, data.adj, data.adv")
    p.add_argument(
        "--train_per_class",
        type=int,
        default=200,
        help="training glosses per category; categories with fewer glosses than the three splits need are dropped",
    )
    p.add_argument("--validation_per_class", type=int, default=40, help="validation glosses per category")
    p.add_argument("--test_per_class", type=int, default=60, help="test glosses per category")
    p.add_argument("--seed", type=int, default=1234, help="seed of the class-balanced draws")
    a = p.parse_args(argv)
    sizes = {"train": a.train_per_class, "validation": a.validation_per_class, "test": a.test_per_class}
    out = write_splits(a.output_dir, a.wordnet_dir, sizes, a.seed)
    rows = ", ".join(f"{n} {split}" for split, n in out["rows"].items())
    print(f"{len(out['classes'])} categories, {rows} rows in {a.output_dir}")


if __name__ == "__main__":
    main()
