"""SegMetric against a float64 numpy confusion matrix, torchmetrics' Jaccard index and hand-worked
counts: ignored pixels, absent classes, prediction-only classes, split-level sums (not per-image
means), merging and all-reduce across ranks, and bad input."""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics.classification import MulticlassJaccardIndex

from unip.metrics import SegMetric

K = 6
IGNORE = 255


def reference(preds: list[np.ndarray], labels: list[np.ndarray], k: int) -> dict:
    """mmseg's metrics from one confusion matrix over all pixels of the split, float64."""
    p = np.concatenate([a.ravel() for a in preds]).astype(np.int64)
    y = np.concatenate([a.ravel() for a in labels]).astype(np.int64)
    keep = y != IGNORE
    cm = np.zeros((k, k), dtype=np.float64)
    np.add.at(cm, (y[keep], p[keep]), 1.0)
    tp, area_y, area_p = np.diag(cm), cm.sum(1), cm.sum(0)
    union = area_y + area_p - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan) * 100
        acc = np.where(area_y > 0, tp / area_y, np.nan) * 100
    return {
        "IoU": iou,
        "Acc": acc,
        "mIoU": np.nanmean(iou),
        "mAcc": np.nanmean(acc),
        "aAcc": tp.sum() / area_y.sum() * 100,
    }


def assert_matches(ours: dict, ref: dict) -> None:
    for key in ("mIoU", "mAcc", "aAcc"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-12), key
    for key in ("IoU", "Acc"):
        np.testing.assert_allclose(np.array(ours[key]), ref[key], rtol=1e-12, equal_nan=True)


