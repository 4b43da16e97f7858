"""The DINOv2 encoder and pretrained-weight loading, on tiny random models written by the tests.

Reference outputs come from ``transformers.Dinov2Model`` itself (its hidden states, its final
layernorm), so a wrong tap index, a wrong key mapping or a transposed q/k/v split shows up as an
output mismatch. The original-format checkpoints are written with an inverse mapping spelled out
here, independently of the loader's.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config,
                          Dinov2ForImageClassification, Dinov2Model)

from sskd_deploy.errors import ConfigError, InputError
from sskd_deploy.config.model import EncoderConfig
from sskd_deploy.models.encoder import DinoV2Encoder, build_encoder
from sskd_deploy.models.weights import resize_patch_kernel, resize_position_embeddings

TINY = EncoderConfig(hidden_size=32, num_layers=4, num_heads=2, taps=(1, 2, 3, 4), pretrain_image_size=56)


def hf_config(config: EncoderConfig = TINY, **changes) -> Dinov2Config:
    fields = dict(hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
                  num_attention_heads=config.num_heads, image_size=config.pretrain_image_size,
                  patch_size=config.patch_size)
    return Dinov2Config(**{**fields, **changes})


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter: default inits (layernorm 1/0, layer scale 1) would hide misplaced tensors."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn_like(param))
    return model.eval()


def reference_taps(hf: Dinov2Model, pixels: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
    """Dinov2Model's own block outputs (hidden_states[0] is the embedding), layernormed, CLS dropped,
    on the image zero-padded at the bottom/right to whole patches (what the encoder does)."""
    patch = hf.config.patch_size
    batch, _, height, width = pixels.shape
    pixels = F.pad(pixels, (0, -width % patch, 0, -height % patch))
    with torch.no_grad():
        hidden = hf(pixels, output_hidden_states=True).hidden_states
        maps = [hf.layernorm(hidden[t])[:, 1:] for t in taps]
    return [m.reshape(batch, -(-height // patch), -(-width // patch), -1).permute(0, 3, 1, 2) for m in maps]


def encode(encoder: DinoV2Encoder, pixels: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return encoder.eval()(pixels)


def assert_close(ours: list[torch.Tensor], ref: list[torch.Tensor]) -> None:
    assert len(ours) == len(ref) == 4
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def hub_state(tmp_path: Path, hf: Dinov2Model) -> dict[str, torch.Tensor]:
    """The hub key names, as save_pretrained writes them (stable across transformers versions)."""
    hf.save_pretrained(tmp_path / "hub")
    return load_file(str(tmp_path / "hub" / "model.safetensors"))


def original_layout(hub: dict[str, torch.Tensor], depth: int, chunks: int = 1) -> dict[str, torch.Tensor]:
    """facebookresearch/dinov2 key names; ``chunks > 1`` writes BlockChunk names ``blocks.{chunk}.{i}.``."""
    out = {"cls_token": hub["embeddings.cls_token"], "mask_token": hub["embeddings.mask_token"],
           "pos_embed": hub["embeddings.position_embeddings"], "norm.weight": hub["layernorm.weight"],
           "norm.bias": hub["layernorm.bias"]}
    for kind in ("weight", "bias"):
        out[f"patch_embed.proj.{kind}"] = hub[f"embeddings.patch_embeddings.projection.{kind}"]
    for i in range(depth):
        src = f"encoder.layer.{i}."
        dst = f"blocks.{i // (depth // chunks)}.{i}." if chunks > 1 else f"blocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [hub[f"{src}attention.attention.{name}.{kind}"] for name in ("query", "key", "value")]
            out[f"{dst}attn.qkv.{kind}"] = torch.cat(qkv)
            out[f"{dst}attn.proj.{kind}"] = hub[f"{src}attention.output.dense.{kind}"]
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[f"{dst}{name}.{kind}"] = hub[f"{src}{name}.{kind}"]
        out[f"{dst}ls1.gamma"] = hub[f"{src}layer_scale1.lambda1"]
        out[f"{dst}ls2.gamma"] = hub[f"{src}layer_scale2.lambda1"]
    return out


@pytest.mark.parametrize("size", [(64, 96), (96, 128)])
@pytest.mark.parametrize("patch", [14, 8])
def test_four_taps_on_the_padded_patch_grid(size: tuple[int, int], patch: int) -> None:
    # The grid covers the whole image: ceil, not floor (64 x 96 at patch 14: 5 x 7 tokens, 70 x 98 px).
    encoder = DinoV2Encoder(config=TINY.model_copy(update={"patch_size": patch}))
    maps = encode(encoder, torch.randn(2, 3, *size))
    grid = (-(-size[0] // patch), -(-size[1] // patch))
    assert grid[0] * patch >= size[0] and grid[1] * patch >= size[1]
    assert encoder.num_taps == 4 and encoder.grid_size(*size) == grid
    assert [tuple(m.shape) for m in maps] == [(2, 32, *grid)] * 4


def test_hf_directory_round_trip(tmp_path: Path) -> None:
    hf = randomised(Dinov2Model(hf_config()))
    hf.save_pretrained(tmp_path)
    pixels = torch.randn(2, 3, 64, 96)
    encoder = DinoV2Encoder(config=TINY)
    assert not torch.allclose(encode(encoder, pixels)[0], reference_taps(hf, pixels, TINY.taps)[0])
    report = encoder.load_pretrained(tmp_path)
    assert_close(encode(encoder, pixels), reference_taps(hf, pixels, TINY.taps))
    assert report["format"] == "huggingface" and report["interpolated"] == {}
    assert report["ignored"] == ["embeddings.mask_token"]
    assert len(report["loaded"]) == len(encoder.backbone.state_dict())


def test_taps_select_blocks(tmp_path: Path) -> None:
    config = EncoderConfig(hidden_size=32, num_layers=6, num_heads=2, taps=(2, 3, 5, 6),
                           pretrain_image_size=56, weights=tmp_path)
    hf = randomised(Dinov2Model(hf_config(config)))
    hf.save_pretrained(tmp_path)
    pixels = torch.randn(1, 3, 96, 128)
    encoder = build_encoder(config)
    assert_close(encode(encoder, pixels), reference_taps(hf, pixels, config.taps))
    assert encoder.weights_report["source"] == str(tmp_path / "model.safetensors")
    assert build_encoder(config.model_copy(update={"weights": None})).weights_report is None


def test_prefixed_hf_directory_ignores_the_head(tmp_path: Path) -> None:
    classifier = randomised(Dinov2ForImageClassification(hf_config(num_labels=3)))
    classifier.save_pretrained(tmp_path)
    encoder = DinoV2Encoder(config=TINY)
    report = encoder.load_pretrained(tmp_path)
    pixels = torch.randn(1, 3, 64, 96)
    assert_close(encode(encoder, pixels), reference_taps(classifier.dinov2, pixels, TINY.taps))
    assert "classifier.weight" in report["ignored"]


def test_depth_anything_directory_nests_the_backbone(tmp_path: Path) -> None:
    backbone = hf_config(out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32],
                                 fusion_hidden_size=16, reassemble_hidden_size=32, head_hidden_size=8)
    depth = randomised(DepthAnythingForDepthEstimation(config))
    depth.save_pretrained(tmp_path)  # keys under backbone., encoder config under backbone_config
    encoder = DinoV2Encoder(config=TINY)
    report = encoder.load_pretrained(tmp_path)
    pixels = torch.randn(1, 3, 56, 84)
    with torch.no_grad():
        theirs = [m[:, 1:] for m in depth.backbone(pixels).feature_maps]
    assert_close([m.flatten(2).transpose(1, 2) for m in encode(encoder, pixels)], theirs)
    assert "head.conv1.weight" in report["ignored"]


@pytest.mark.parametrize("wrap", ["bare", "teacher_chunked", "training_checkpoint"])
def test_original_checkpoint_round_trip(tmp_path: Path, wrap: str) -> None:
    hf = randomised(Dinov2Model(hf_config()))
    original = original_layout(hub_state(tmp_path, hf), TINY.num_layers, chunks=2 if wrap != "bare" else 1)
    if wrap == "teacher_chunked":
        head = {"dino_head.last_layer.weight": torch.randn(8, 32)}
        saved = {"teacher": {**{f"backbone.{k}": v for k, v in original.items()}, **head}}
    elif wrap == "training_checkpoint":
        student = {f"student.backbone.{k}": torch.zeros_like(v) for k, v in original.items()}
        teacher = {f"teacher.backbone.{k}": v for k, v in original.items()}
        saved = {"model": {**student, **teacher}, "iteration": 7}
    else:
        saved = original
    torch.save(saved, tmp_path / "dinov2_tiny.pth")
    encoder = DinoV2Encoder(config=TINY)
    report = encoder.load_pretrained(tmp_path / "dinov2_tiny.pth")
    pixels = torch.randn(2, 3, 96, 128)
    assert_close(encode(encoder, pixels), reference_taps(hf, pixels, TINY.taps))
    assert report["format"] == "original"
    assert ("dino_head.last_layer.weight" in report["ignored"]) == (wrap == "teacher_chunked")


def test_position_grid_is_interpolated(tmp_path: Path) -> None:
    hf = randomised(Dinov2Model(hf_config(image_size=84)))  # 6x6 pretraining grid, ours is 4x4
    hf.save_pretrained(tmp_path)
    encoder = DinoV2Encoder(config=TINY)
    report = encoder.load_pretrained(tmp_path)
    key = "embeddings.position_embeddings"
    assert report["interpolated"] == {key: "(1, 37, 32) -> (1, 17, 32)"}
    loaded = encoder.backbone.embeddings.position_embeddings
    torch.testing.assert_close(loaded[:, 0], hf.embeddings.position_embeddings[:, 0])  # CLS kept as is
    maps = encode(encoder, torch.randn(1, 3, 64, 96))
    assert maps[0].shape == (1, 32, 5, 7) and all(torch.isfinite(m).all() for m in maps)  # ceil(64/14), ceil(96/14)


def test_resize_position_embeddings() -> None:
    pos = torch.randn(1, 1 + 36, 8)
    assert torch.allclose(resize_position_embeddings(pos, 6), pos, atol=1e-6)  # same grid: identity
    constant = torch.cat([torch.randn(1, 1, 8), torch.ones(1, 36, 8) * 3.0], dim=1)
    resized = resize_position_embeddings(constant, 9)
    assert resized.shape == (1, 82, 8) and torch.equal(resized[:, 0], constant[:, 0])
    torch.testing.assert_close(resized[:, 1:], torch.full((1, 81, 8), 3.0))
    with pytest.raises(ValueError, match="square"):
        resize_position_embeddings(torch.randn(1, 1 + 10, 8), 4)


@pytest.mark.parametrize("patch", [8, 16])
def test_resized_kernel_sees_the_rescaled_patch(patch: int) -> None:
    weight = torch.randn(5, 3, 14, 14, dtype=torch.float64)
    kernel = resize_patch_kernel(weight, patch)
    patches = torch.randn(4, 3, patch, patch, dtype=torch.float64)
    rescaled = F.interpolate(patches, size=(14, 14), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(F.conv2d(patches, kernel), F.conv2d(rescaled, weight))
    flat = torch.ones(1, 3, patch, patch, dtype=torch.float64)  # a flat patch keeps its response
    flat_old = torch.ones(1, 3, 14, 14, dtype=torch.float64)
    torch.testing.assert_close(F.conv2d(flat, kernel), F.conv2d(flat_old, weight))


def test_patch_size_change_loads(tmp_path: Path) -> None:
    randomised(Dinov2Model(hf_config())).save_pretrained(tmp_path)  # patch 14, 4x4 grid
    config = TINY.model_copy(update={"patch_size": 8})  # 56 / 8 = 7x7 grid
    encoder = DinoV2Encoder(config=config)
    report = encoder.load_pretrained(tmp_path)
    assert report["interpolated"] == {
        "embeddings.patch_embeddings.projection.weight": "(32, 3, 14, 14) -> (32, 3, 8, 8)",
        "embeddings.position_embeddings": "(1, 17, 32) -> (1, 50, 32)",
    }
    assert encode(encoder, torch.randn(1, 3, 64, 96))[3].shape == (1, 32, 8, 12)


def test_missing_path_says_what_to_put_there(tmp_path: Path) -> None:
    expected = "encoder weights not found; expected a Hugging Face directory"
    with pytest.raises(InputError, match=expected) as err:
        build_encoder(TINY.model_copy(update={"weights": tmp_path / "nowhere"}))
    assert err.value.path == str(tmp_path / "nowhere")
    with pytest.raises(InputError, match="encoder weights not found"):
        DinoV2Encoder(config=TINY).load_pretrained(tmp_path)  # an empty directory


def test_wrong_hidden_size_names_the_config_file(tmp_path: Path) -> None:
    Dinov2Model(hf_config(hidden_size=64)).save_pretrained(tmp_path)
    with pytest.raises(InputError, match="hidden_size 64 != 32") as err:
        DinoV2Encoder(config=TINY).load_pretrained(tmp_path)
    assert err.value.path == str(tmp_path / "config.json")


def test_wrong_width_of_an_original_checkpoint(tmp_path: Path) -> None:
    hub = hub_state(tmp_path, Dinov2Model(hf_config(hidden_size=64)))
    torch.save(original_layout(hub, 4), tmp_path / "wide.pth")
    with pytest.raises(InputError, match="hidden size 64 != encoder.hidden_size 32") as err:
        DinoV2Encoder(config=TINY).load_pretrained(tmp_path / "wide.pth")
    assert err.value.path == str(tmp_path / "wide.pth")


def test_head_count_of_a_released_width_is_checked(tmp_path: Path) -> None:
    # original checkpoints carry no head count; ViT-S/14 (width 384) has 6
    blocks = {f"blocks.{i}.norm1.weight": torch.ones(384) for i in range(4)}
    state = {"cls_token": torch.zeros(1, 1, 384), **blocks}
    torch.save(state, tmp_path / "vits.pth")
    config = EncoderConfig(hidden_size=384, num_layers=4, num_heads=4, taps=(1, 2, 3, 4))
    with pytest.raises(InputError, match="DINOv2 width 384 has 6 heads != encoder.num_heads 4"):
        DinoV2Encoder(config=config).load_pretrained(tmp_path / "vits.pth")


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    Dinov2Model(hf_config()).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(str(weights))
    del state["encoder.layer.2.mlp.fc1.weight"], state["layernorm.bias"]
    state["encoder.layer.1.extra.weight"] = torch.zeros(2)
    save_file(state, str(weights))
    with pytest.raises(InputError) as err:
        DinoV2Encoder(config=TINY).load_pretrained(tmp_path)
    assert err.value.path == str(weights)
    assert "2 missing keys" in err.value.problem and "encoder.layer.2.mlp.fc1.weight" in err.value.problem
    assert "1 unexpected keys (encoder.layer.1.extra.weight)" in err.value.problem


@pytest.mark.parametrize("extra, message", [
    ({"register_tokens": torch.zeros(1, 4, 32)}, "register tokens"),
    ({"blocks.0.mlp.w12.weight": torch.zeros(8, 32)}, "SwiGLU"),
])
def test_unsupported_variants_are_named(tmp_path: Path, extra: dict, message: str) -> None:
    original = original_layout(hub_state(tmp_path, Dinov2Model(hf_config())), 4)
    torch.save({**original, **extra}, tmp_path / "variant.pth")
    with pytest.raises(InputError, match=message):
        DinoV2Encoder(config=TINY).load_pretrained(tmp_path / "variant.pth")


def test_config_reaches_the_blocks() -> None:
    config = TINY.model_copy(update={"drop_path_rate": 0.1, "layerscale_value": 1e-5})
    block = DinoV2Encoder(config=config).backbone.encoder.layer[0]
    assert torch.all(block.layer_scale1.lambda1 == 1e-5) and block.drop_path.drop_prob == 0.1
    with pytest.raises(ConfigError, match="mlp_ratio"):
        DinoV2Encoder(config=TINY.model_copy(update={"mlp_ratio": 2.5}))


def test_every_parameter_gets_a_gradient() -> None:
    encoder = DinoV2Encoder(config=TINY).train()
    sum(m.square().mean() for m in encoder(torch.randn(2, 3, 64, 96))).backward()
    patch = encoder.backbone.embeddings.patch_embeddings.projection.weight
    assert patch.grad is not None and patch.grad.abs().sum() > 0
    # no unused parameter (DistributedDataParallel would stop on one)
    assert [n for n, p in encoder.named_parameters() if p.grad is None] == []


def test_onnx_export_matches_onnxruntime(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")

    class Taps(torch.nn.Module):
        def __init__(self, encoder: DinoV2Encoder) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(self.encoder(pixels))

    model = Taps(randomised(DinoV2Encoder(config=TINY))).eval()
    pixels = torch.randn(1, 3, 64, 96)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (pixels,), str(tmp_path / "encoder.onnx"), dynamo=False, opset_version=17,
                          input_names=["pixels"])
    session = ort.InferenceSession(str(tmp_path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"pixels": pixels.numpy()})
    with torch.no_grad():
        expected = model(pixels)
    assert len(outputs) == 4
    for got, want in zip(outputs, expected):
        torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-4, rtol=1e-4)
