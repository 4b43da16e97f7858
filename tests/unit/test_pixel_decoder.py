"""DPT pixel decoder: exact stride-4/8/16/32 sizes from a stride-14 grid, every tap used, gradients."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from sskd_deploy.config.model import PRESETS
from sskd_deploy.models.pixel_decoder import STRIDES, DPTPixelDecoder, Reassemble, aligned_plan, resample_factor
from sskd_deploy.models.position import flat_sine_position_encoding, sine_position_encoding


def make_decoder(preset: str, size: tuple[int, int]) -> tuple[DPTPixelDecoder, list[torch.Tensor]]:
    config = PRESETS[preset].updated(input_size=size)
    torch.manual_seed(0)
    hidden = config.encoder.hidden_size
    # the DPT path alone: the conv path (on in the tiny presets) is tested on its own below
    decoder = DPTPixelDecoder(config=config.pixel_decoder.model_copy(update={"conv_path": False}), in_channels=hidden,
                              input_size=size, tap_strides=(config.encoder.patch_size,) * 4)
    grid = (-(-size[0] // config.encoder.patch_size), -(-size[1] // config.encoder.patch_size))
    taps = [torch.randn(2, hidden, *grid) for _ in range(4)]
    return decoder, taps


@pytest.mark.parametrize("preset", ["student-tiny", "teacher-tiny"])
@pytest.mark.parametrize("size", [(96, 128), (64, 96)])
def test_output_sizes_are_exact_strides(preset: str, size: tuple[int, int]) -> None:
    decoder, taps = make_decoder(preset, size)
    pix = PRESETS[preset].pixel_decoder
    mask_features, multi_scale = decoder(taps)
    h, w = size
    assert mask_features.shape == (2, pix.mask_dim, h // 4, w // 4)
    assert [tuple(m.shape) for m in multi_scale] == [(2, pix.dim, h // s, w // s) for s in (32, 16, 8)]
    assert torch.isfinite(mask_features).all()


def test_every_tap_reaches_the_mask_features() -> None:
    decoder, taps = make_decoder("student-tiny", (64, 96))
    decoder.eval()
    with torch.no_grad():
        base, _ = decoder(taps)
        for i in range(4):
            changed = [t + (j == i) * torch.randn_like(t) for j, t in enumerate(taps)]
            assert not torch.allclose(decoder(changed)[0], base, atol=1e-5), f"tap {i} has no effect"


def test_coarse_levels_do_not_see_finer_taps() -> None:
    # Top-down fusion: the stride-32 output depends on the deepest tap only.
    decoder, taps = make_decoder("student-tiny", (64, 96))
    with torch.no_grad():
        _, base = decoder(taps)
        _, changed = decoder([taps[0] + 1.0, taps[1] - 1.0, taps[2] * 2.0, taps[3]])
    torch.testing.assert_close(changed[0], base[0])
    assert not torch.allclose(changed[1], base[1])


def test_gradients_reach_every_parameter() -> None:
    decoder, taps = make_decoder("student-tiny", (64, 96))
    mask_features, multi_scale = decoder(taps)
    (mask_features.square().mean() + sum(m.square().mean() for m in multi_scale)).backward()
    for name, param in decoder.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_rejects_bad_input() -> None:
    config = PRESETS["student-tiny"]
    with pytest.raises(ValueError, match="multiples of 32"):
        DPTPixelDecoder(config=config.pixel_decoder, in_channels=96, input_size=(100, 128))
    decoder, taps = make_decoder("student-tiny", (64, 96))
    with pytest.raises(ValueError, match="4 encoder taps"):
        decoder(taps[:3])


def test_sine_position_encoding() -> None:
    enc = sine_position_encoding(3, 5, 10)
    assert enc.shape == (10, 3, 5) and enc.dtype == torch.float32
    # Rows use the first dim // 2 channels and are constant along the width; columns the rest.
    assert torch.equal(enc[:5, :, :1].expand(-1, -1, 5), enc[:5])
    assert torch.equal(enc[5:, :1, :].expand(-1, 3, -1), enc[5:])
    # Channel 0 is sin of the normalised centre coordinate; channel 1 its cos.
    centres = (torch.arange(3) + 0.5) / 3 * 2 * torch.pi
    torch.testing.assert_close(enc[0, :, 0], centres.sin())
    torch.testing.assert_close(enc[1, :, 0], centres.cos())
    codes = enc.flatten(1).T
    assert torch.cdist(codes, codes).add(torch.eye(15)).min() > 1e-3  # every cell has its own code
    flat = flat_sine_position_encoding(3, 5, 10)
    assert flat.shape == (1, 15, 10)
    torch.testing.assert_close(flat[0, 7], enc[:, 1, 2])  # row-major: cell (1, 2) is token 7


# --- geometry: every level of the pyramid sits where its pixels are --------------------------------

def _disc(size: tuple[int, int], centre: tuple[float, float], radius: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size[0]) + 0.5, torch.arange(size[1]) + 0.5, indexing="ij")
    return (((ys - centre[0]) ** 2 + (xs - centre[1]) ** 2) <= radius**2).float()


def _centroid(values: torch.Tensor, stride: float) -> torch.Tensor:
    """Mass centre ``(y, x)`` in image pixels of a map whose cell ``i`` is centred on ``stride * (i + 0.5)``."""
    ys = (torch.arange(values.shape[0]) + 0.5) * stride
    xs = (torch.arange(values.shape[1]) + 0.5) * stride
    mass = values.sum()
    return torch.stack([(values.sum(1) * ys).sum() / mass, (values.sum(0) * xs).sum() / mass])


def _ideal_reassemble(pitch: int, stride: int, size: tuple[int, int]) -> Reassemble:
    """One-channel reassemble whose learned parts are ideal: identity projection, replicating transposed
    conv, averaging strided conv; what is left is the geometry under test."""
    grid = (-(-size[0] // pitch), -(-size[1] // pitch))
    block = Reassemble(pitch=pitch, stride=stride, grid=grid, in_channels=1, channels=1, dim=8,
                       size=(size[0] // stride, size[1] // stride))
    with torch.no_grad():
        for module in (block.project, block.resample):
            if isinstance(module, torch.nn.Identity):
                continue
            module.bias.zero_()
            module.weight.fill_(1.0 if isinstance(module, torch.nn.ConvTranspose2d) else 1.0 / module.weight[0, 0].numel())
    return block


@pytest.mark.parametrize("size", [(192, 256), (512, 1024)])
@pytest.mark.parametrize("where", ["top-left", "bottom-right"])
def test_a_mask_through_the_patch_grid_and_back_stays_within_a_stride4_cell(size, where) -> None:
    """Patch 14: the token grid (padded to whole patches) carries a disc to every stride and it lands
    within one stride-4 cell (4 px) of where it is; the old stretched grid missed by up to a patch."""
    patch, radius = 14, 20.0
    centre = (26.0, 30.0) if where == "top-left" else (size[0] - 24.0, size[1] - 26.0)
    mask = _disc(size, centre, radius)
    grid = (-(-size[0] // patch), -(-size[1] // patch))
    padded = F.pad(mask, (0, grid[1] * patch - size[1], 0, grid[0] * patch - size[0]))
    tokens = F.avg_pool2d(padded[None, None], patch)  # (1, 1, gh, gw): each token's share of the disc
    truth = _centroid(mask, 1.0)
    for stride in (4, 8, 16, 32):
        with torch.no_grad():
            placed = _ideal_reassemble(patch, stride, size).place(tokens)[0, 0]
        assert placed.shape == (size[0] // stride, size[1] // stride)
        # against the disc averaged onto the same grid; bilinear sampling of a coarse grid adds up to a
        # quarter cell of noise there (a radius-20 disc spans about one stride-32 cell)
        reference = _centroid(F.avg_pool2d(mask[None, None], stride)[0, 0], stride)
        error = (_centroid(placed, stride) - reference).abs().max()
        assert error <= max(4.0, stride / 4), f"stride {stride}: disc moved {error:.1f} px"
        if stride == 4:
            assert (_centroid(placed, stride) - truth).abs().max() <= 4.0
    # The same check fails for the geometry this replaced: the floor grid stretched over the image.
    floor = F.avg_pool2d(mask[None, None], patch)  # drops the bottom/right remainder
    stretched = F.interpolate(floor, size=(size[0] // 4, size[1] // 4), mode="bilinear", align_corners=False)
    if where == "bottom-right":
        assert (_centroid(stretched[0, 0], 4.0) - truth).abs().max() > 4.0


@pytest.mark.parametrize("pitch", [14, 16, 8])
def test_aligned_plans_cover_the_image(pitch: int) -> None:
    for size in ((192, 256), (512, 1024), (64, 96)):
        decoder = DPTPixelDecoder(config=PRESETS["student-tiny"].pixel_decoder, in_channels=96, input_size=size,
                                  tap_strides=(pitch,) * 4)
        for block, stride in zip(decoder.reassemble, STRIDES):
            for plan, side in zip(block.plans, size):
                assert plan.target == side // stride and plan.m_out >= plan.target
                assert plan.m_in * (Fraction(pitch) / resample_factor(pitch, stride)) == plan.m_out * stride  # same span
    with pytest.raises(ValueError, match="cover"):
        aligned_plan(13, Fraction(14), 4, 48)  # 13 tokens = 182 px < 192 px


def test_conv_path_adds_to_every_level_and_needs_the_image() -> None:
    config = PRESETS["student-tiny"].pixel_decoder.model_copy(update={"conv_path": True})
    decoder = DPTPixelDecoder(config=config, in_channels=96, input_size=(64, 96), tap_strides=(14,) * 4)
    taps = [torch.randn(1, 96, 5, 7) for _ in range(4)]
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        base, _ = decoder(taps, image)
        moved, _ = decoder(taps, image + torch.randn_like(image))
    assert not torch.allclose(base, moved)
    with pytest.raises(ValueError, match="needs the input image"):
        decoder(taps)
