"""The smoke-scale assets (rmlora.assets.smoke): each dataset folder reads through `load_dataset(folder, config)`
with the hub repository's own configs, splits and feature types (written out below from the hub's dataset cards,
not from the builders), each model folder loads through transformers' Auto classes as the real repository does,
and one `rmlora train` run per task kind takes the whole training path on them. Builds are byte-for-byte
deterministic, and two processes building the same asset at once both end with one complete folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from datasets import ClassLabel, Features, Image, Sequence, Value, get_dataset_config_names, load_dataset

from helpers import run_train, subprocess_env, tmp_env
from rmlora.assets.smoke import SMOKE_ASSETS, smoke_asset
from rmlora.errors import AssetError
from rmlora.io.atomic import build_folder_once

# -- the hub's schemas (the dataset cards of nyu-mll/glue, rajpurkar/squad, uoft-cs/cifar100, ethz/food101) ---------

NLI3 = ["entailment", "neutral", "contradiction"]
TVT = ("train", "validation", "test")
MNLI_SPLITS = ("train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched")
HUB_GLUE = {  # config: (text columns, label names (None: a float32 score), splits)
    "ax": (("premise", "hypothesis"), NLI3, ("test",)),
    "cola": (("sentence",), ["unacceptable", "acceptable"], TVT),
    "mnli": (("premise", "hypothesis"), NLI3, MNLI_SPLITS),
    "mnli_matched": (("premise", "hypothesis"), NLI3, ("validation", "test")),
    "mnli_mismatched": (("premise", "hypothesis"), NLI3, ("validation", "test")),
    "mrpc": (("sentence1", "sentence2"), ["not_equivalent", "equivalent"], TVT),
    "qnli": (("question", "sentence"), ["entailment", "not_entailment"], TVT),
    "qqp": (("question1", "question2"), ["not_duplicate", "duplicate"], TVT),
    "rte": (("sentence1", "sentence2"), ["entailment", "not_entailment"], TVT),
    "sst2": (("sentence",), ["negative", "positive"], TVT),
    "stsb": (("sentence1", "sentence2"), None, TVT),
    "wnli": (("sentence1", "sentence2"), ["not_entailment", "entailment"], TVT),
}
HUB_SQUAD = Features(
    {
        "id": Value("string"),
        "title": Value("string"),
        "context": Value("string"),
        "question": Value("string"),
        "answers": Sequence({"text": Value("string"), "answer_start": Value("int32")}),
    }
)
CIFAR100_FINE = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man
maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree
plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail
snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout
tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
CIFAR100_COARSE = """aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices
household_furniture insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes
large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles small_mammals trees
vehicles_1 vehicles_2""".split()
FOOD101 = """apple_pie baby_back_ribs baklava beef_carpaccio beef_tartare beet_salad beignets bibimbap bread_pudding
breakfast_burrito bruschetta caesar_salad cannoli caprese_salad carrot_cake ceviche cheesecake cheese_plate
chicken_curry chicken_quesadilla chicken_wings chocolate_cake chocolate_mousse churros clam_chowder club_sandwich
crab_cakes creme_brulee croque_madame cup_cakes deviled_eggs donuts dumplings edamame eggs_benedict escargots
falafel filet_mignon fish_and_chips foie_gras french_fries french_onion_soup french_toast fried_calamari fried_rice
frozen_yogurt garlic_bread gnocchi greek_salad grilled_cheese_sandwich grilled_salmon guacamole gyoza hamburger
hot_and_sour_soup hot_dog huevos_rancheros hummus ice_cream lasagna lobster_bisque lobster_roll_sandwich
macaroni_and_cheese macarons miso_soup mussels nachos omelette onion_rings oysters pad_thai paella pancakes
panna_cotta peking_duck pho pizza pork_chop poutine prime_rib pulled_pork_sandwich ramen ravioli red_velvet_cake
risotto samosa sashimi scallops seaweed_salad shrimp_and_grits spaghetti_bolognese spaghetti_carbonara spring_rolls
steak strawberry_shortcake sushi tacos takoyaki tiramisu tuna_tartare waffles""".split()
HUB_CIFAR100 = Features(
    {"img": Image(), "fine_label": ClassLabel(names=CIFAR100_FINE), "coarse_label": ClassLabel(names=CIFAR100_COARSE)}
)
HUB_FOOD101 = Features({"image": Image(), "label": ClassLabel(names=FOOD101)})


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("smoke"))
    for name in SMOKE_ASSETS:
        smoke_asset(name, path)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    tmp_env(monkeypatch, tmp_path)  # the datasets cache of each test in its own folder


def _shard(root, repo, folder, split) -> pd.DataFrame:  # read with pandas, not through datasets
    return pd.read_parquet(os.path.join(root, repo, folder, f"{split}-00000-of-00001.parquet"))


# -- datasets ------------------------------------------------------------------------------------------------------


def test_glue_has_every_hub_config_with_its_features_and_splits(root, cache):
    folder = os.path.join(root, "glue")
    assert get_dataset_config_names(folder) == sorted(HUB_GLUE)
    for config, (columns, names, splits) in HUB_GLUE.items():
        ds = load_dataset(folder, config)
        label = Value("float32") if names is None else ClassLabel(names=names)
        expected = Features({**{c: Value("string") for c in columns}, "label": label, "idx": Value("int32")})
        assert tuple(ds) == splits, config
        for split, part in ds.items():
            assert part.features == expected, (config, split)
            labels = part["label"]
            assert 8 <= len(part) <= 48 and part["idx"] == list(range(len(part)))
            if split.startswith("test") and config != "mrpc":
                assert set(labels) == {-1}, (config, split)  # hidden, as on the hub
            elif names is None:
                assert all(0 <= v <= 5 for v in labels) and len(set(labels)) > 2
            else:
                assert set(labels) == set(range(len(names))), (config, split)  # every class: non-degenerate metrics


def test_squad_plain_text_has_the_hub_features_and_answers_at_their_offsets(root, cache):
    ds = load_dataset(os.path.join(root, "squad"), "plain_text")
    assert tuple(ds) == ("train", "validation")
    for split, part in ds.items():
        assert part.features == HUB_SQUAD
        assert len(set(part["id"])) == len(part) >= 12
        for row in part:
            answers = row["answers"]
            assert len(answers["text"]) == (1 if split == "train" else 3)  # SQuAD v1.1: dev has several answers
            for text, start in zip(answers["text"], answers["answer_start"]):
                assert row["context"][start : start + len(text)] == text


def test_cifar100_and_food101_have_the_hub_features_and_real_images(root, cache):
    cifar = load_dataset(os.path.join(root, "cifar100"), "cifar100")
    food = load_dataset(os.path.join(root, "food101"))  # one config, "default", as on the hub
    assert tuple(cifar) == ("train", "test") and tuple(food) == ("train", "validation")
    for part in cifar.values():
        assert part.features == HUB_CIFAR100
        image = part[0]["img"]
        assert image.format == "PNG" and image.size == (32, 32) and image.mode == "RGB"
        # the coarse label is each fine class's CIFAR-100 superclass
        parents = {"apple": "fruit_and_vegetables", "aquarium_fish": "fish", "baby": "people"}
        parents["bear"] = "large_carnivores"
        for fine, coarse in zip(part["fine_label"], part["coarse_label"]):
            assert CIFAR100_COARSE[coarse] == parents[CIFAR100_FINE[fine]]
    for part in food.values():
        assert part.features == HUB_FOOD101
        assert part[0]["image"].format == "JPEG"
        assert len({part[i]["image"].size for i in range(3)}) > 1  # Food-101's images differ in size
    assert _shard(root, "food101", "data", "train")["image"][0]["path"].endswith(".jpg")


# -- models --------------------------------------------------------------------------------------------------------


def test_deberta_v3_loads_like_the_real_one_with_a_converted_spm_tokenizer(root):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder = os.path.join(root, "deberta-v3")
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "spm.model", "tokenizer_config.json"]
    with open(os.path.join(folder, "tokenizer_config.json"), "rb") as f:
        assert f.read() == b'{\n  "do_lower_case": false,\n  "vocab_type": "spm"\n}\n'  # deberta-v3-base's
    cfg = AutoConfig.from_pretrained(folder)
    assert cfg.model_type == "deberta-v2" and cfg.relative_attention and not cfg.position_biased_input
    assert list(cfg.pos_att_type) == ["p2c", "c2p"] and cfg.share_att_key and cfg.norm_rel_ebd == "layer_norm"
    model, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert type(model).__name__ == "DebertaV2Model" and not info["missing_keys"] and not info["unexpected_keys"]

    tok = AutoTokenizer.from_pretrained(folder)  # converted from spm.model by sentencepiece + protobuf
    import sentencepiece as spm

    pieces = spm.SentencePieceProcessor(model_file=os.path.join(folder, "spm.model"))
    assert tok.is_fast and [tok.pad_token, tok.cls_token, tok.sep_token, tok.unk_token] == [
        pieces.id_to_piece(i) for i in range(4)
    ]
    assert tok.mask_token == "[MASK]" and tok.mask_token_id == pieces.get_piece_size()  # added after the pieces
    text = "where was alice in 1998 ? she was in paris ."
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and tok.unk_token_id not in ids
    assert ids[1:-1] == pieces.encode(text)  # the fast tokenizer splits as SentencePiece itself does
    assert max(ids) < cfg.vocab_size


def test_gpt2_loads_like_the_real_one_byte_level_without_a_pad_token(root):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = os.path.join(root, "gpt2")
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "generation_config.json"):
        assert os.path.isfile(os.path.join(folder, name)), name
    cfg = AutoConfig.from_pretrained(folder)
    assert cfg.model_type == "gpt2" and cfg.architectures == ["GPT2LMHeadModel"]
    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert type(model).__name__ == "GPT2LMHeadModel" and not info["missing_keys"]
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.is_fast and tok.pad_token is None
    assert tok.eos_token == tok.bos_token == tok.unk_token == "<|endoftext|>"
    assert tok.eos_token_id == len(tok) - 1 == cfg.eos_token_id and cfg.vocab_size == len(tok)
    text = "where was alice in 1998 ? naïve café, 日本"  # byte-level: any text round-trips, unseen bytes too
    enc = tok(text, return_offsets_mapping=True)
    assert tok.decode(enc["input_ids"]) == text
    assert [text[a:b] for a, b in enc["offset_mapping"]][:3] == ["where", " was", " alice"]  # offsets keep the space


def test_vit_loads_like_the_real_one_with_an_imagenet_head(root):
    from PIL import Image as PILImage
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    folder = os.path.join(root, "vit")
    model, info = AutoModelForImageClassification.from_pretrained(folder, output_loading_info=True)
    assert type(model).__name__ == "ViTForImageClassification" and not info["missing_keys"]
    assert model.config.id2label[0] == "tench, Tinca tinca" and model.config.id2label[9] == "ostrich, Struthio camelus"
    processor = AutoImageProcessor.from_pretrained(folder)
    with open(os.path.join(folder, "preprocessor_config.json"), encoding="utf-8") as f:
        assert json.load(f)["image_processor_type"] == "ViTImageProcessor"
    pixels = processor(PILImage.new("RGB", (40, 30), (255, 0, 0)), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 16, 16)
    assert torch.allclose(pixels[0, :, 0, 0], torch.tensor([1.0, -1.0, -1.0]))  # (x / 255 − 0.5) / 0.5
    assert model(pixel_values=pixels).logits.shape == (1, 10)


# -- through `rmlora train` ----------------------------------------------------------------------------------------

CELLS = {  # task kind: (model, task, data, extra flags)
    "glue-pair": ("deberta-v3", "mnli", "glue", ["--lora_placement", "all"]),
    "glue-regression": ("deberta-v3", "stsb", "glue", ["--lora_placement", "all"]),
    "squad-encoder": ("deberta-v3", "squad", "squad", ["--max_seq_length", "64", "--doc_stride", "16"]),
    "squad-decoder": ("gpt2", "squad", "squad", ["--max_seq_length", "64", "--doc_stride", "16"]),
    "image-head-cifar100": ("vit", "cifar100", "cifar100", ["--lora_placement", "head"]),
    "image-head-food101": ("vit", "food101", "food101", ["--lora_placement", "head"]),
}


@pytest.mark.parametrize("kind", list(CELLS))
def test_one_training_step_on_the_smoke_assets(root, cache, tmp_path, kind, caplog):
    model, task, data, extra = CELLS[kind]
    args = ["--model_name_or_path", os.path.join(root, model), "--task_name", task]
    flags = [*args, "--dataset_name", os.path.join(root, data), "--method", "rm-lora", "--max_steps", "1", *extra]
    m = run_train(flags, tmp_path / "out")
    logged = [r.getMessage() for r in caplog.records]
    # the checkpoint declares no BOS / EOS ids (as deberta-v3-base): taking the tokenizer's is no news to print
    assert not any("new PAD/BOS/EOS tokens" in line for line in logged)
    assert m["total_steps"] == 1
    splits = m["data"]["splits"]
    if task == "mnli":
        assert splits == {"train": 32, "validation": 16, "validation_mm": 16}  # the hub's test splits unused
        assert {"eval_accuracy", "eval_accuracy_mm"} <= set(m["metrics"])
    elif task == "stsb":
        assert m["data"]["num_labels"] == 1 and {"eval_pearson", "eval_spearmanr"} <= set(m["metrics"])
    elif task == "squad":
        assert splits == {"train": len(_shard(root, "squad", "plain_text", "train")), "validation": 12}
        assert 0 <= m["metrics"]["eval_exact_match"] <= m["metrics"]["eval_f1"] <= 100
    else:
        names = CIFAR100_FINE if task == "cifar100" else FOOD101
        assert m["data"]["label_list"] == names and m["data"]["lora_placement"] == "head"
        assert m["feature_cache"]["head"] == "classifier"
        # transformers warns when num_labels is passed beside an id2label that replaces the checkpoint's head
        assert not any("incompatible to the `id2label`" in line for line in logged)


def test_the_image_transform_does_not_pickle_the_frozen_backbone(root, cache, tmp_path, monkeypatch):
    """`datasets` fingerprints a `with_transform` transform by pickling it: a transform bound to the task pickled the
    whole task, the frozen backbone of --lora_placement head with it (ViT-B/16: 2.6 s per split)."""
    pickled = []
    getstate = torch.nn.Module.__getstate__

    def recording(self):
        pickled.append(type(self).__name__)
        return getstate(self)

    monkeypatch.setattr(torch.nn.Module, "__getstate__", recording)
    args = ["--model_name_or_path", os.path.join(root, "vit"), "--task_name", "food101", "--lora_placement", "head"]
    run_train([*args, "--dataset_name", os.path.join(root, "food101"), "--max_steps", "1"], tmp_path / "out")
    assert "ViTForImageClassification" not in pickled and "ViTModel" not in pickled


# -- building ------------------------------------------------------------------------------------------------------


def _digest(folder: str) -> dict[str, str]:
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


_BUILD = """
import sys
from rmlora.assets.smoke import SMOKE_ASSETS, smoke_asset
for name in SMOKE_ASSETS:
    smoke_asset(name, sys.argv[1])
