"""Validated build configuration: defaults in code, YAML on top, `key=value` on top of that.

Every error names the key it is about (`sources.llvip.root: ...`), and is raised before any
work starts. Sources are a discriminated union on `kind`, so an option of the wrong kind is an
unknown key, not a silently ignored one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from infmix.errors import ConfigError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "tif", "tiff")
SOURCE_KINDS = ("folder", "video", "imagenet", "paired")
# no doubled separators: keys join source and path parts with "__", so a source name holding
# "__" could collide with another source's key
_NAME_RE = re.compile(r"^[a-z0-9]+(?:[_-][a-z0-9]+)*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class _SourceBase(_Strict):
    name: str = Field(description="Unique source name; prefixes every sample key.")
    root: Path = Field(description="Folder of the dataset; relative paths join `data_root`.")
    modality: Literal["infrared", "rgb"] = Field(description="What the sensor recorded.")
    enabled: bool = Field(True, description="Set false to leave the source out of a build.")
    extensions: list[str] = Field(
        list(IMAGE_EXTENSIONS), description="File extensions taken as images (no dot)."
    )
    exclude: list[str] = Field(
        [], description="fnmatch globs on paths relative to root that are never taken."
    )
    crop: tuple[int, int, int, int] = Field(
        (0, 0, 0, 0), description="Border pixels dropped (top, right, bottom, left)."
    )
    drop_dark_max: int | None = Field(
        None, ge=0, le=255, description="Drop images whose max grey value is at or below this."
    )
    license: str | None = Field(None, description="Licence of the source dataset.")
    citation: str | None = Field(None, description="How to cite the source dataset.")
    homepage: str | None = Field(None, description="Where the source dataset is published.")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("must be lower-case letters and digits, single _ or - between them")
        return v

    @field_validator("extensions")
    @classmethod
    def _exts(cls, v: list[str]) -> list[str]:
        return [e.lower().lstrip(".") for e in v]

    @field_validator("crop", mode="before")
    @classmethod
    def _crop(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            v = (v, v, v, v)
        if not isinstance(v, (list, tuple)) or not all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v
        ):
            raise ValueError("must be pixels >= 0: one number, or [top, right, bottom, left]")
        return v

    @field_validator("root")
    @classmethod
    def _root(cls, v: Path) -> Path:
        if str(v) in ("", "."):
            raise ValueError("must name the dataset's folder (an empty root means the CWD)")
        return v


class FolderSource(_SourceBase):
    """Every image under `root`, recursively (LLVIP-style still-image datasets)."""

    kind: Literal["folder"]
    frame_stride: int = Field(1, ge=1, description="Keep every n-th image of each folder.")


class VideoSource(_SourceBase):
    """`root` holds sequence folders; a sequence is any folder that directly holds frames."""

    kind: Literal["video"]
    frame_stride: int = Field(1, ge=1, description="Keep every n-th frame of each sequence.")
    frames_subdir: str | None = Field(
        None, description="Only folders of this name are sequences (KAIST `lwir`, LasHeR)."
    )


class ImageNetSource(_SourceBase):
    """`root` holds class folders; the first `per_class` images of each, in sorted order."""

    kind: Literal["imagenet"]
    per_class: int = Field(200, ge=1, description="Images kept per class folder.")


class PairedSource(_SourceBase):
    """RGB/thermal pairs; only the thermal side is taken.

    Pairs are sibling folders (`thermal_dir` beside `visible_dir`, at any depth) or, when
    `thermal_suffix` is set, file names in one folder (`0001_T.jpg` beside `0001_RGB.jpg`).
    """

    kind: Literal["paired"]
    thermal_dir: str = Field("infrared", description="Folder name of the thermal side.")
    visible_dir: str = Field("visible", description="Folder name of the visible side.")
    thermal_suffix: str | None = Field(
        None, min_length=1, description="File-stem suffix of thermal files."
    )
    visible_suffix: str | None = Field(
        None, min_length=1, description="File-stem suffix of visible files."
    )
    frame_stride: int = Field(1, ge=1, description="Keep every n-th thermal image per folder.")


Source = Annotated[
    FolderSource | VideoSource | ImageNetSource | PairedSource, Field(discriminator="kind")
]


class ProcessConfig(_Strict):
    """How each image is normalised and stored."""

    format: Literal["jpeg", "png"] = Field("jpeg", description="Stored image format.")
    jpeg_quality: int = Field(95, ge=1, le=100, description="JPEG quality when re-encoding.")
    max_side: int | None = Field(
        None, ge=16, description="Downscale so the longer side is at most this (null: keep)."
    )
    percentiles: tuple[float, float] = Field(
        (1.0, 99.0), description="Low/high percentiles of the 16-bit linear stretch."
    )
    max_pixels: int = Field(
        100_000_000, ge=1, description="Images whose header claims more pixels are rejected."
    )
    max_file_bytes: int = Field(
        256 * 2**20, ge=1, description="Files larger than this are rejected unread."
    )
    passthrough: bool = Field(
        True, description="Store 8-bit grayscale JPEGs that need no change byte for byte."
    )
    verify_passthrough: bool = Field(
        False,
        description="Decode passed-through JPEGs in full (slower); otherwise their header and "
        "marker structure are checked, and they are decoded only when a step needs pixels.",
    )
    chunk_size: int = Field(
        256, ge=1, description="Samples per work unit; a unit is the grain of resume."
    )

    @field_validator("percentiles")
    @classmethod
    def _pct(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"must satisfy 0 <= low < high <= 100, got {list(v)}")
        return v


class NearDedupConfig(_Strict):
    """Near-duplicate removal: embed, search with faiss, cluster, keep one per cluster."""

    enabled: bool = Field(True, description="Remove near-duplicates.")
    embedder: str = Field(
        "thumb", description="`thumb` (built-in, no weights) or `timm:<model-name>`."
    )
    checkpoint: Path | None = Field(
        None, description="Local weights for a timm embedder (else timm's pretrained ones)."
    )
    threshold: float = Field(
        0.988, gt=0, le=1, description="Cosine similarity at or above which two images match."
    )
    scope: Literal["all", "source"] = Field(
        "all", description="Compare images across all sources, or only within each source."
    )
    flat_max: int = Field(
        50_000, ge=0, description="Exact (flat) search up to this many images a group, IVF above."
    )
    nlist: int | None = Field(None, ge=1, description="IVF cells (default ~4 sqrt(n)).")
    nprobe: int = Field(8, ge=1, description="IVF cells searched per query.")
    batch_size: int = Field(64, ge=1, description="Images per batch for timm embedders.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where a timm embedder runs (auto: CUDA when available)."
    )

    @field_validator("embedder")
    @classmethod
    def _embedder(cls, v: str) -> str:
        if v != "thumb" and not (v.startswith("timm:") and len(v) > 5):
            raise ValueError("must be `thumb` or `timm:<model-name>`")
        return v


class DedupConfig(_Strict):
    """Duplicate removal: exact (same stored image), then near (same picture)."""

    exact: bool = Field(True, description="Keep one image per byte-identical stored image.")
    near: NearDedupConfig = NearDedupConfig()


class ShardConfig(_Strict):
    """WebDataset shard layout."""

    prefix: str = Field("infmix", pattern=r"^[A-Za-z0-9_-]+$", description="Shard file prefix.")
    samples_per_shard: int = Field(5000, ge=1, description="Most samples in one shard.")
    max_shard_bytes: int = Field(
        1_000_000_000, ge=65536, description="Most bytes in one shard file (tar framing counted)."
    )
    seed: int = Field(0, description="Seed of the shuffle that mixes sources across shards.")


class BuildConfig(_Strict):
    """A whole corpus build."""

    name: str = Field("infmix", description="Corpus name, written to _info.json.")
    data_root: Path | None = Field(None, description="Base folder for relative source roots.")
    skip_missing: bool = Field(
        False, description="Warn about and skip sources whose root is missing, instead of failing."
    )
    sources: list[Source] = Field(description="Source datasets, in any order.")
    process: ProcessConfig = ProcessConfig()
    dedup: DedupConfig = DedupConfig()
    shards: ShardConfig = ShardConfig()
    _skipped: list[str] = PrivateAttr(default_factory=list)

    def source_root(self, src: _SourceBase) -> Path:
        root = src.root.expanduser()
        if not root.is_absolute() and self.data_root is not None:
            root = self.data_root.expanduser() / root
        return root.resolve()

    def enabled_sources(self) -> list[_SourceBase]:
        return [s for s in self.sources if s.enabled]


def _format_loc(loc: tuple, data: dict) -> str:
    """Pydantic's ('sources', 3, 'video', 'frame_stride') -> 'sources.kaist.frame_stride'."""
    rest = list(loc)
    head: list[str] = []
    if rest[:1] == ["sources"] and len(rest) > 1 and isinstance(rest[1], int):
        items = data.get("sources") or []
        item = items[rest[1]] if rest[1] < len(items) else None
        name = item.get("name") if isinstance(item, dict) else None
        head = ["sources", name if isinstance(name, str) and name else str(rest[1])]
        rest = rest[2:]
        if rest and rest[0] in SOURCE_KINDS:
            rest = rest[1:]  # pydantic's union tag
    return ".".join(head + [str(p) for p in rest])


