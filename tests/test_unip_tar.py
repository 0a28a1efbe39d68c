"""unip.data.tar: the lean shard reader against tarfile and webdataset, damage and fuzzing."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from infmix import shards
from infmix.build import build
from infmix.config import load_config
from tests.conftest import demo_config_dict
from unip.data import tar

BLOCK = 512
FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}


def everything(name: str) -> bool:
    return True


def noisy(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


LONG_DIR = "deep-" + "d" * 70
LONG = f"{LONG_DIR}/{'e' * 80}.jpg"  # 160 chars: ustar splits it at the slash into prefix/name
ENTRIES = [
    ("dir", "a/", None),
    ("dir", "a/b/", None),
    ("file", "k1.jpg", noisy(100, 1)),
    ("file", "k1.json", b'{"a": 1}'),
    ("file", "k1.seg.png", noisy(513, 2)),  # 513 bytes: one byte into a second block
    ("file", "x.seg.png", noisy(512, 3)),  # exactly one block, no padding
    ("file", "x.cls", b"3"),
    ("file", "K2.JPG", noisy(300, 4)),  # upper-case extensions are lowercased
    ("file", "K2.Txt", b"hello"),
    ("file", "a/b/key.jpg", noisy(1000, 5)),
    ("file", "a/b/key.json", b"{}"),
    ("file", "a.b/c.d.txt", b"a dot in the folder is not the key's dot"),
    ("sym", "link.jpg", "k1.jpg"),
    ("hard", "hard.jpg", "k1.jpg"),
    ("fifo", "pipe.fifo", None),
    ("file", LONG, noisy(2000, 6)),
    ("file", LONG[:-3] + "json", b'{"long": true}'),
    ("file", "ünï/ключ.jpg", noisy(77, 7)),
    ("file", "ünï/ключ.json", "é".encode()),
    ("file", "empty.txt", b""),
    ("file", "empty.jpg", b""),
    ("file", "zeros.bin", bytes(1024)),  # data that looks like the end-of-archive blocks
    ("file", "README", b"no extension: not in any sample"),
    ("file", ".hidden", b"no key: not in any sample"),
    ("file", "k1.png", noisy(10, 8)),  # k1 again after other keys: a new sample
]
# names ustar cannot hold: a single component over 100 bytes, a link target over 100 bytes
NOT_USTAR = [
    ("file", "f" * 120 + ".jpg", noisy(600, 9)),
    ("file", "ü" * 70 + ".png", noisy(40, 10)),  # 144 bytes of UTF-8
    ("sym", "longlink.jpg", "t" * 150),  # GNU 'K' header, PAX linkpath
    ("file", "after-longlink.jpg", b"still found"),
]


def write_tar(path: Path, entries, fmt: int) -> Path:
    with tarfile.open(path, "w", format=fmt, encoding="utf-8") as t:
        for kind, name, arg in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "file":
                info.size = len(arg)
                t.addfile(info, io.BytesIO(arg))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "sym": tarfile.SYMTYPE,
                "hard": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            info.linkname = arg or ""
            t.addfile(info)
    return path


def tarfile_regular(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path, "r:") as t:
        return [(m.name, t.extractfile(m).read()) for m in t if m.isreg()]


def unip_members(path: Path, want=everything) -> list[tuple[str, bytes | None]]:
    with open(path, "rb") as f:
        return list(tar.members(f, want))


def canon(samples) -> list[tuple[str, dict]]:
    return [(s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")}) for s in samples]


def wds_samples(path: Path, select=None) -> list[tuple[str, dict]]:
    pipe = wds.tarfile_to_samples(handler=wds.reraise_exception, select_files=select)
    return canon(pipe(iter([{"url": str(path)}])))


def unip_samples(path: Path, want=everything) -> list[tuple[str, dict]]:
    out = list(tar.samples(path, want, on_error=lambda e: False))
    assert all(s["__url__"] == str(path) for s in out)
    return canon(out)


def flat(samples: list[tuple[str, dict]]) -> list[tuple[str, str, bytes]]:
    return [(key, ext, data) for key, d in samples for ext, data in d.items()]


# 1. archives written by tarfile and by infmix, against tarfile and webdataset


@pytest.mark.parametrize("fmt", FORMATS)
def test_members_and_samples_match_tarfile_and_webdataset(tmp_path, fmt):
    entries = ENTRIES + (NOT_USTAR if fmt != "ustar" else [])
    path = write_tar(tmp_path / f"{fmt}.tar", entries, FORMATS[fmt])
    raw = path.read_bytes()
    # the archive really exercises the format's way of storing long names
    if fmt == "ustar":
        assert b"ustar\x0000" in raw and b"././@" not in raw and LONG_DIR.encode() in raw
        assert LONG.encode() not in raw  # split into prefix and name
    elif fmt == "gnu":
        assert b"././@LongLink" in raw and b"path=" not in raw
    else:
        assert f"path={LONG}\n".encode() in raw and "path=ünï/ключ.jpg".encode() in raw

    ref = tarfile_regular(path)
    assert ref == [(n, d) for kind, n, d in entries if kind == "file"]  # links, dirs: not files
    assert unip_members(path) == ref

    expected = wds_samples(path)
    assert unip_samples(path) == expected
    keys = [k for k, _ in expected]
    assert keys[:3] == ["k1", "x", "K2"] and keys.count("k1") == 2 and LONG[:-4] in keys
    assert ("a.b/c", {"d.txt": entries[11][2]}) in expected
    assert ("empty", {"txt": b"", "jpg": b""}) in expected
    assert expected[0][1].keys() == {"jpg", "json", "seg.png"}
    assert expected[2][1].keys() == {"jpg", "txt"}


def test_webdataset_selection_matches_want(tmp_path):
    path = write_tar(tmp_path / "pax.tar", ENTRIES + NOT_USTAR, tarfile.PAX_FORMAT)
    for want in (lambda n: n.lower().endswith(".jpg"), lambda n: "/" in n, lambda n: False):
        assert unip_samples(path, want) == wds_samples(path, select=want)
    assert unip_samples(path, lambda n: False) == []


@pytest.fixture(scope="module")
def infmix_corpus(demo_root, tmp_path_factory) -> list[Path]:
    data = demo_config_dict(demo_root)
    data["shards"] = {"samples_per_shard": 6}
    out = tmp_path_factory.mktemp("unip-tar") / "corpus"
    build(load_config(None, data=data), out, workers=1)
    found = sorted((out / "shards").glob("*.tar"))
    assert len(found) == 10
    return found


def test_infmix_build_shards_read_like_webdataset(infmix_corpus):
    n = 0
    for shard in infmix_corpus:
        assert unip_members(shard) == tarfile_regular(shard)
        got = unip_samples(shard)
        assert got == wds_samples(shard)
        assert all(len(d) == 2 and "json" in d for _, d in got)
        n += len(got)
    assert n == 60


def test_infmix_shard_with_long_and_non_ascii_keys(tmp_path):
    records = [
        {"key": "src/" + "k" * 120, "ext": "jpg", "meta": {"i": 0}},
        {"key": "src/ключ-1", "ext": "png", "meta": {"i": 1}},
        {"key": "plain", "ext": "jpg", "meta": {"i": 2}},
        {"key": "b" * 97, "ext": "tif", "meta": {"i": 3}},  # 101 chars: PAX, the json 102
    ]
    blobs = {r["key"]: noisy(100 + 400 * i, 20 + i) for i, r in enumerate(records)}
    path = tmp_path / "shard.tar"
    shards.write_shard(path, records, lambda r: blobs[r["key"]])
    assert b"path=src/" in path.read_bytes()
    assert unip_members(path) == tarfile_regular(path)
    got = unip_samples(path)
    assert got == wds_samples(path)
    assert [(k, d[r["ext"]]) for (k, d), r in zip(got, records, strict=True)] == [
        (r["key"], blobs[r["key"]]) for r in records
    ]


def test_repeated_extension_starts_a_new_sample(tmp_path):
    files = [("k.jpg", b"one"), ("k.jpg", b"two"), ("k.json", b"{}"), ("k.JPG", b"three")]
    path = write_tar(tmp_path / "dup.tar", [("file", n, d) for n, d in files], tarfile.PAX_FORMAT)
    assert unip_samples(path) == [
        ("k", {"jpg": b"one"}),
        ("k", {"jpg": b"two", "json": b"{}"}),
        ("k", {"jpg": b"three"}),
    ]


# 2. unwanted members are skipped unread


class CountingReader(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.reads: list[int] = []

    def read(self, n=-1):
        self.reads.append(n)
        return super().read(n)


def test_unwanted_members_are_not_read(tmp_path):
    path = write_tar(tmp_path / "ustar.tar", ENTRIES, tarfile.USTAR_FORMAT)
    ref = tarfile_regular(path)
    raw = path.read_bytes()

    f = CountingReader(raw)
    got = list(tar.members(f, lambda n: False))
    assert got == [(n, None) for n, _ in ref]
    assert set(f.reads) == {BLOCK}  # headers only

    def want(n: str) -> bool:
        return n.endswith(".json")

    f = CountingReader(raw)
    got = list(tar.members(f, want))
    assert got == [(n, d if want(n) else None) for n, d in ref]
    assert [n for n in f.reads if n != BLOCK] == [len(d) for n, d in ref if want(n)]

    every_other = {n for n, _ in ref[::2]}  # skip and read alternately: seeks land on headers
    got = unip_members(path, every_other.__contains__)
    assert got == [(n, d if n in every_other else None) for n, d in ref]


# 3. damage: bad headers, truncation, fuzzing


def simple_files(long: bool = False) -> list[tuple[str, bytes]]:
    rng = random.Random(42)
    names = [f"s{i:02d}" for i in range(5)]
    if long:
        names.insert(2, "long/" + "n" * 110)  # a PAX header with metadata payload
    files = []
    for key in names:
        files.append((f"{key}.jpg", rng.randbytes(rng.randrange(1, 700))))
        files.append((f"{key}.json", b'{"k": "%s"}' % key.encode()))
    return files


def write_simple(path: Path, files, fmt=tarfile.USTAR_FORMAT) -> Path:
    return write_tar(path, [("file", n, d) for n, d in files], fmt)


def layout(raw: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(raw)) as t:
        return t.getmembers()


def collect(path: Path) -> tuple[list[tuple[str, dict]], list[Exception]]:
    errors: list[Exception] = []
    out = canon(tar.samples(path, everything, lambda e: errors.append(e) or True))
    return out, errors


@pytest.mark.parametrize("member", [4, 5])  # s02.jpg (a sample's first), s02.json (its second)
def test_flipped_header_byte_is_reported(tmp_path, member):
    files = simple_files()
    path = write_simple(tmp_path / "ok.tar", files)
    raw = bytearray(path.read_bytes())
    expected = unip_samples(path)
    assert expected == wds_samples(path) and len(expected) == 5
    raw[layout(bytes(raw))[member].offset + 140] ^= 1  # mtime: only the checksum notices
    path.write_bytes(raw)
    with tarfile.open(path) as t:  # tarfile takes the damage for the end, quietly
        assert [m.name for m in t] == [n for n, _ in files[:member]]

    out, errors = collect(path)
    assert len(errors) == 1 and isinstance(errors[0], tar.TarError)
    assert errors[0].args[-1] == str(path) and "checksum" in errors[0].args[0]
    assert out[:2] == expected[:2]  # the complete samples before the damage
    assert flat(out) == flat(expected)[:member]  # and nothing else but whole members

    got = []
    with pytest.raises(tar.TarError) as raised:
        for s in tar.samples(path, everything, lambda e: False):
            got.append(s)
    # raised: the sample still being grouped (s01, then s02) is not yielded either
    assert canon(got) == expected[: (member - 1) // 2] and raised.value.args[-1] == str(path)


@pytest.mark.parametrize("where", ["mid-member", "mid-header"])
def test_truncated_shard_is_reported(tmp_path, where):
    files = simple_files()
    path = write_simple(tmp_path / "ok.tar", files)
    raw = path.read_bytes()
    members = layout(raw)
    samples = unip_samples(path)
    expected = flat(samples)
    if where == "mid-member":
        cut, complete = members[7].offset_data + 3, 7  # inside s03.json's data
    else:
        cut, complete = members[8].offset + 100, 8  # inside s04.jpg's header
    path.write_bytes(raw[:cut])

    out, errors = collect(path)
    assert len(errors) == 1 and isinstance(errors[0], tar.TarError)
    assert errors[0].args[-1] == str(path) and "truncated" in errors[0].args[0]
    assert flat(out) == expected[:complete]
    assert out[: complete // 2] == samples[: complete // 2]  # the complete samples
    with pytest.raises(tar.TarError):
        list(tar.samples(path, everything, lambda e: False))


@pytest.fixture(scope="module")
def fuzz_archive(tmp_path_factory):
    """A PAX archive (one member with a long name, so a PAX payload) and its exact layout."""
    path = write_simple(
        tmp_path_factory.mktemp("fuzz") / "ok.tar", simple_files(long=True), tarfile.PAX_FORMAT
    )
    raw = path.read_bytes()
    orig = flat(unip_samples(path))
    assert orig == flat(wds_samples(path)) and len(orig) == 12
    headers, payloads, meta, data = [], [], [], []
    for i, m in enumerate(layout(raw)):
        headers.append((m.offset, i))
        if m.offset_data - m.offset > BLOCK:  # a PAX header: block, payload, then the header
            size = int(raw[m.offset + 124 : m.offset + 136].split(b"\0")[0], 8)
            meta.append((m.offset + BLOCK, m.offset + BLOCK + size, i))
            payloads.append((m.offset + BLOCK, size))
            headers.append((m.offset_data - BLOCK, i))
        data.append((m.offset_data, m.offset_data + m.size, i))
        payloads.append((m.offset_data, m.size))
    end = m.offset_data + -(-m.size // BLOCK) * BLOCK
    headers.append((end, len(orig)))  # the first end-of-archive block
    assert len(meta) == 2  # the long key's jpg and json
    return raw, orig, headers, payloads, meta, data, end


def test_fuzz_single_byte_mutations(tmp_path, fuzz_archive):
    raw, orig, headers, _, meta, data, end = fuzz_archive
    rng = random.Random(1)
    path = tmp_path / "mutated.tar"
    seen = set()
    for _ in range(300):
        off = rng.randrange(end + 2 * BLOCK)
        mutated = bytearray(raw)
        mutated[off] ^= rng.randrange(1, 256)
        path.write_bytes(mutated)
        out, errors = collect(path)  # never raises: all damage goes through on_error
        got = flat(out)
        assert len(errors) <= 1  # TarError, or ValueError from a garbled PAX record
        assert all(isinstance(e, ValueError) and e.args[-1] == str(path) for e in errors)
        header = [(s, i) for s, i in headers if s <= off < s + BLOCK]
        in_data = [(s, i) for s, e, i in data if s <= off < e]
        in_meta = [i for s, e, i in meta if s <= off < e]
        if header:  # checksummed: reported, unless the checksum field still reads the same
            ((start, i),) = header
            if errors or not 148 <= off - start < 156:
                assert errors and got == orig[:i]
            else:
                assert got == orig
            seen.add("header")
        elif in_data:  # tar cannot notice: the member comes out, same length, that byte changed
            ((start, i),) = in_data
            key, ext, value = orig[i]
            assert not errors
            assert got[:i] == orig[:i] and got[i + 1 :] == orig[i + 1 :]
            assert got[i] == (key, ext, bytes(mutated[start : start + len(value)]))
            seen.add("data")
        elif in_meta:  # the PAX path record: reported, or the name changed (data intact)
            (i,) = in_meta
            if errors:
                assert got == orig[:i]
            else:
                assert got[:i] == orig[:i]
                rest = got[i:]
                assert rest == orig[i + 1 :] or (
                    rest[1:] == orig[i + 1 :] and rest[0][2] == orig[i][2]
                )
            seen.add("meta")
        else:  # padding, the second end block: ignored
            assert not errors and got == orig
            seen.add("padding")
    assert seen == {"header", "data", "meta", "padding"}


def test_fuzz_truncations(tmp_path, fuzz_archive):
    raw, orig, headers, payloads, _, data, end = fuzz_archive
    rng = random.Random(2)
    path = tmp_path / "cut.tar"
    starts = {s for s, _ in headers}
    cuts = [rng.randrange(end + BLOCK + 100) for _ in range(100)]
    errors_seen = 0
    for cut in cuts:
        path.write_bytes(raw[:cut])
        out, errors = collect(path)
        complete = sum(e <= cut for _, e, _ in data)
        assert flat(out) == orig[:complete]  # whole members only, never a cut one
        # a cut exactly at a header, or in the padding after a payload, looks like a shorter
        # archive (as to tarfile); every other cut is reported
        clean = (
            cut in starts
            or cut >= end + BLOCK
            or any(s + n <= cut < s + -(-n // BLOCK) * BLOCK for s, n in payloads)
        )
        assert len(errors) == (0 if clean else 1), cut
        assert all(isinstance(e, tar.TarError) and e.args[-1] == str(path) for e in errors)
        errors_seen += len(errors)
    assert errors_seen > 50


# 4. number and checksum forms tarfile accepts


def patch(raw: bytes, offset: int, field: slice, value: bytes, checksum=None) -> bytes:
    """Header at `offset` with `field` replaced and its checksum recomputed (unsigned unless
    a function of the header is given)."""
    h = bytearray(raw[offset : offset + BLOCK])
    h[field] = value
    h[148:156] = b" " * 8
    h[148:155] = b"%06o\0" % (checksum or sum)(h)
    return raw[:offset] + bytes(h) + raw[offset + BLOCK :]


def test_base256_size_parses_like_tarfile(tmp_path):
    files = [("big.bin", noisy(700, 30)), ("after.txt", b"next")]
    raw = write_simple(tmp_path / "a.tar", files).read_bytes()
    assert raw[124:136] == b"%011o\0" % 700
    path = tmp_path / "b256.tar"
    path.write_bytes(patch(raw, 0, slice(124, 136), b"\x80" + (700).to_bytes(11, "big")))
    assert tarfile_regular(path) == files
    assert unip_members(path) == files
    assert unip_members(path, lambda n: n == "after.txt") == [("big.bin", None), files[1]]

    path.write_bytes(patch(raw, 0, slice(124, 136), b"\xff" * 12))  # base-256 for -1
    out, errors = collect(path)
    assert out == [] and len(errors) == 1 and isinstance(errors[0], tar.TarError)


def test_pax_size_record_overrides_header_size(tmp_path):
    data = noisy(700, 31)
    path = tmp_path / "pax.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("big.bin")
        info.size, info.pax_headers = len(data), {"size": str(len(data))}
        t.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("after.txt")
        info.size = 4
        t.addfile(info, io.BytesIO(b"next"))
    raw = path.read_bytes()
    real = layout(raw)[0].offset_data - BLOCK
    assert b"size=700\n" in raw[:real]
    path.write_bytes(patch(raw, real, slice(124, 136), b"%011o\0" % 0))  # header: size 0
    assert tarfile_regular(path) == [("big.bin", data), ("after.txt", b"next")]
    assert unip_members(path) == tarfile_regular(path)


def test_old_style_type_flags_parse_like_tarfile(tmp_path):
    """Type NUL (pre-POSIX regular file, a directory when the name ends in a slash) and type
    7 (contiguous file)."""
    entries = [
        ("dir", "olddir/", None),
        ("file", "old.jpg", b"old"),
        ("file", "cont.jpg", b"contiguous"),
    ]
    raw = write_tar(tmp_path / "a.tar", entries, tarfile.USTAR_FORMAT).read_bytes()
    members = layout(raw)
    for m, flag in zip(members, (b"\0", b"\0", b"7"), strict=True):
        raw = patch(raw, m.offset, slice(156, 157), flag)
    path = tmp_path / "old.tar"
    path.write_bytes(raw)
    assert [m.type for m in layout(raw)] == [tarfile.DIRTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE]
    assert tarfile_regular(path) == [("old.jpg", b"old"), ("cont.jpg", b"contiguous")]
    assert unip_members(path) == tarfile_regular(path)


def signed_sum(h: bytes) -> int:
    return sum(b - 256 if b > 127 else b for b in h)


@pytest.mark.parametrize("fmt", ["ustar", "gnu"])
def test_signed_checksum_parses_like_tarfile(tmp_path, fmt):
    files = [("ключ.jpg", noisy(50, 32)), ("next.jpg", b"n")]
    raw = write_simple(tmp_path / "a.tar", files, FORMATS[fmt]).read_bytes()
    assert "ключ".encode() in raw[:100]  # bytes over 127 in the header itself
    name = raw[:100]
    signed = patch(raw, 0, slice(0, 100), name, checksum=signed_sum)
    assert signed[148:156] != raw[148:156]  # the two sums really differ here
    path = tmp_path / "signed.tar"
    path.write_bytes(signed)
    assert tarfile_regular(path) == files
    assert unip_members(path) == files

    wrong = signed[:148] + b"%06o\0 " % (signed_sum(signed[:148] + b" " * 8 + signed[156:512]) + 1)
    path.write_bytes(wrong + signed[156:])
    with pytest.raises(tarfile.ReadError):
        tarfile_regular(path)
    out, errors = collect(path)
    assert out == [] and len(errors) == 1 and "checksum" in errors[0].args[0]


# 5. a missing shard


def test_missing_shard_goes_to_on_error(tmp_path):
    path = tmp_path / "absent.tar"
    out, errors = collect(path)
    assert out == [] and len(errors) == 1
    assert isinstance(errors[0], FileNotFoundError) and errors[0].args[-1] == str(path)
    with pytest.raises(FileNotFoundError):
        list(tar.samples(path, everything, lambda e: False))


def test_huge_size_field_goes_to_on_error(tmp_path):
    """A header (valid checksum) claiming 2**80 or 2**40 bytes (tarfile raises OverflowError or
    ReadError) is reported through on_error like any other truncated member, never read."""
    raw = write_simple(tmp_path / "a.tar", [("k.jpg", b"abc")]).read_bytes()
    path = tmp_path / "huge.tar"
    for size in (2**80, 2**40):
        path.write_bytes(patch(raw, 0, slice(124, 136), b"\x80" + size.to_bytes(11, "big")))
        out, errors = collect(path)
        assert out == [] and len(errors) == 1 and isinstance(errors[0], tar.TarError)
        assert "truncated" in errors[0].args[0]


def test_links_and_fifos_claiming_a_size_store_no_data_as_tarfile_reads_them(tmp_path):
    import io

    path = tmp_path / "fifo.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as t:
        fifo = tarfile.TarInfo("d.x")
        fifo.type, fifo.size = tarfile.FIFOTYPE, 600
        t.addfile(fifo)
        info = tarfile.TarInfo("a.jpg")
        info.size = 3
        t.addfile(info, io.BytesIO(b"abc"))
    assert tarfile_regular(path) == [("a.jpg", b"abc")]
    with open(path, "rb") as f:
        assert list(tar.members(f, lambda n: True)) == [("a.jpg", b"abc")]
