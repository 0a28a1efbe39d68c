"""The dataset card (README.md) of a published corpus, generated from the build's own files.

YAML front matter for the Hub (a `configs` entry whose `data_files` glob makes
`datasets.load_dataset("OWNER/NAME")` read the shards, licence, sizes, tasks, tags) and a body
with what a reader needs before using the data: per-source counts, licences and citations.
Sources without a licence are named in a warning at the top of the card.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

SHARD_GLOB = "shards/*/*.tar"
TASKS = ["image-feature-extraction", "image-segmentation"]
TAGS = ["infrared", "thermal", "grayscale", "webdataset", "pre-training", "infmix"]
_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")]
_SIZES += [(1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]


@dataclass(frozen=True)
class SourceInfo:
    name: str
    modality: str
    license: str | None
    citation: str | None
    homepage: str | None


def size_category(n: int) -> str:
    for limit, name in _SIZES:
        if n < limit:
            return name
    return "100M<n<1B"


def sources_of(config: dict) -> list[SourceInfo]:
    """The enabled sources of a build's resolved config.yaml."""
    return [
        SourceInfo(s["name"], s["modality"], s.get("license"), s.get("citation"), s.get("homepage"))
        for s in config.get("sources", [])
        if s.get("enabled", True)
    ]


def corpus_license(sources: list[SourceInfo]) -> str:
    """The licence shared by every source, else `other` (the card's table lists each)."""
    found = {s.license for s in sources}
    return found.pop() if len(found) == 1 and None not in found else "other"


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in `text`, so nothing can close it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ").strip()


def render(
    config: dict, stats: dict, num_samples: int, num_shards: int, repo_id: str
) -> tuple[str, list[str]]:
    """The card's text, and the names of the sources that have no licence."""
    sources = sources_of(config)
    name = config.get("name") or "infmix"
    unlicensed = [s.name for s in sources if not s.license]
    front = {
        "pretty_name": name,
        "license": corpus_license(sources),
        "source_datasets": [s.name for s in sources],
        "size_categories": [size_category(num_samples)],
        "task_categories": TASKS,
        "tags": TAGS,
        "configs": [
            {"config_name": "default", "data_files": [{"split": "train", "path": SHARD_GLOB}]}
        ],
    }
    heading = " ".join(str(name).split())
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "", f"# {heading}", ""]
    if unlicensed:
        lines += [
            f"> **Warning: no licence is recorded for {len(unlicensed)} source(s): "
            f"{', '.join(unlicensed)}.** Check each dataset's terms before using or "
            "redistributing these images.",
            "",
        ]
    lines += [
        f"{num_samples:,} grayscale images in {num_shards} WebDataset shards, built with "
        "infmix from local copies of the datasets below: every image "
        "converted to 8-bit grayscale (colour: BT.601 luma; 16-bit thermal: a per-image "
        "percentile stretch), exact and near-duplicates removed, sources shuffled together. "
        "Each sample is `<key>.jpg` (or `.png`) and `<key>.json` (source, original path and "
        "size, conversion).",
        "",
        "```python",
        "import datasets",
        "",
        f'ds = datasets.load_dataset("{repo_id}", split="train", streaming=True)',
        "```",
        "",
        "## Sources",
        "",
        "| source | modality | images kept | removed as duplicates | rejected | licence "
        "| homepage |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    per_source = stats.get("sources", {})
    for s in sources:
        st = per_source.get(s.name, {})
        dropped = st.get("dropped", {})
        dups = sum(v for k, v in dropped.items() if k.endswith("duplicate"))
        lines.append(
            f"| {s.name} | {s.modality} | {st.get('kept', 0):,} | {dups:,} "
            f"| {sum(dropped.values()) - dups:,} | {_cell(s.license) or '**none recorded**'} "
            f"| {_cell(s.homepage)} |"
        )
    cited = [s for s in sources if s.citation]
    if cited:
        lines += ["", "## Citations", ""]
        for s in cited:
            fence = _fence(s.citation)
            lines += [f"**{s.name}**", "", fence, s.citation.strip(), fence, ""]
    missing = [s.name for s in sources if not s.citation]
    if missing:
        lines += ["", f"No citation recorded for: {', '.join(missing)}."]
    return "\n".join(lines).rstrip() + "\n", unlicensed
