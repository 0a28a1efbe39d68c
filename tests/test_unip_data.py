"""unip.data: shard and folder streaming, the crop against Pillow, splits, seeds, resume, errors."""

from __future__ import annotations

import io
import random
import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from infmix.build import build
from infmix.config import load_config
from infmix.demo import thermal_frame
from tests.conftest import demo_config_dict
from unip.data import make_loader, to_model_input
from unip.data.augment import random_crop, reduction, sample_box
from unip.errors import UnipError


@pytest.fixture(scope="module")
def corpus(demo_root, tmp_path_factory):
    """The demo build in 10 shards of 6 samples."""
    data = demo_config_dict(demo_root)
    data["shards"] = {"samples_per_shard": 6}
    out = tmp_path_factory.mktemp("unip-data") / "corpus"
    stats = build(load_config(None, data=data), out, workers=1)
    assert stats["total"]["kept"] == 60 and len(list((out / "shards").glob("*.tar"))) == 10
    return out


def epoch(loader) -> tuple[list[torch.Tensor], list[str]]:
    images, keys = [], []
    for x, k in loader:
        images.append(x)
        keys += k
    return images, keys


def test_shards_give_uint8_grayscale_batches(corpus):
    loader = make_loader(corpus, 4, 0, image_size=32)
    batches = list(loader)
    assert len(loader) == len(batches) == 15  # 60 samples in _info.json
    for x in batches:
        assert x.shape == (4, 1, 32, 32) and x.dtype == torch.uint8
        assert x.float().std() > 1  # real image content, not a constant fill


def test_ranks_yield_equal_batches_and_split_shards(corpus):
    """Without look-ahead (no shuffle buffer) the two ranks read disjoint shards that cover
    the corpus exactly once; with a buffer the batch counts still match."""
    per_rank = []
    for rank in (0, 1):
        loader = make_loader(
            corpus, 3, 0, image_size=16, shuffle_buffer=0, rank=rank, world_size=2, with_keys=True
        )
        images, keys = epoch(loader)
        assert len(loader) == len(images) == 10  # 60 / (2 ranks x 3)
        per_rank.append(keys)
    assert set(per_rank[0]).isdisjoint(per_rank[1])
    assert len(set(per_rank[0]) | set(per_rank[1])) == 60
    for rank in (0, 1):
        loader = make_loader(corpus, 4, 0, image_size=16, epoch_length=50, rank=rank, world_size=2)
        assert len(loader) == len(list(loader)) == 6  # 50 // (2 x 4)


def test_workers_split_shards_and_resume_mid_epoch(corpus):
    kw = dict(image_size=16, shuffle_buffer=0, with_keys=True)
    loader = make_loader(corpus, 5, 2, **kw)
    images, keys = epoch(loader)
    assert len(images) == 12 and len(set(keys)) == 60  # two workers, disjoint shards
    again = make_loader(corpus, 5, 2, **kw)
    again.set_epoch(0, skip=3)  # resume after 3 batches: the rest of the epoch, in order
    rest, rest_keys = epoch(again)
    assert rest_keys == keys[15:]
    assert all(torch.equal(a, b) for a, b in zip(rest, images[3:], strict=True))
    _, next_keys = epoch(again)  # the following iteration is epoch 1, from its start
    assert next_keys != keys and again.epoch == 2


def test_same_seed_same_batches_other_seed_or_epoch_differs(corpus):
    def run(seed, workers=0, epoch_=0):
        loader = make_loader(corpus, 6, workers, image_size=24, seed=seed, shuffle_buffer=16)
        loader.set_epoch(epoch_)
        return torch.cat(list(loader))

    a = run(1)
    assert torch.equal(a, run(1))
    assert not torch.equal(a, run(2))
    assert not torch.equal(a, run(1, epoch_=1))
    assert torch.equal(run(1, workers=2), run(1, workers=2))


