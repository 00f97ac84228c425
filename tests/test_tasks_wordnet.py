"""WordNet glosses -> lexicographer category (rmlora.tasks.wordnet), the text head placement on cached pooled
features (rmlora.tasks.classification / features), and experiments/rank_tolerance.py's numerical rank."""

import csv
import importlib.util
import json
import os
from collections import Counter

import numpy as np
import pytest
import torch

from helpers import save_text_model, tmp_env
from rmlora.errors import DataError
from rmlora.tasks.wordnet import balanced_splits, read_glosses, write_splits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = [
    "  1 This software and database is being provided to you, the LICENSEE, by  \n",
    "  2 Princeton University under the following license.  By obtaining, using  \n",
]


def _line(offset: int, lex: int, pos: str, word: str, gloss: str) -> str:
    # WordNet's data-file format: offset lex_filenum ss_type w_cnt(hex) word lex_id p_cnt [pointers] | gloss
    return f"{offset:08d} {lex:02d} {pos} 01 {word} 0 001 @ 00001740 {pos} 0000 | {gloss}  \n"


def _write_wordnet(folder, counts: dict, with_lexnames: bool = False) -> dict:
    """data.noun / data.verb with counts[lex] glosses of category lex; returns {lex: [glosses]}."""
    folder.mkdir(parents=True, exist_ok=True)
    expected, lines = {}, {"data.noun": list(HEADER), "data.verb": list(HEADER)}
    offset = 100
    for lex, n in counts.items():
        name = "data.verb" if lex >= 29 else "data.noun"
        pos = "v" if lex >= 29 else "n"
        for i in range(n):
            gloss = f'gloss {i} of category {lex}; "an example" caf\xe9'
            lines[name].append(_line(offset, lex, pos, f"w{lex}_{i}", gloss))
            expected.setdefault(lex, []).append(gloss)
            offset += 1
    for name, content in lines.items():
        (folder / name).write_text("".join(content), encoding="latin-1")
    if with_lexnames:
        (folder / "lexnames").write_text("".join(f"{lex:02d}\tcat.{lex}\t1\n" for lex in counts), encoding="latin-1")
    return expected


def test_read_glosses_parses_the_data_file_format(tmp_path):
    expected = _write_wordnet(tmp_path / "wn", {3: 4, 5: 6, 30: 5})
    # the same gloss under two categories is dropped from both
    with open(tmp_path / "wn" / "data.noun", "a", encoding="latin-1") as f:
        f.write(_line(900, 5, "n", "dup", "shared gloss"))
        f.write(_line(901, 3, "n", "dup2", "shared gloss"))
    got = read_glosses(str(tmp_path / "wn"))
    assert got == {f"lex{lex:02d}": glosses for lex, glosses in expected.items()}
    named = _write_wordnet(tmp_path / "named", {3: 2, 30: 2}, with_lexnames=True)
    assert sorted(read_glosses(str(tmp_path / "named"))) == [f"cat.{lex}" for lex in named]


def test_read_glosses_without_data_files_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="apt-get install wordnet-base"):
        read_glosses(str(tmp_path))


def test_balanced_splits_are_disjoint_balanced_seeded_and_drop_small_classes():
    by_class = {"a": [f"a{i}" for i in range(20)], "b": [f"b{i}" for i in range(12)], "c": [f"c{i}" for i in range(5)]}
    sizes = {"train": 6, "validation": 2, "test": 3}
    splits = balanced_splits(by_class, sizes, seed=7)
    for split, n in sizes.items():
        assert Counter(label for _, label in splits[split]) == {"a": n, "b": n}  # c has 5 < 11 glosses
    texts = [t for rows in splits.values() for t, _ in rows]
    assert len(texts) == len(set(texts)) == 2 * 11
    assert all(t.startswith(label) for rows in splits.values() for t, label in rows)
    assert balanced_splits(by_class, sizes, seed=7) == splits
    assert balanced_splits(by_class, sizes, seed=8) != splits
    with pytest.raises(DataError, match="fewer per class"):
        balanced_splits(by_class, {"train": 30}, seed=0)


