"""DPT pixel decoder: exact stride-4/8/16/32 sizes from a stride-14 grid, every tap used, gradients."""

from __future__ import annotations

import pytest
import torch

from sskd_deploy.model_config import PRESETS
from sskd_deploy.models.pixel_decoder import DPTPixelDecoder
from sskd_deploy.models.position import flat_sine_position_encoding, sine_position_encoding


def make_decoder(preset: str, size: tuple[int, int]) -> tuple[DPTPixelDecoder, list[torch.Tensor]]:
    config = PRESETS[preset].updated(input_size=size)
    torch.manual_seed(0)
    hidden = config.encoder.hidden_size
    decoder = DPTPixelDecoder(config=config.pixel_decoder, in_channels=hidden, input_size=size)
    grid = (size[0] // config.encoder.patch_size, size[1] // config.encoder.patch_size)
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
