"""The fast paths of a build: JPEGs stored undecoded, exact dedup by stored bytes, tar headers.

Each fast path is checked against what the slow path (a full decode, `tarfile`) gives.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infmix import process, shards
from infmix.build import build
from infmix.config import ProcessConfig, load_config
from infmix.process import SourceOptions, process_sample
from infmix.sample import Sample
from infmix.steps.jpeg import plain_gray, strip_jpeg


def gray_jpeg(seed: int = 0, h: int = 48, w: int = 64, **save) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.clip(60 + 2 * x + y + rng.normal(0, 8, (h, w)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def run_bytes(tmp_path: Path, data: bytes, opts=None, embed=False, **cfg):
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    sample = Sample("t__x", "t", "infrared", str(path), "x.jpg")
    return process_sample(sample, opts or SourceOptions(), ProcessConfig(**cfg), embed)


@pytest.fixture
def decodes(monkeypatch) -> list:
    """Records every pixel decode the processing step makes."""
    calls: list = []
    real = process.load

    def spy(*args, **kwargs):
        calls.append(args[0].size)
        return real(*args, **kwargs)

    monkeypatch.setattr(process, "load", spy)
    return calls


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


# ---------------------------------------------------------------- stored without decoding


@pytest.mark.parametrize("save", [{}, {"progressive": True}, {"optimize": True}])
def test_plain_gray_jpeg_is_stored_without_a_decode(tmp_path, decodes, save):
    data = gray_jpeg(**save)
    res = run_bytes(tmp_path, data)
    assert res.ok and decodes == []
    assert res.data == data  # a plain JFIF stream comes out byte for byte
    assert res.meta["conversion"]["method"] == "passthrough"


def test_undecoded_and_verified_passthrough_store_the_same_sample(tmp_path, decodes):
    exif = Image.Exif()
    exif[0x010F] = "camera maker"  # metadata that stripping must remove
    im = Image.open(io.BytesIO(gray_jpeg(3)))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, exif=exif, comment=b"secret")
    fast = run_bytes(tmp_path, buf.getvalue())
    assert decodes == []
    slow = run_bytes(tmp_path, buf.getvalue(), verify_passthrough=True)
    assert decodes == [(64, 48)]
    assert fast.data == slow.data and fast.meta == slow.meta
    assert b"camera maker" not in fast.data and b"secret" not in fast.data
    # the stored stream decodes to exactly the original pixels
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(fast.data))), np.asarray(im))


@pytest.mark.parametrize(
    "why",
    [
        {"embed": True},  # the near-duplicate descriptor needs pixels
        {"opts": SourceOptions(drop_dark_max=5)},  # so does the dark-frame filter
        {"verify_passthrough": True},
        {"max_side": 32},  # the image shrinks: re-encoded
    ],
)
def test_gray_jpeg_is_decoded_when_something_needs_its_pixels(tmp_path, decodes, why):
    res = run_bytes(tmp_path, gray_jpeg(), **why)
    assert res.ok and decodes == [(64, 48)]
    if "max_side" not in why:
        assert res.meta["conversion"]["method"] == "passthrough"


def test_orientation_tag_means_decode_and_rotate(tmp_path, decodes):
    exif = Image.Exif()
    exif[0x0112] = 6
    im = Image.open(io.BytesIO(gray_jpeg()))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, exif=exif)
    res = run_bytes(tmp_path, buf.getvalue())
    assert decodes == [(64, 48)] and (res.meta["width"], res.meta["height"]) == (48, 64)


def _without(data: bytes, marker: int) -> bytes:
    """`data` with every segment of `marker` removed (before the first scan)."""
    out, pos = [data[:2]], 2
    while data[pos + 1] != 0xDA:
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if data[pos + 1] != marker:
            out.append(data[pos:end])
        pos = end
    return b"".join(out) + data[pos:]


def _sof_byte(data: bytes, value: int) -> bytes:
    i = data.index(b"\xff\xc0")
    return data[: i + 1] + bytes([value]) + data[i + 2 :]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: d[: len(d) // 2], id="truncated"),
        pytest.param(lambda d: _without(d, 0xDB), id="no-quantisation-table"),
        pytest.param(lambda d: _sof_byte(d, 0xC3), id="lossless-frame"),
        pytest.param(lambda d: _sof_byte(d, 0xC9), id="arithmetic-frame"),
        pytest.param(lambda d: d.replace(b"\xff\xd9", b""), id="no-eoi"),
    ],
)
def test_unusual_or_broken_streams_are_never_stored_undecoded(tmp_path, decodes, damage):
    """Anything the structural check does not recognise as plain is decoded (which rejects
    what libjpeg cannot read) or re-encoded: never copied unchecked."""
    data = damage(gray_jpeg())
    res = run_bytes(tmp_path, data)
    assert decodes, "went through undecoded"
    if res.ok:
        assert res.data != data or res.meta["conversion"]["method"] == "passthrough"
        Image.open(io.BytesIO(res.data)).load()  # whatever is stored decodes


def _header_end(data: bytes) -> int:
    """Offset of the first scan's entropy-coded data."""
    pos = 2
    while True:
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if data[pos + 1] == 0xDA:
            return end
        pos = end