def test_write_splits_writes_csvs_the_text_task_reads(tmp_path):
    _write_wordnet(tmp_path / "wn", {3: 8, 5: 8, 30: 8, 31: 2})
    out = write_splits(str(tmp_path / "csv"), str(tmp_path / "wn"), {"train": 4, "validation": 1, "test": 2}, seed=1)
    assert out == {"rows": {"train": 12, "validation": 3, "test": 6}, "classes": ["lex03", "lex05", "lex30"]}
    with open(tmp_path / "csv" / "train.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and rows[0]["text"].endswith("caf\xe9")  # latin-1 read, UTF-8 written


# -- the text head placement on cached features -----------------------------------------------------------------


def _text_task(model_dir, csv_dir, cache_dir, max_seq_length=16, seed=0):
    from rmlora.methods.lora import LoraArguments
    from rmlora.tasks.arguments import DataArguments, ModelArguments
    from rmlora.tasks.registry import build_task

    model_args = ModelArguments(model_name_or_path=model_dir, lora_placement="head")
    files = {f"{s}_file": os.path.join(csv_dir, f"{s}.csv") for s in ("train", "validation", "test")}
    data_args = DataArguments(
        task_name="text", max_seq_length=max_seq_length, feature_cache_dir=str(cache_dir), **files
    )
    task = build_task(model_args, data_args, seed=seed)
    task.load_data()
    full = task.load_model()
    model = task.place_lora(full, LoraArguments(), "lora")
    task.prepare_datasets()
    return task, full, model


def test_text_head_features_are_the_pooled_output_and_the_cache_keys_on_length(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    tmp_env(monkeypatch, tmp_path)
    _write_wordnet(tmp_path / "wn", {3: 6, 5: 6, 30: 6})
    write_splits(str(tmp_path / "csv"), str(tmp_path / "wn"), {"train": 3, "validation": 1, "test": 2}, seed=0)
    bert = save_text_model(str(tmp_path / "bert"), num_labels=3)
    task, full, model = _text_task(bert, tmp_path / "csv", tmp_path / "features")
    assert task.feature_head == "classifier"
    assert task.feature_cache_hits == {"train": False, "validation": False, "test": False}
    assert type(model).__name__ == "FeatureClassifier"

    # independent computation: the backbone's pooled output (BERT pooler, eval mode) of the raw test texts
    with open(tmp_path / "csv" / "test.csv", encoding="utf-8") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    tok = AutoTokenizer.from_pretrained(bert)
    full.eval()
    with torch.no_grad():
        enc = tok(texts, truncation=True, max_length=16, padding=True, return_tensors="pt")
        pooled = full.bert(**enc).pooler_output
        logits = full(**enc).logits
    features = task.eval_datasets["test"][:]["features"]
    torch.testing.assert_close(features, pooled, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(model(features).logits, logits, rtol=1e-5, atol=1e-6)

    again, _, _ = _text_task(bert, tmp_path / "csv", tmp_path / "features")
    assert set(again.feature_cache_hits.values()) == {True}

    # computing the features (a cache miss) leaves the global generator where it was, as a cache hit does: LoRA's
    # initialisation, which follows, is then the same whichever run built the cache
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    _text_task(bert, tmp_path / "csv", tmp_path / "other-features")
    torch.testing.assert_close(torch.rand(4), expected, rtol=0, atol=0)
    shorter, _, _ = _text_task(bert, tmp_path / "csv", tmp_path / "features", max_seq_length=4)
    assert set(shorter.feature_cache_hits.values()) == {False}  # another length: never the stale cache
    assert not torch.equal(shorter.eval_datasets["test"][:]["features"], features)


def test_a_head_on_every_token_is_not_cached(tmp_path, monkeypatch):
    tmp_env(monkeypatch, tmp_path)
    _write_wordnet(tmp_path / "wn", {3: 4, 5: 4})
    write_splits(str(tmp_path / "csv"), str(tmp_path / "wn"), {"train": 2, "validation": 1, "test": 1}, seed=0)
    gpt2 = save_text_model(str(tmp_path / "gpt2"), kind="gpt2", num_labels=2)
    task, _, model = _text_task(gpt2, tmp_path / "csv", tmp_path / "features")
    assert task.feature_head is None and type(model).__name__ != "FeatureClassifier"
    assert "input_ids" in task.train_dataset.column_names


# -- experiments/rank_tolerance.py ------------------------------------------------------------------------------


def _rank_script():
    spec = importlib.util.spec_from_file_location(
        "rank_tolerance", os.path.join(ROOT, "experiments", "rank_tolerance.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("rtol", [None, 1e-3, 1e-2])
def test_rank_tolerance_matches_numpy_matrix_rank_on_the_dense_delta(tmp_path, rtol):
    script = _rank_script()
    rng = np.random.default_rng(0)
    d_out, d_in, r = 40, 96, 16
    u, _ = np.linalg.qr(rng.standard_normal((d_out, r)))
    v, _ = np.linalg.qr(rng.standard_normal((d_in, r)))
    sv = np.logspace(0, -7, r)  # spans every tolerance: each rtol cuts at a different place
    dense = (u * sv) @ v.T
    tol = None if rtol is None else rtol * np.linalg.svd(dense, compute_uv=False).max()
    expected = np.linalg.matrix_rank(dense.astype(np.float32), tol=tol)  # numpy's default rule at float32
    module = {"d_out": d_out, "d_in": d_in, "singular_values": np.linalg.svd(dense, compute_uv=False)[:r].tolist()}
    assert script.module_rank(module, rtol) == expected

    runs = tmp_path / "cmp" / "runs"
    for seed in (0, 1):
        (runs / f"lora_r16_s{seed}").mkdir(parents=True)
        (runs / f"lora_r16_s{seed}" / "diagnostics.json").write_text(json.dumps({"modules": [module, module]}))
    (tmp_path / "cmp" / "results.jsonl").write_text(
        "".join(json.dumps({"cell": f"lora_r16_s{s}", "method": "lora", "rank": 16, "seed": s}) + "\n" for s in (0, 1))
    )
    assert script.rank_table(str(tmp_path / "cmp"), [rtol]) == [("lora", 16, [[expected, expected]])]
