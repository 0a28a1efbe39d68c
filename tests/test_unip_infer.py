"""Sliding-window inference against a transcription of mmseg's slide_inference loop, a 1x1 conv
(translation-equivariant, so sliding must equal one whole-image pass), a stateful model whose
windows average to a closed form, the window grid against an independent formulation, window
batching, and predict's resize-before-argmax."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unip.infer import predict, slide_logits, whole_logits, window_grid

K = 4


class LowResPositional(nn.Module):
    """Not translation-equivariant: half-resolution output, zero padding, a bias that depends
    on the position inside the window. Every window sees something different."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, K, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        h, w = out.shape[-2:]
        return out + torch.linspace(0, 2, h)[:, None] * torch.linspace(-1, 1, w)[None, :]


class CallIndex(nn.Module):
    """Returns the number of previous calls as every logit: a window's id, at 1x1 resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full((x.shape[0], K, 1, 1), float(self.calls))
        self.calls += 1
        return out


def mmseg_slide(model: nn.Module, img: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """mmseg 1.x EncoderDecoder.slide_inference, transcribed (pad-and-add, count matrix)."""
    h_stride = w_stride = stride
    h_crop = w_crop = crop
    batch_size, _, h_img, w_img = img.size()
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = img.new_zeros((batch_size, K, h_img, w_img))
    count_mat = img.new_zeros((batch_size, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * h_stride
            x1 = w_idx * w_stride
            y2 = min(y1 + h_crop, h_img)
            x2 = min(x1 + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            crop_img = img[:, :, y1:y2, x1:x2]
            logit = F.interpolate(
                model(crop_img), size=crop_img.shape[2:], mode="bilinear", align_corners=False
            )
            preds += F.pad(logit, (x1, preds.shape[3] - x2, y1, preds.shape[2] - y2))
            count_mat[:, :, y1:y2, x1:x2] += 1
    assert (count_mat == 0).sum() == 0
    return preds / count_mat


def image(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("h", "w"), [(64, 64), (40, 50), (64, 30)])
def test_one_window_equals_whole_image(h: int, w: int) -> None:
    model, img = LowResPositional(), image(2, 3, h, w)
    assert len(window_grid(h, w, crop=64, stride=48)) == 1
    with torch.no_grad():
        slid = slide_logits(model, img, K, crop=64, stride=48)
        want = F.interpolate(model(img), size=(h, w), mode="bilinear", align_corners=False)
    assert slid.shape == (2, K, h, w)
    assert torch.equal(slid, want)


def test_sliding_a_1x1_conv_equals_one_pass() -> None:
    torch.manual_seed(1)
    conv, img = nn.Conv2d(3, K, 1), image(2, 3, 100, 130, seed=1)
    with torch.no_grad():
        slid = slide_logits(conv, img, K, crop=48, stride=31)
        want = conv(img)
    assert len(window_grid(100, 130, 48, 31)) > 4  # overlaps really happen
    torch.testing.assert_close(slid, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("h", "w", "crop", "stride"), [(100, 130, 48, 31), (70, 40, 64, 20)])
def test_matches_mmseg_loop_on_a_position_dependent_model(
    h: int, w: int, crop: int, stride: int
) -> None:
    model, img = LowResPositional(), image(2, 3, h, w, seed=2)
    with torch.no_grad():
        slid = slide_logits(model, img, K, crop=crop, stride=stride)
        want = mmseg_slide(model, img, crop, stride)
        whole = whole_logits(model, img, K)
    torch.testing.assert_close(slid, want, rtol=1e-6, atol=1e-6)
    assert (slid - whole).abs().max() > 0.1  # windows genuinely differ from one pass


def test_overlaps_average_window_outputs() -> None:
    # 10x7 image, crop 4, stride 3: rows split (0,4) (3,7) (6,10), columns (0,4) (3,7); window
    # (i, j) is call 2i + j, so a pixel gets 2 * mean(row windows) + mean(column windows).
    assert window_grid(10, 7, crop=4, stride=3) == [
        (y1, y2, x1, x2) for y1, y2 in [(0, 4), (3, 7), (6, 10)] for x1, x2 in [(0, 4), (3, 7)]
    ]
    out = slide_logits(CallIndex(), torch.zeros(1, 3, 10, 7), K, crop=4, stride=3)
    rows = torch.tensor([0, 0, 0, 0.5, 1, 1, 1.5, 2, 2, 2])
    cols = torch.tensor([0, 0, 0, 0.5, 1, 1, 1])
    want = (2 * rows[:, None] + cols[None, :]).expand(1, K, 10, 7)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)


def _starts(size: int, crop: int, stride: int) -> list[int]:
    """Independent form: every stride step that leaves room, then one flush with the end."""
    if size <= crop:
        return [0]
    return [*range(0, size - crop, stride), size - crop]


@pytest.mark.parametrize("size", [1, 5, 63, 64, 65, 100, 127, 128, 129, 512, 1000])
@pytest.mark.parametrize(("crop", "stride"), [(64, 32), (64, 21), (64, 64), (64, 43), (512, 341)])
def test_window_grid_covers_every_pixel(size: int, crop: int, stride: int) -> None:
    grid = window_grid(size, size + 3, crop, stride)
    side = min(crop, size)
    assert {(y2 - y1, x2 - x1) for y1, y2, x1, x2 in grid} == {(side, min(crop, size + 3))}
    assert sorted({y1 for y1, *_ in grid}) == _starts(size, crop, stride)
    assert sorted({x1 for *_, x1, _ in grid}) == _starts(size + 3, crop, stride)
    covered = torch.zeros(size, size + 3, dtype=torch.bool)
    for y1, y2, x1, x2 in grid:
        covered[y1:y2, x1:x2] = True
    assert covered.all()


def test_rectangular_crop_and_stride() -> None:
    grid = window_grid(20, 30, crop=(8, 16), stride=(6, 7))
    assert sorted({(y1, y2) for y1, y2, *_ in grid}) == [(0, 8), (6, 14), (12, 20)]
    assert sorted({(x1, x2) for *_, x1, x2 in grid}) == [(0, 16), (7, 23), (14, 30)]


def pooled_positional(x: torch.Tensor) -> torch.Tensor:
    """Position-dependent like LowResPositional but with no matmul, so its per-sample output
    is bit-for-bit independent of the batch size; any batching difference is the helper's."""
    out = F.avg_pool2d(x, 2).sum(1, keepdim=True) * torch.arange(1.0, K + 1)[:, None, None]
    h, w = out.shape[-2:]
    return out + torch.linspace(0, 2, h)[:, None] * torch.linspace(-1, 1, w)[None, :]


