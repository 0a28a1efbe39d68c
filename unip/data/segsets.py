"""Labelled infrared segmentation sets (SODA, MFNet, SCUT-Seg, a plain folder) as uint8 arrays.

A set checks its layout when it is opened (folders, split file, every listed image and label)
so a wrong path fails before training starts; pixels are checked when a sample is read (size,
label ids). Label ids go through a 256-entry lookup table where a dataset's raw ids are not its
training ids (SCUT-Seg stores Cityscapes ids), so remapping costs one indexing per label.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from infmix.config import ProcessConfig
from unip.errors import UnipError

# infmix's process.max_pixels: larger headers are refused before any pixel is decoded
MAX_PIXELS = ProcessConfig.model_fields["max_pixels"].default
IGNORE = 255
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
THERMAL_DIRS = ("thermal", "thermal_imgs")
SET_LABEL_MAP = "map them in data.label_map (to 255 to ignore them)"
SCUT_HINT = (
    "these are not the SCUT-Seg release's Cityscapes ids: labels already converted to 0-9 "
    "belong in the split-file layout (images/, labels/, <split>.txt), or " + SET_LABEL_MAP
)

SODA_CLASSES = [
    "background", "person", "building", "tree", "road", "pole", "grass", "door", "table",
    "chair", "car", "bicycle", "lamp", "monitor", "traffic cone", "trash can", "animal",
    "fence", "sky", "river", "sidewalk",
]  # fmt: skip
MFNET_CLASSES = [
    "unlabeled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump",
]  # fmt: skip
SCUT_CLASSES = [
    "background", "road", "person", "rider", "car", "truck", "fence", "tree", "bus", "pole",
]  # fmt: skip
# The SCUT-Seg release's labels hold Cityscapes ids; this raw id -> class index table gives
# SCUT_CLASSES' order (the order of UNIP's converted copy). 255 stays ignored; any other id is
# an error, since it means the labels are not raw SCUT-Seg ids.
SCUT_LABEL_MAP = {0: 0, 7: 1, 24: 2, 25: 3, 26: 4, 27: 5, 13: 6, 21: 7, 28: 8, 17: 9}

Sample = tuple[np.ndarray, np.ndarray, str]


@dataclass
class SegSet:
    """One split of a segmentation set: `set[i]` is (image (H, W) uint8, label (H, W) uint8
    with ids in [0, K) or 255, name)."""

    kind: str
    root: Path
    split: str
    classes: list[str]
    names: list[str]
    images: list[Path]
    labels: list[Path]
    read_image: Callable[[Image.Image, Path], np.ndarray]
    lut: np.ndarray | None = None
    max_pixels: int = MAX_PIXELS
    lut_hint: str = ""  # said when a label holds an id the lut does not map
    palette: list[tuple[int, int, int]] = field(init=False)

    def __post_init__(self) -> None:
        self.palette = make_palette(len(self.classes))

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Sample:
        image = self.read_image(open_checked(self.images[i], self.max_pixels), self.images[i])
        label = read_label(
            self.labels[i], len(self.classes), self.lut, self.max_pixels, self.lut_hint
        )
        if image.shape != label.shape:
            raise UnipError(
                f"{self.labels[i]}: label is {label.shape[1]}x{label.shape[0]} but its image "
                f"{self.images[i]} is {image.shape[1]}x{image.shape[0]}"
            )
        return image, label, self.names[i]


def make_palette(k: int) -> list[tuple[int, int, int]]:
    """PASCAL VOC's bit-interleaved colour map: distinct colours for up to 256 classes."""
    palette = []
    for i in range(k):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


