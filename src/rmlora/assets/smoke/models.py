"""Tiny random models in the layout of the hub repositories the paper uses, with tokenizers trained here.

Each folder loads with transformers' Auto classes exactly as the real repository does:

- `deberta-v3` (microsoft/deberta-v3-base): a DebertaV2Model checkpoint (encoder only: each task adds its head) with
  deberta-v3-base's attention settings at tiny sizes; a SentencePiece `spm.model` trained here (pieces [PAD] [CLS]
  [SEP] [UNK] at 0-3, [MASK] added by the tokenizer after the last piece, as the real one's 128000); the 52-byte
  tokenizer_config.json and no tokenizer.json, so transformers converts the tokenizer (sentencepiece + protobuf).
- `gpt2` (openai-community/gpt2): a GPT2LMHeadModel checkpoint; a byte-level BPE trained here with the `tokenizers`
  library (vocab.json, merges.txt, tokenizer.json), `<|endoftext|>` as its last token and no pad token.
- `vit` (google/vit-base-patch16-224): ViTForImageClassification with an ImageNet head (the first ten ImageNet
  classes instead of the 1000) and a ViTImageProcessor (mean / std 0.5, bilinear), 16 px images in 8 px patches.

The weights are random (torch.manual_seed(0)): the models test the pipeline, not the method.
"""

from __future__ import annotations

import io
import json
import os

import torch
from transformers.utils import logging

from rmlora.assets.smoke.corpus import tokenizer_lines
from rmlora.assets.smoke.labels import IMAGENET_FIRST

# microsoft/deberta-v3-base's tokenizer_config.json, byte for byte (52 bytes)
DEBERTA_V3_TOKENIZER_CONFIG = '{\n  "do_lower_case": false,\n  "vocab_type": "spm"\n}\n'
SPM_PIECES = 80
GPT2_BPE_SIZE = 1023  # at most; every merge of the corpus makes 437 tokens (+ <|endoftext|>)
GPT2_TOKENIZER_CONFIG = {"model_max_length": 1024}  # openai-community/gpt2's


def _save(model, path: str) -> None:
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # quiet console: "Writing model shards" for a 100 kB file
    try:
        model.save_pretrained(path)
    finally:
        if bars:
            logging.enable_progress_bar()


def build_deberta_v3(path: str) -> str:
    import sentencepiece as spm
    from transformers import DebertaV2Config, DebertaV2Model

    os.makedirs(path, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tokenizer_lines()),
        model_writer=model,
        vocab_size=SPM_PIECES,
        model_type="unigram",
        pad_id=0,
        bos_id=1,
        eos_id=2,
        unk_id=3,
        pad_piece="[PAD]",
        bos_piece="[CLS]",
        eos_piece="[SEP]",
        unk_piece="[UNK]",
        num_threads=1,  # one thread: the same pieces on every run
        minloglevel=2,
    )
    with open(os.path.join(path, "spm.model"), "wb") as f:
        f.write(model.getvalue())
    with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8", newline="\n") as f:
        f.write(DEBERTA_V3_TOKENIZER_CONFIG)
    torch.manual_seed(0)
    cfg = DebertaV2Config(  # deberta-v3-base's settings (its config.json) but the sizes
        vocab_size=96,  # more than the tokenizer's 81, as the real 128100 is more than its 128001
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        type_vocab_size=0,
        relative_attention=True,
        position_buckets=256,
        pos_att_type=["p2c", "c2p"],
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        max_relative_positions=-1,
        position_biased_input=False,
        layer_norm_eps=1e-7,
        pad_token_id=0,
    )
    _save(DebertaV2Model(cfg), path)
    return path


def build_gpt2(path: str) -> str:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2Config, GPT2LMHeadModel

    os.makedirs(path, exist_ok=True)
    tok = Tokenizer(models.BPE())
    # GPT-2's pipeline (its tokenizer.json): byte-level pre-tokenizer without a prefix space, offsets not trimmed
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=GPT2_BPE_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(tokenizer_lines(), trainer=trainer)
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])  # the last id, as GPT-2's 50256
    eos = tok.token_to_id("<|endoftext|>")
    tok.save(os.path.join(path, "tokenizer.json"))
    tok.model.save(path)  # vocab.json, merges.txt
    with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(GPT2_TOKENIZER_CONFIG, f)
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=tok.get_vocab_size(),
        n_positions=1024,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    _save(GPT2LMHeadModel(cfg), path)
    return path


def build_vit(path: str) -> str:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    torch.manual_seed(0)
    cfg = ViTConfig(  # vit-base-patch16-224's settings but the sizes
        image_size=16,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        qkv_bias=True,
        layer_norm_eps=1e-12,
        id2label=dict(enumerate(IMAGENET_FIRST)),
        label2id={name: i for i, name in enumerate(IMAGENET_FIRST)},
    )
    _save(ViTForImageClassification(cfg), path)
    # the Pillow backend: the default one needs torchvision; it saves as "ViTImageProcessor", as the real one
    ViTImageProcessorPil(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        path
    )
    return path