def planted(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels use {0, 1, 2, 4} + ignore; predictions also use 3 (pred-only: IoU 0, in the
    mean) and put 5 only on ignored pixels (so 5 stays absent: NaN, out of the mean)."""
    rng = np.random.default_rng(seed)
    label = rng.choice([0, 1, 2, 4], size=shape)
    pred = np.where(rng.random(shape) < 0.6, label, rng.choice([0, 1, 2, 3, 4], size=shape))
    ignored = rng.random(shape) < 0.15
    label[ignored] = IGNORE
    pred[ignored & (rng.random(shape) < 0.5)] = 5
    return pred, label


def run(preds: list[np.ndarray], labels: list[np.ndarray], k: int = K) -> dict:
    m = SegMetric(k, ignore_index=IGNORE)
    for p, y in zip(preds, labels, strict=True):
        m.update(torch.from_numpy(p), torch.from_numpy(y))
    return m.compute()


def test_hand_worked_example() -> None:
    # class 0: I=1, U=2; class 1: I=1, U=2 (pred 1 on a 0); class 2 predicted only where ignored.
    label = torch.tensor([[0, 0, 1, IGNORE]])
    pred = torch.tensor([[0, 1, 1, 2]])
    m = SegMetric(3)
    m.update(pred, label)
    out = m.compute()
    assert out["IoU"][:2] == [50.0, 50.0] and math.isnan(out["IoU"][2])
    assert out["mIoU"] == 50.0
    assert out["Acc"][:2] == [50.0, 100.0] and math.isnan(out["Acc"][2])
    assert out["mAcc"] == 75.0
    assert out["aAcc"] == pytest.approx(200 / 3)


def test_matches_numpy_confusion_matrix_with_ignored_and_absent_classes() -> None:
    pred, label = planted((2, 3, 17, 23), seed=0)
    out = run([pred], [label])
    assert_matches(out, reference([pred], [label], K))
    assert out["IoU"][3] == 0.0  # predicted only: counts in the mean as 0
    assert math.isnan(out["IoU"][5]) and math.isnan(out["Acc"][3])
    present = [v for i, v in enumerate(out["IoU"]) if i != 5]
    assert out["mIoU"] == pytest.approx(sum(present) / 5)


def test_per_class_iou_matches_torchmetrics_where_present() -> None:
    pred, label = planted((4, 31, 29), seed=1)
    tm = MulticlassJaccardIndex(num_classes=K, average="none", ignore_index=IGNORE)
    want = tm(torch.from_numpy(pred), torch.from_numpy(label)).double() * 100
    got = torch.tensor(run([pred], [label])["IoU"], dtype=torch.float64)
    present = ~torch.isnan(got)
    assert present.sum() == 5
    torch.testing.assert_close(got[present], want[present], rtol=1e-5, atol=1e-4)


def test_miou_matches_torchmetrics_macro_when_all_classes_present() -> None:
    rng = np.random.default_rng(2)
    label = rng.integers(0, K, size=(3, 40, 40))
    pred = np.where(rng.random(label.shape) < 0.7, label, rng.integers(0, K, size=label.shape))
    label[rng.random(label.shape) < 0.1] = IGNORE
    tm = MulticlassJaccardIndex(num_classes=K, average="macro", ignore_index=IGNORE)
    want = tm(torch.from_numpy(pred), torch.from_numpy(label)).item() * 100
    out = run([pred], [label])
    assert not any(math.isnan(v) for v in out["IoU"])
    assert out["mIoU"] == pytest.approx(want, rel=1e-5)


def test_updates_sum_over_the_split_not_mean_of_images() -> None:
    # A large, easy image and a small, hard one of different sizes: split-level IoU is
    # dominated by the large image, the per-image mean is not.
    big_p, big_y = planted((64, 64), seed=3)
    big_p = np.where(big_y == IGNORE, big_p, big_y)  # perfect on counted pixels
    small_y = np.array([[0, 1], [2, 4]])
    small_p = np.array([[1, 2], [4, 0]])  # all wrong
    preds, labels = [big_p, small_p], [big_y, small_y]
    out = run(preds, labels)
    assert_matches(out, reference(preds, labels, K))
    per_image = np.mean(
        [reference([p], [y], K)["mIoU"] for p, y in zip(preds, labels, strict=True)]
    )
    assert abs(out["mIoU"] - per_image) > 10


def test_many_updates_equal_one_update_on_the_concatenation() -> None:
    pred, label = planted((5, 19, 21), seed=4)
    one = SegMetric(K)
    one.update(torch.from_numpy(pred), torch.from_numpy(label))
    many = SegMetric(K)
    for i in range(5):
        many.update(torch.from_numpy(pred[i]), torch.from_numpy(label[i]))
    assert_matches(many.compute(), reference([pred], [label], K))
    for name, t in many.state_dict().items():
        assert torch.equal(t, one.state_dict()[name]) and t.dtype == torch.int64


def test_merge_state_dict_and_reset() -> None:
    pred, label = planted((4, 16, 16), seed=5)
    ref = reference([pred], [label], K)
    a, b = SegMetric(K), SegMetric(K)
    a.update(torch.from_numpy(pred[:1]), torch.from_numpy(label[:1]))
    b.update(torch.from_numpy(pred[1:3]), torch.from_numpy(label[1:3]))
    c = SegMetric(K)
    c.update(torch.from_numpy(pred[3:]), torch.from_numpy(label[3:]))
    a.merge(b)
    a.merge(c.state_dict())
    assert_matches(a.compute(), ref)
    resumed = SegMetric(K)
    resumed.load_state_dict(a.state_dict())
    assert_matches(resumed.compute(), ref)
    a.reset()
    assert all(t.sum() == 0 for t in a.state_dict().values())
    assert math.isnan(a.compute()["mIoU"]) and math.isnan(a.compute()["aAcc"])
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(SegMetric(K + 1))


def test_all_reduce_is_a_no_op_without_distributed() -> None:
    pred, label = planted((16, 16), seed=6)
    m = SegMetric(K)
    m.update(torch.from_numpy(pred), torch.from_numpy(label))
    m.all_reduce()
    assert_matches(m.compute(), reference([pred], [label], K))


def _rank(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        pred, label = planted((2, 12, 12), seed=7)
        m = SegMetric(K)
        m.update(torch.from_numpy(pred[rank]), torch.from_numpy(label[rank]))
        m.all_reduce()
        queue.put((rank, m.compute()))
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_counts_over_ranks() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork, not spawn: a spawned child re-imports torch and this module (~8 s on 2 cores).
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    mp.start_processes(_rank, args=(2, port, queue), nprocs=2, start_method="fork")
    results = dict(queue.get(timeout=30) for _ in range(2))
    pred, label = planted((2, 12, 12), seed=7)
    ref = reference([pred], [label], K)
    for rank in (0, 1):
        assert_matches(results[rank], ref)


@pytest.mark.parametrize(
    ("pred", "label", "match"),
    [
        (torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), "same shape"),
        (torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, K, 2]), "label values"),
        (torch.zeros(4, dtype=torch.long), torch.tensor([0, -1, 1, 2]), "label values"),
        (torch.tensor([0, 1, K, 0]), torch.tensor([0, 1, 1, IGNORE]), "pred values"),
        (torch.tensor([0, 1, -1, 0]), torch.tensor([0, 1, 1, 0]), "pred values"),
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), "integer class ids"),
    ],
)
def test_bad_input_raises(pred: torch.Tensor, label: torch.Tensor, match: str) -> None:
    m = SegMetric(K)
    with pytest.raises(ValueError, match=match):
        m.update(pred, label)
    assert all(t.sum() == 0 for t in m.state_dict().values())  # nothing half-counted


def test_ignore_index_inside_the_class_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="ignore_index"):
        SegMetric(K, ignore_index=2)


def test_narrow_integer_dtypes_are_counted() -> None:
    pred, label = planted((20, 20), seed=8)
    out = run([pred.astype(np.uint8)], [label.astype(np.uint8)])
    assert_matches(out, reference([pred], [label], K))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_counts_on_cuda_match_numpy() -> None:
    pred, label = planted((2, 33, 35), seed=9)
    m = SegMetric(K)
    m.update(torch.from_numpy(pred).cuda(), torch.from_numpy(label).cuda())
    assert m.counts["label"].is_cuda
    assert_matches(m.compute(), reference([pred], [label], K))
