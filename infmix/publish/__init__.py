"""`infmix publish`: a finished build as a Hugging Face Hub dataset repository.

layout.py decides the files (shards in folders, card, json), card.py writes the dataset card,
hub.py uploads. `publish` ties them together; `--dry-run` writes the same files to a folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from infmix.publish.hub import Caller, PublishError, upload
from infmix.publish.layout import finished_build, plan, write_folder

__all__ = ["PublishError", "publish"]


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import validate_repo_id

    owner, _, name = repo_id.partition("/")
    try:
        if not owner or not name or "/" in name:
            raise ValueError("not OWNER/NAME")
        validate_repo_id(repo_id)
    except ValueError as e:  # HFValidationError is one
        raise PublishError(f"--repo-id must be OWNER/NAME, got {repo_id!r} ({e})") from None


def publish(
    out: Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    dry_run: Path | None = None,
    api=None,
    token: str | None = None,
    console: Console | None = None,
    sleep: Callable[[float], None] | None = None,
    files_per_commit: int = 50,
) -> dict:
    """Upload the build in `out` to `repo_id` (or, with `dry_run`, write what would be sent)."""
    console = console or Console(stderr=True)
    out = Path(out).resolve()
    _check_repo_id(repo_id)
    with finished_build(out):
        lay = plan(out, repo_id)
        if lay.unlicensed:
            console.print(
                f"[bold yellow]warning:[/] no licence recorded for {', '.join(lay.unlicensed)}: "
                "the card flags them; set `license:` on each source in the build config",
                highlight=False,
            )
        if dry_run is not None:
            write_folder(lay.entries, Path(dry_run))
            console.print(f"wrote {len(lay.entries)} files to {dry_run} (nothing uploaded)")
            return {"files": len(lay.entries), "sent": 0, "dry_run": str(dry_run)}
        if api is None:
            from huggingface_hub import HfApi, get_token

            token = token or get_token()
            if not token:
                raise PublishError(
                    "no Hugging Face token: set HF_TOKEN, or log in with `hf auth login`"
                )
            api = HfApi(token=token)
        call = Caller(token, console, sleep)
        return upload(lay, repo_id, api, call, private, revision, files_per_commit)