def open_checked(path: Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and decode `path`, refusing headers over `max_pixels` before decoding them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our cap applies
        try:
            im = Image.open(path)
            w, h = im.size
            if w * h > max_pixels:
                raise UnipError(f"{path}: {w}x{h} is over max_pixels={max_pixels}")
            im.load()
        except Image.DecompressionBombError as e:
            raise UnipError(f"{path}: {e}") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise UnipError(f"{path}: cannot decode: {type(e).__name__}: {e}") from None
    return im


def thermal_gray(im: Image.Image, path: Path | None = None) -> np.ndarray:
    """Any image as 8-bit gray: 16/32-bit integer frames stretched per image by their
    min..max (an offset-and-gain per frame, as raw radiometric frames have no fixed range),
    colour converted with Pillow's luma."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        if hi <= lo:
            return np.zeros(a.shape, np.uint8)
        return np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return np.asarray(im if im.mode == "L" else im.convert("L")).copy()


def mfnet_thermal(im: Image.Image, path: Path) -> np.ndarray:
    """The thermal plane of MFNet's 4-channel RGB-T PNG (a 1-channel PNG is already thermal)."""
    if im.mode == "RGBA":
        return np.asarray(im.getchannel(3)).copy()
    if im.mode in ("L", "I;16", "I"):
        return thermal_gray(im)
    raise UnipError(
        f"{path}: MFNet images must be 4-channel RGB-T PNGs (thermal is the 4th channel), "
        f"got mode {im.mode} with {len(im.getbands())} channel(s); put extracted thermal "
        "frames in a thermal/ (or thermal_imgs/) folder beside images/"
    )


def read_label(
    path: Path, k: int, lut: np.ndarray | None, max_pixels: int, hint: str = ""
) -> np.ndarray:
    """Single-channel class ids (L, P or 16-bit PNG), remapped by `lut` when given."""
    im = open_checked(path, max_pixels)
    if im.mode not in ("L", "P", "I;16", "I"):
        raise UnipError(f"{path}: labels must be single-channel class ids, got mode {im.mode}")
    raw = np.asarray(im)
    if raw.dtype != np.uint8:
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            raise UnipError(f"{path}: label ids must be in 0..255, found {raw.max()}")
        raw = raw.astype(np.uint8)
    if lut is not None:
        out = lut[raw]
        if (out < 0).any():
            raise UnipError(
                f"{path}: label ids {np.unique(raw[out < 0]).tolist()} are not in the label map "
                f"(which maps {np.flatnonzero(lut >= 0).tolist()}); {hint or SET_LABEL_MAP}"
            )
        return out.astype(np.uint8)
    values = np.unique(raw)
    bad = values[(values >= k) & (values != IGNORE)]
    if bad.size:
        raise UnipError(f"{path}: label ids {bad.tolist()} are not in [0, {k}) or {IGNORE}")
    return raw.copy()


def label_lut(label_map: dict[int, int], k: int) -> np.ndarray:
    """raw id -> class index table (int16): 255 stays 255 unless mapped, ids not in `label_map`
    are -1, which read_label refuses, so a wrong table never turns labels into 'ignore'."""
    lut = np.full(256, -1, np.int16)
    lut[IGNORE] = IGNORE
    for raw, cls in label_map.items():
        if not 0 <= raw <= 255 or not (0 <= cls < k or cls == IGNORE):
            raise UnipError(f"label_map {raw}: {cls} must map 0..255 to [0, {k}) or {IGNORE}")
        lut[raw] = cls
    return lut


def read_split(path: Path) -> list[str]:
    """Ids in file order; blank lines skipped, an image extension on an id dropped."""
    if not path.is_file():
        raise UnipError(f"split file not found: {path}")
    ids = []
    for line in path.read_text().splitlines():
        name = line.strip()
        if name:
            ids.append(name[: -len(Path(name).suffix)] if _is_image(name) else name)
    if not ids:
        raise UnipError(f"split file {path} lists no samples")
    return ids


def read_classes(path: Path) -> list[str]:
    """Class names, one a line (a folder set's classes.txt)."""
    if not Path(path).is_file():
        raise UnipError(f"classes file not found: {path}")
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTS


def require_dir(path: Path) -> Path:
    if not path.is_dir():
        raise UnipError(f"folder not found: {path}")
    return path


def _few(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def listed_files(folder: Path, ids: list[str], exts: tuple[str, ...], what: str) -> list[Path]:
    """The file of each id in `folder` (first of `exts` that exists); names the missing ones."""
    present = {p.name for p in folder.iterdir()}
    found, missing = [], []
    for i in ids:
        name = next((i + e for e in exts if i + e in present), None)
        if name is None:
            missing.append(i)
        else:
            found.append(folder / name)
    if missing:
        raise UnipError(
            f"{len(missing)} of {len(ids)} {what} are missing from {folder} "
            f"(expected <id>{'|'.join(exts)}): {_few(missing)}"
        )
    return found


def _check_split(kind: str, split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise UnipError(f"{kind} has splits {', '.join(allowed)}; got split {split!r}")


Layout = tuple[list[str], list[Path], list[Path], Callable, dict[int, int] | None]
"""ids, image files, label files, image reader, default label map (None: ids as stored)."""


def _listed(
    split_file: Path,
    images: Path,
    labels: Path,
    image_exts: tuple[str, ...],
    reader: Callable | None = None,
) -> Layout:
    """A layout whose split file lists the ids: `<id><ext>` in images, `<id>.png` in labels,
    ids used as stored."""
    ids = read_split(split_file)
    return (
        ids,
        listed_files(images, ids, image_exts, "images"),
        listed_files(labels, ids, (".png",), "labels"),
        reader or thermal_gray,
        None,
    )


def _soda(root: Path, split: str) -> Layout:
    _check_split("soda", split, ("train", "test"))
    images, labels = require_dir(root / "JPEGImages"), require_dir(root / "SegmentationClassPNG")
    return _listed(root / f"{split}_infrared.txt", images, labels, (".jpg", ".png"))


def _mfnet(root: Path, split: str) -> Layout:
    _check_split("mfnet", split, ("train", "val", "test"))
    # extracted thermal frames: thermal/ (ours) or thermal_imgs/ (UNIP's copy), else RGB-T
    thermal = next((root / n for n in THERMAL_DIRS if (root / n).is_dir()), None)
    images = thermal or require_dir(root / "images")
    reader = thermal_gray if images == thermal else mfnet_thermal
    return _listed(root / f"{split}.txt", images, require_dir(root / "labels"), (".png",), reader)


def _scut(root: Path, split: str) -> Layout:
    """The release's `images/<split>/`, `labels/<split>/` with Cityscapes ids (remapped), or a
    converted copy as UNIP's configs read it: `images/`, `labels/` with ids 0-9, `<split>.txt`."""
    _check_split("scut", split, ("train", "val", "test"))
    if not (root / "images" / split).is_dir() and (root / f"{split}.txt").is_file():
        images, labels = require_dir(root / "images"), require_dir(root / "labels")
        return _listed(root / f"{split}.txt", images, labels, (".jpg", ".png"))
    if not (root / "images" / split).is_dir():
        raise UnipError(
            f"scut split {split!r}: neither {root / 'images' / split}/ (the release's layout) "
            f"nor {root / f'{split}.txt'} (images/ + labels/ with ids 0-9) found"
        )
    images = require_dir(root / "images" / split)
    labels = require_dir(root / "labels" / split)
    by_stem = {p.stem: p for p in sorted(images.iterdir()) if p.suffix.lower() in (".jpg", ".png")}
    label_stems = {p.stem for p in labels.glob("*.png")}
    for what, a, b, where in (
        ("labels without an image", label_stems, by_stem, images),
        ("images without a label", by_stem, label_stems, labels),
    ):
        extra = sorted(set(a) - set(b))
        if extra:
            raise UnipError(f"scut {split}: {len(extra)} {what} in {where}: {_few(extra)}")
    ids = sorted(by_stem)
    if not ids:
        raise UnipError(f"scut {split}: no images in {images}")
    images_of = [by_stem[i] for i in ids]
    return ids, images_of, [labels / f"{i}.png" for i in ids], thermal_gray, SCUT_LABEL_MAP


def _folder(root: Path, split: str) -> Layout:
    if not split or "/" in split or "\\" in split or split.startswith("."):
        raise UnipError(f"split must be a plain name (the file <split>.txt), got {split!r}")
    images, labels = require_dir(root / "images"), require_dir(root / "labels")
    exts = IMAGE_EXTS + tuple(e.upper() for e in IMAGE_EXTS)
    return _listed(root / f"{split}.txt", images, labels, exts)


KINDS = {"soda": _soda, "mfnet": _mfnet, "scut": _scut, "folder": _folder}
DEFAULT_CLASSES = {"soda": SODA_CLASSES, "mfnet": MFNET_CLASSES, "scut": SCUT_CLASSES}


def open_segset(
    kind: str,
    root: Path,
    split: str,
    classes: list[str] | None = None,
    label_map: dict[int, int] | None = None,
    max_pixels: int = MAX_PIXELS,
) -> SegSet:
    """Open one split of a `kind` set under `root`, checking its layout now.

    Args:
        kind: soda, mfnet, scut or folder (the layouts are in pipelines/README.md).
        root: the dataset folder.
        split: train / val / test as the kind has them; for folder, any `<split>.txt`.
        classes: class names, required for folder; for the others, the paper's lists.
        label_map: raw label id -> class index (255 to ignore); an id it does not list is an
            error when read (default: SCUT_LABEL_MAP for the SCUT-Seg release's layout, labels
            used as stored otherwise).
        max_pixels: images and labels whose header claims more pixels are refused.
    """
    if kind not in KINDS:
        raise UnipError(f"unknown segmentation set kind {kind!r}; one of {', '.join(KINDS)}")
    if classes is None:
        if kind == "folder":
            raise UnipError(
                f"a folder segmentation set needs its class names (classes), e.g. "
                f"read_classes({Path(root) / 'classes.txt'})"
            )
        classes = DEFAULT_CLASSES[kind]
    if not 1 <= len(classes) <= 255:
        raise UnipError(f"{len(classes)} classes; uint8 labels hold 1..255 (255 is ignore)")
    root = require_dir(Path(root))
    names, images, labels, reader, default_map = KINDS[kind](root, split)
    hint = SCUT_HINT if kind == "scut" and label_map is None else ""
    label_map = default_map if label_map is None else label_map
    lut = None if label_map is None else label_lut(label_map, len(classes))
    return SegSet(
        kind, root, split, list(classes), names, images, labels, reader, lut, max_pixels, hint
    )