def _seg(data: bytes, marker: int) -> int:
    """Offset of the first `marker` segment's payload."""
    return data.index(bytes([0xFF, marker])) + 4


def _set(data: bytes, i: int, v: int) -> bytes:
    return data[:i] + bytes([v]) + data[i + 1 :]


HEADER_DAMAGE = {
    "undefined-quant-table": lambda d: _set(d, _seg(d, 0xC0) + 8, 1),
    "short-frame": lambda d: (
        d[: _seg(d, 0xC0) - 2]
        + b"\x00\x08"
        + d[_seg(d, 0xC0) : _seg(d, 0xC0) + 6]
        + d[_seg(d, 0xC0) + 9 :]
    ),
    "scan-names-no-component": lambda d: _set(d, _seg(d, 0xDA) + 1, 9),
    "scan-uses-undefined-tables": lambda d: _set(d, _seg(d, 0xDA) + 2, 0x33),
    "zero-sampling": lambda d: _set(d, _seg(d, 0xC0) + 7, 0),
    "huffman-counts-overflow": lambda d: (
        d[: _seg(d, 0xC4) + 1] + bytes([255] * 16) + d[_seg(d, 0xC4) + 17 :]
    ),
    "scan-without-components": lambda d: _set(d, _seg(d, 0xDA), 0),
}


@pytest.mark.parametrize("damage", list(HEADER_DAMAGE.values()), ids=list(HEADER_DAMAGE))
def test_broken_headers_are_rejected_not_stored(tmp_path, damage):
    res = run_bytes(tmp_path, damage(gray_jpeg()))
    assert res.reason == "corrupt", (res.reason, res.meta)


@pytest.mark.parametrize("progressive", [False, True])
def test_header_fuzz_never_stores_an_undecodable_stream(tmp_path, progressive):
    """Every single-byte change to the headers of a valid stream: whatever is stored without a
    decode must decode (anything doubtful goes to the full decode, which rejects it)."""
    base = gray_jpeg(progressive=progressive)
    cfg = ProcessConfig()
    undecoded = 0
    for i in range(2, _header_end(base)):
        for v in (0x00, 0x01, 0x11, 0x40, 0xFE):
            data = _set(base, i, v)
            try:
                im = process.open_image(data, cfg.max_pixels)
            except process.Rejected:
                continue
            res = process.Result(Sample("k", "s", "infrared", "p", "p"))
            if process._untouched(im, SourceOptions(), cfg, False) and process._pass_through(
                data, im, res
            ):
                undecoded += 1
                Image.open(io.BytesIO(res.data)).load()
    assert undecoded > 50  # the harmless changes (table values, density...) still pass


@pytest.mark.parametrize("progressive", [False, True])
def test_random_damage_that_passes_the_check_still_decodes(progressive):
    """Random bytes anywhere in the file: a stream the check accepts always decodes (damage
    inside the entropy-coded data gives wrong pixels, as it would in a full decode)."""
    rng = np.random.default_rng(7)
    base = gray_jpeg(progressive=progressive, h=96, w=128)
    accepted = 0
    for _ in range(600):
        x = bytearray(base)
        for i in rng.integers(2, len(x), rng.integers(1, 20)):
            x[i] = rng.integers(0, 256)
        s = strip_jpeg(bytes(x))
        if s is not None and plain_gray(s, 128, 96):
            accepted += 1
            Image.open(io.BytesIO(s.data)).load()
    assert accepted > 100