def _explain(err: ValidationError, data: dict) -> str:
    lines = []
    for e in err.errors():
        key = _format_loc(tuple(e["loc"]), data)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            kind = e["input"].get("kind") if isinstance(e.get("input"), dict) else e.get("input")
            msg = "missing" if kind is None else f"unknown kind {kind!r}"
            msg += "; expected folder, video, imagenet or paired"
            key += ".kind"
        elif "input" in e and e["type"] not in ("missing",):
            msg = f"{msg}, got {e['input']!r}"
        lines.append(f"{key}: {msg}")
    return "invalid config:\n  " + "\n  ".join(lines)


def _set_override(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node: Any = data
    for i, k in enumerate(keys[:-1]):
        if isinstance(node, list):
            node = _list_item(node, k, ".".join(keys[: i + 1]))
        elif isinstance(node, dict):
            if not isinstance(node.get(k), (dict, list)):
                node[k] = {}  # absent, or an empty YAML section (None)
            node = node[k]
        else:
            raise ConfigError(f"override {dotted}: {'.'.join(keys[:i])} is not a section")
    last = keys[-1]
    if isinstance(node, list):
        raise ConfigError(f"override {dotted}: cannot replace a whole source")
    node[last] = value


def _list_item(items: list, k: str, where: str) -> Any:
    if k.isdigit() and int(k) < len(items):
        return items[int(k)]
    for item in items:
        if isinstance(item, dict) and item.get("name") == k:
            return item
    raise ConfigError(f"override {where}: no source named {k!r}")


def _parse_value(raw: str) -> Any:
    """YAML for numbers, booleans, null and lists; anything else is taken literally (so
    `root=/data/set #1` keeps its `#1`, and `@x` is a string, not a YAML error)."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return (
        raw
        if isinstance(value, str) or (value is None and raw.strip() not in ("null", "~", ""))
        else value
    )


def parse_overrides(pairs: list[str]) -> list[tuple[str, Any]]:
    """`a.b=3` -> ("a.b", 3)."""
    out = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r} is not key=value")
        out.append((key.strip(), _parse_value(raw)))
    return out


def read_yaml(path: Path | str) -> dict:
    """A YAML mapping from `path`; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except (UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError("config must be a mapping at the top level")
    return data


def validate(model: type[BaseModel], data: dict, overrides: list[str] | None = None):
    """`data` with `key=value` overrides applied, as `model`; errors name the key."""
    for key, value in parse_overrides(overrides or []):
        _set_override(data, key, value)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_explain(e, data)) from None


def load_config(
    path: Path | str | None,
    overrides: list[str] | None = None,
    *,
    data: dict | None = None,
    check_roots: bool = True,
) -> BuildConfig:
    """Load YAML (or `data`), apply overrides, validate, and check that source roots exist."""
    if data is None:
        data = read_yaml(path)  # type: ignore[arg-type]
    if not isinstance(data, dict):
        raise ConfigError("config must be a mapping at the top level")
    cfg = validate(BuildConfig, data, overrides)
    _check_sources(cfg, check_roots)
    return cfg


def _check_sources(cfg: BuildConfig, check_roots: bool) -> None:
    names = [s.name for s in cfg.sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"sources: names must be unique, repeated: {', '.join(dupes)}")
    for s in cfg.sources:
        if isinstance(s, PairedSource) and (s.thermal_suffix is None) != (s.visible_suffix is None):
            raise ConfigError(
                f"sources.{s.name}: set both thermal_suffix and visible_suffix, or neither"
            )
    if not cfg.enabled_sources():
        raise ConfigError("sources: no enabled source")
    near = cfg.dedup.near
    if near.checkpoint is not None and near.embedder == "thumb":
        raise ConfigError("dedup.near.checkpoint: only a timm embedder takes a checkpoint")
    if check_roots and near.checkpoint is not None and not near.checkpoint.is_file():
        raise ConfigError(f"dedup.near.checkpoint: file does not exist: {near.checkpoint}")
    if not check_roots:
        return
    for s in cfg.enabled_sources():
        root = cfg.source_root(s)
        if root.is_dir():
            continue
        if cfg.skip_missing:
            s.enabled = False
            cfg._skipped.append(f"{s.name} (no folder {root})")
            continue
        raise ConfigError(f"sources.{s.name}.root: folder does not exist: {root}")
    if not cfg.enabled_sources():
        raise ConfigError("sources: no source root exists (all skipped by skip_missing)")


def dump_config(cfg: BuildConfig) -> str:
    """The resolved config as YAML, as saved next to every output."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