def jpeg(h: int, w: int, seed: int) -> bytes:
    img = (thermal_frame(np.random.default_rng(seed), h, w) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def test_crop_matches_torchvision_on_the_full_decode():
    """Same box as RandomResizedCrop drew: equal to torchvision's antialiased bicubic
    resized_crop of the fully decoded tensor (and within 2 levels of Pillow's) when no DCT
    reduction applies, close to Pillow's when it does."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2.functional import resized_crop

    data, size = jpeg(256, 320, 0), 96
    full = Image.open(io.BytesIO(data)).convert("L")
    tensor = torch.from_numpy(np.array(full))[None]
    exact = reduced = flips = 0
    for k in range(40):
        out, flip = random_crop(data, size, random.Random(f"t{k}"))
        rng = random.Random(f"t{k}")
        left, top, w, h = sample_box(rng, 320, 256, (0.2, 1.0))
        assert flip == (rng.random() < 0.5)
        flips += flip
        box = (left, top, left + w, top + h)
        ref = np.asarray(full.resize((size, size), Image.Resampling.BICUBIC, box=box))
        assert out.shape == (size, size) and out.dtype == np.uint8
        if reduction(w, h, size) == 1:
            tv = resized_crop(tensor, top, left, h, w, [size, size], InterpolationMode.BICUBIC)
            np.testing.assert_array_equal(out, tv[0].numpy())
            assert np.abs(out.astype(int) - ref).max() <= 2
            exact += 1
        else:
            assert np.abs(out.astype(float) - ref).mean() < 1.5
            reduced += 1
    assert exact > 5 and reduced > 5 and 5 < flips < 35


def test_sample_box_follows_random_resized_crop():
    """Same distribution of boxes as torchvision's RandomResizedCrop.get_params."""
    from torchvision.transforms import RandomResizedCrop

    rng, img = random.Random(0), Image.new("L", (640, 512))
    torch.manual_seed(0)
    ours, theirs = [], []
    for _ in range(3000):
        left, top, w, h = sample_box(rng, 640, 512, (0.2, 1.0))
        assert 0 <= left <= 640 - w and 0 <= top <= 512 - h
        ours.append((w * h / (640 * 512), w / h, (left + w / 2) / 640))
        _, j, h, w = RandomResizedCrop.get_params(img, (0.2, 1.0), (3 / 4, 4 / 3))
        theirs.append((w * h / (640 * 512), w / h, (j + w / 2) / 640))
    ours, theirs = np.array(ours), np.array(theirs)
    np.testing.assert_allclose(ours.mean(0), theirs.mean(0), atol=0.015)
    np.testing.assert_allclose(ours.std(0), theirs.std(0), atol=0.015)
    assert ours[:, 0].min() > 0.19 and ours[:, 1].min() > 0.74 and ours[:, 1].max() < 1.34


def test_flip_mirrors_the_image(tmp_path):
    """Square image, scale (1, 1), output its own size: every crop is the whole image, so each
    output is the image or its mirror, about half each."""
    img = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))  # brightens to the right
    Image.fromarray(img).save(tmp_path / "ramp.png")
    loader = make_loader(tmp_path, 1, 0, image_size=32, scale=(1.0, 1.0), epoch_length=40)
    outs = [x[0, 0].numpy() for x in loader]
    plain = sum(np.array_equal(o, img) for o in outs)
    mirrored = sum(np.array_equal(o, img[:, ::-1]) for o in outs)
    assert plain + mirrored == 40 and 8 < mirrored < 32


def test_image_folder_splits_ranks_and_skips_bad_files(tmp_path, demo_root):
    for i in range(24):
        Image.fromarray(
            (thermal_frame(np.random.default_rng(i), 40, 48) * 255).astype(np.uint8)
        ).save(tmp_path / f"{i:02d}.png")
    keys = []
    for rank in (0, 1):
        loader = make_loader(tmp_path, 4, 0, image_size=16, rank=rank, world_size=2, with_keys=True)
        images, k = epoch(loader)
        assert len(images) == len(loader) == 3 and images[0].shape == (4, 1, 16, 16)
        keys.append(k)
    assert set(keys[0]).isdisjoint(keys[1]) and len(set(keys[0]) | set(keys[1])) == 24
    demo = make_loader(demo_root, 8, 0, image_size=16, epoch_length=200)
    assert len(list(demo)) == 25 and demo.skipped > 0  # demo_root plants broken files


def test_corrupt_sample_and_truncated_shard_are_skipped(corpus, tmp_path):
    bad = tmp_path / "corpus"
    shutil.copytree(corpus, bad)
    first, second = sorted((bad / "shards").glob("*.tar"))[:2]
    with tarfile.open(first) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    broken_key = members[0][0].name.split(".")[0]
    with tarfile.open(first, "w") as tar:
        for m, data in members:
            data = b"not a jpeg" if m.name == members[0][0].name else data
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    second.write_bytes(second.read_bytes()[:3000])
    loader = make_loader(bad, 5, 0, image_size=16, shuffle_buffer=0, with_keys=True)
    images, keys = epoch(loader)
    assert len(images) == 12 and broken_key not in keys
    assert loader.skipped >= 2


def test_to_model_input_matches_float64_reference():
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    y = to_model_input(x, "cpu")
    ref = (x.double() / 255 - 0.3801) / 0.1871
    assert y.shape == (3, 3, 8, 8) and y.dtype == torch.float32
    for c in range(3):
        torch.testing.assert_close(y[:, c : c + 1].double(), ref, atol=1e-5, rtol=0)
    z = to_model_input(x, "cpu", mean=0.5, std=0.25)
    torch.testing.assert_close(
        z[:, :1].double(), (x.double() / 255 - 0.5) / 0.25, atol=1e-5, rtol=0
    )


def test_unusable_inputs_raise(tmp_path, corpus):
    with pytest.raises(UnipError, match=r"no _info\.json and no images"):
        make_loader(tmp_path, 4, 0)
    with pytest.raises(UnipError, match="do not make one batch"):
        make_loader(corpus, 64, 0)
    with pytest.raises(UnipError, match="rank 2"):
        make_loader(corpus, 4, 0, rank=2, world_size=2)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact_even_when_samples_fail(demo_root, workers):
    """demo_root plants undecodable files: a failed sample is replaced inside its batch, so
    batch j still starts at item j x batch_size and every skip lands where it should."""
    kw = dict(image_size=16, epoch_length=96, with_keys=True)
    loader = make_loader(demo_root, 8, workers, **kw)
    images, keys = epoch(loader)
    assert loader.skipped > 0 and len(images) == 12
    for skip in (1, 5, 11):
        again = make_loader(demo_root, 8, workers, **kw)
        again.set_epoch(0, skip=skip)
        rest, rest_keys = epoch(again)
        assert rest_keys == keys[8 * skip :]
        assert all(torch.equal(a, b) for a, b in zip(rest, images[skip:], strict=True))