def test_a_model_embedder_gets_every_image_decoded_first(tmp_path, decodes):
    """A timm embedder decodes the stored images after processing: they are decoded while
    processed too, so one libjpeg cannot read is a rejection, not a failed embedding."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    ckpt = tmp_path / "m.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), ckpt)
    root = tmp_path / "src"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.jpg").write_bytes(gray_jpeg(i))
    near = {"embedder": "timm:test_efficientnet", "checkpoint": str(ckpt), "device": "cpu"}
    cfg = load_config(
        None,
        data={
            "sources": [{"name": "s", "kind": "folder", "root": str(root), "modality": "infrared"}],
            "dedup": {"near": near},
        },
    )
    build(cfg, tmp_path / "out", workers=1)
    assert len(decodes) == 3


def test_structure_summary_of_a_real_stream():
    s = strip_jpeg(gray_jpeg(h=40, w=56))
    assert s is not None and len(s.scan_bytes) == 1 and s.scan_bytes[0] > 0
    assert [m for m, _ in s.segments] == [0xDB, 0xC0, 0xC4, 0xC4, 0xDA]  # gray: DC + AC table
    assert s.segments[1][1][:6] == bytes([8, 0, 40, 0, 56, 1])  # 8 bits, 40 x 56, 1 component
    assert plain_gray(s, 56, 40) and not plain_gray(s, 40, 56)
    colour = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(colour, "JPEG")
    assert not plain_gray(strip_jpeg(colour.getvalue()), 8, 8)  # three components
    two_frames = segment(0xC0, bytes([8, 0, 8, 0, 8, 1, 1, 0x11, 0]))
    data = gray_jpeg(h=8, w=8)
    i = data.index(b"\xff\xc0")
    assert not plain_gray(strip_jpeg(data[:i] + two_frames + data[i:]), 8, 8)


# ---------------------------------------------------------------- exact duplicates


def _corpus(tmp_path: Path, files: dict[str, bytes], modality: str = "infrared") -> Path:
    root = tmp_path / "src"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    cfg = load_config(
        None,
        data={
            "sources": [{"name": "s", "kind": "folder", "root": str(root), "modality": modality}],
            "dedup": {"near": {"enabled": False}},
        },
    )
    out = tmp_path / "out"
    build(cfg, out, workers=1)
    return out


def _dropped(out: Path) -> dict[str, str]:
    rows = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    return {Path(r["path"]).name: r["reason"] for r in rows}


def test_copies_differing_only_in_metadata_are_exact_duplicates(tmp_path):
    data = gray_jpeg(1)
    tagged = data[:2] + segment(0xFE, b"a comment") + data[2:] + b"trailing junk"
    no_jfif = data[:2] + data[20:]  # Pillow's JFIF header is 18 bytes after SOI
    assert no_jfif[2:4] == b"\xff\xdb"
    dpi = io.BytesIO()
    Image.open(io.BytesIO(data)).save(dpi, "JPEG", quality=90, dpi=(300, 300))
    assert dpi.getvalue() != data
    other = gray_jpeg(2)
    files = {"a.jpg": data, "b.jpg": tagged, "c.jpg": other, "d.jpg": no_jfif}
    out = _corpus(tmp_path, {**files, "e.jpg": dpi.getvalue()})
    assert _dropped(out) == {n: "exact_duplicate" for n in ("b.jpg", "d.jpg", "e.jpg")}


def test_same_pixels_in_other_formats_are_exact_duplicates(tmp_path):
    """Re-encoded images are encoded deterministically: equal final pixels, equal bytes."""
    rgb = np.random.default_rng(5).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    files = {}
    for fmt, ext in (("PNG", "png"), ("BMP", "bmp"), ("TIFF", "tif")):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, fmt)
        files[f"img.{ext}"] = buf.getvalue()
    shifted = rgb.copy()
    shifted[0, 0] ^= 0x80  # one pixel differs
    buf = io.BytesIO()
    Image.fromarray(shifted).save(buf, "PNG")
    files["other.png"] = buf.getvalue()
    out = _corpus(tmp_path, files, "rgb")
    assert _dropped(out) == {"img.png": "exact_duplicate", "img.tif": "exact_duplicate"}


# ---------------------------------------------------------------- tar headers


NAMES = ["a", "x" * 95, "y" * 96, "z" * 97, "k" * 150, "ü-name", "caf\udce9", "sp ace"]


def test_shards_are_byte_identical_to_tarfile(tmp_path):
    records = [
        {"key": n, "ext": "jpg", "meta": {"i": i, "n": n}, "data": bytes([i]) * (i * 377)}
        for i, n in enumerate(NAMES)
    ]
    shards.write_shard(tmp_path / "ours.tar", records, lambda r: r["data"])
    ref = io.BytesIO()
    with tarfile.open(fileobj=ref, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for r in records:
            meta = json.dumps(r["meta"], sort_keys=True, separators=(",", ":")).encode()
            for name, data in ((f"{r['key']}.jpg", r["data"]), (f"{r['key']}.json", meta)):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    assert (tmp_path / "ours.tar").read_bytes() == ref.getvalue()
    with tarfile.open(tmp_path / "ours.tar") as tar:
        assert [m.name for m in tar][:2] == ["a.jpg", "a.json"]
        assert tar.extractfile("k" * 150 + ".jpg").read() == records[4]["data"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 10**6])
def test_member_size_is_what_the_writer_writes(tmp_path, name, size):
    rec = {"key": name, "ext": "jpg", "meta": {}, "data": b"\x01" * size}
    shards.write_shard(tmp_path / "one.tar", [rec], lambda r: r["data"])
    written = (tmp_path / "one.tar").stat().st_size
    framing = shards.member_bytes(f"{name}.jpg", size) + shards.member_bytes(f"{name}.json", 2)
    end = 2 * shards.BLOCK
    assert written == framing + end + -(framing + end) % shards.RECORD