"""


def _build_all(path: str) -> None:
    for name in SMOKE_ASSETS:
        smoke_asset(name, path)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the racing builders are forked processes")
@pytest.mark.slow  # three processes each build every smoke asset
def test_builds_give_the_same_bytes_and_concurrent_builds_do_not_collide(root, tmp_path):
    import multiprocessing

    # a fresh interpreter with another hash seed builds on its own, while two forked processes race on one folder
    fresh = str(tmp_path / "fresh")
    env = subprocess_env(PYTHONHASHSEED="random")
    child = subprocess.Popen([sys.executable, "-c", _BUILD, fresh], env=env, stderr=subprocess.PIPE)
    shared = str(tmp_path / "shared")
    racers = [multiprocessing.get_context("fork").Process(target=_build_all, args=(shared,)) for _ in "ab"]
    for p in racers:
        p.start()
    for p in racers:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert child.wait(timeout=300) == 0, child.stderr.read().decode()[-2000:]
    for built in (shared, fresh):
        assert sorted(os.listdir(built)) == sorted(SMOKE_ASSETS)  # no temporary folder left behind
        for name in SMOKE_ASSETS:
            assert _digest(os.path.join(built, name)) == _digest(os.path.join(root, name)), (built, name)


def test_a_build_that_loses_the_race_keeps_the_winners_folder(tmp_path):
    folder = str(tmp_path / "asset")

    def winner(path):
        with open(os.path.join(path, "who"), "w") as f:
            f.write("winner")

    def loser(path):
        with open(os.path.join(path, "who"), "w") as f:
            f.write("loser")
        build_folder_once(folder, winner)  # another process finishes first, while this one is still building

    assert build_folder_once(folder, loser) == folder
    with open(os.path.join(folder, "who")) as f:
        assert f.read() == "winner"
    assert os.listdir(tmp_path) == ["asset"]  # the loser's temporary folder is gone
    assert build_folder_once(folder, loser) == folder  # built once: a complete folder is not built again


def test_an_unknown_asset_lists_the_names(tmp_path):
    with pytest.raises(AssetError, match="deberta-v3, gpt2, vit, glue, squad, cifar100, food101"):
        smoke_asset("bert", str(tmp_path))


def test_the_cli_builds_them_under_output_dir(tmp_path, capsys):
    from rmlora.cli.main import main

    assert main(["assets", "--smoke", "--output_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == sorted(SMOKE_ASSETS)
    assert "rajpurkar/squad" in out and str(tmp_path / "glue") in out