@pytest.mark.parametrize("batch_windows", [2, 5, 100])
def test_batching_windows_changes_nothing(batch_windows: int) -> None:
    img = image(2, 3, 90, 75, seed=3)
    one = slide_logits(pooled_positional, img, K, crop=32, stride=21)
    batched = slide_logits(pooled_positional, img, K, 32, 21, batch_windows=batch_windows)
    assert torch.equal(batched, one)
    model = LowResPositional().eval()  # a conv: equal up to the backend's batch-size kernels
    with torch.no_grad():
        one = slide_logits(model, img, K, crop=32, stride=21)
        batched = slide_logits(model, img, K, 32, 21, batch_windows=batch_windows)
    torch.testing.assert_close(batched, one, rtol=1e-6, atol=1e-6)


def test_batching_sends_several_windows_per_forward() -> None:
    model = CallIndex()
    slide_logits(model, torch.zeros(1, 3, 10, 7), K, crop=4, stride=3, batch_windows=4)
    assert model.calls == 2  # 6 windows in chunks of 4


def test_predict_resizes_logits_before_argmax() -> None:
    # Class 1 logit is -1 on the left half, +1 on the right; bilinearly upsampled 2x
    # (align_corners=False) output column c samples input x = (c + 0.5) / 2 - 0.5, so columns
    # 0-3 stay negative (column 3: -0.75 + 0.25) and columns 4-7 positive.
    def model(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x], dim=1)

    img = torch.tensor([-1.0, -1, 1, 1]).expand(1, 1, 4, 4)
    for mode in ("slide", "whole"):
        pred = predict(model, img, 2, mode=mode, crop=4, stride=2, out_size=(8, 8))
        assert pred.dtype == torch.int64 and pred.shape == (1, 8, 8)
        assert pred[0].tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]] * 8
    assert predict(model, img, 2, mode="whole").shape == (1, 4, 4)


def test_predict_modes_agree_when_the_image_fits() -> None:
    model, img = LowResPositional(), image(1, 3, 48, 40, seed=4)
    with torch.no_grad():
        slid = predict(model, img, K, mode="slide", crop=64, stride=32)
        whole = predict(model, img, K, mode="whole")
        want = whole_logits(model, img, K).argmax(1)
    assert torch.equal(slid, whole) and torch.equal(whole, want)


def test_grad_mode_is_left_to_the_caller() -> None:
    conv, img = nn.Conv2d(3, K, 1), image(1, 3, 20, 20)
    assert slide_logits(conv, img, K, crop=16, stride=8).requires_grad
    with torch.inference_mode():
        assert not slide_logits(conv, img, K, crop=16, stride=8).requires_grad


def test_bad_arguments_raise() -> None:
    model, img = LowResPositional(), image(1, 3, 16, 16)
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"\(B, 5, h, w\)"):
            slide_logits(model, img, 5, crop=8, stride=8)
        with pytest.raises(ValueError, match="mode"):
            predict(model, img, K, mode="tiles")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="stride"):
            slide_logits(model, img, K, crop=8, stride=0)
        with pytest.raises(ValueError, match="batch_windows"):
            slide_logits(model, img, K, batch_windows=0)
