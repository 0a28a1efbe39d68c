"""Upload a layout to the Hugging Face Hub: resumable, in several commits, retried.

- The repository is created if missing (`exist_ok`), a `--revision` branch too.
- Files already on the Hub with the same content (LFS sha256, or git blob id for small files)
  are skipped, so a rerun after an interruption sends only what is missing.
- Shards go in commits of at most `files_per_commit` files / `bytes_per_commit` bytes; the card
  and the json files go last, so the card appears once every shard is there.
- Every call is retried on 429 and 5xx (honouring Retry-After) and on network errors, with
  exponential backoff; 401, 403 and 404 stop at once with what to do.
- The token is never printed: error messages are built from status codes and server messages,
  and scrubbed of the token in case a server echoes it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape

from infmix.errors import InfmixError
from infmix.publish.layout import SHARDS, Entry, Layout

FATAL = {
    401: "the token was refused: set HF_TOKEN to a valid token, or log in with `hf auth login`",
    403: "the token may not write to this repository (it needs write access, or the "
    "organisation's permission)",
    404: "the repository or revision was not found: check --repo-id (OWNER/NAME) and --revision",
}
_TRANSPORT = {
    "ConnectionError",
    "ConnectError",
    "TimeoutError",
    "Timeout",
    "TimeoutException",
    "ReadTimeout",
    "RemoteProtocolError",
    "ChunkedEncodingError",
    "TransportError",
}


class PublishError(InfmixError):
    """The upload stopped; the message says why (never with the token in it)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def status_of(e: BaseException) -> int | None:
    code = getattr(getattr(e, "response", None), "status_code", None)
    return code if isinstance(code, int) else None


def _transport(e: BaseException) -> bool:
    return any(c.__name__ in _TRANSPORT for c in type(e).__mro__)


def _retry_after(e: BaseException) -> float | None:
    headers = getattr(getattr(e, "response", None), "headers", None) or {}
    try:
        return max(0.0, float(headers.get("Retry-After")))
    except (TypeError, ValueError):
        return None


@dataclass
class Caller:
    """Runs Hub calls with retries; `sleep` is injectable so tests need not wait."""

    token: str | None
    console: Console
    sleep: Callable[[float], None] | None = None  # default: time.sleep
    tries: int = 6
    base_delay: float = 2.0
    max_delay: float = 60.0
    max_wait: float = 300.0  # a longer Retry-After stops the upload instead of sleeping
    retries: list[tuple[str, int | None]] = field(default_factory=list)

    def scrub(self, text: str) -> str:
        return text.replace(self.token, "***") if self.token else text

    def __call__(self, what: str, fn: Callable):
        for attempt in range(1, self.tries + 1):
            try:
                return fn()
            except Exception as e:
                status = status_of(e)
                if status in FATAL:
                    raise PublishError(f"{what}: HTTP {status}: {FATAL[status]}", status) from None
                if not (status == 429 or (status or 0) >= 500 or _transport(e)):
                    if status is None:
                        raise  # a bug or a local problem, not the Hub's answer
                    message = self.scrub(f"{what}: HTTP {status}: {_server(e)}")
                    raise PublishError(message, status) from None
                if attempt == self.tries:
                    message = f"{what}: gave up after {self.tries} tries: {_describe(e)}"
                    raise PublishError(self.scrub(message), status) from None
                delay = _retry_after(e)
                if delay is not None and delay > self.max_wait:
                    message = (
                        f"{what}: the Hub asks to wait {delay:.0f} s ({_describe(e)}); run the "
                        "same command later: files already sent are skipped"
                    )
                    raise PublishError(self.scrub(message), status) from None
                if delay is None:
                    delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
                self.retries.append((what, status))
                note = self.scrub(f"{what} in {delay:.0f} s ({_describe(e)})")
                self.console.print("[yellow]retry[/]", escape(note), highlight=False)
                (self.sleep or time.sleep)(delay)
        raise AssertionError("unreachable")


def _server(e: BaseException) -> str:
    return getattr(e, "server_message", None) or type(e).__name__


def _describe(e: BaseException) -> str:
    status = status_of(e)
    return f"HTTP {status}: {_server(e)}" if status else type(e).__name__


def sha256_of(e: Entry) -> str:
    h = hashlib.sha256()
    if e.local is None:
        h.update(e.data)
    else:
        with open(e.local, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()


def git_blob_id(e: Entry) -> str:
    h = hashlib.sha1(b"blob %d\x00" % e.size)
    h.update(e.data if e.local is None else e.local.read_bytes())
    return h.hexdigest()


def on_hub(e: Entry, remote) -> bool:
    """Whether the remote file has this entry's content."""
    if remote is None or getattr(remote, "size", None) != e.size:
        return False
    lfs = getattr(remote, "lfs", None)
    if lfs is not None:
        sha = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
        return sha == sha256_of(e)
    return getattr(remote, "blob_id", None) == git_blob_id(e)


def batches(entries: list[Entry], max_files: int, max_bytes: int) -> list[list[Entry]]:
    out: list[list[Entry]] = []
    size = 0
    for e in entries:
        if not out or len(out[-1]) >= max_files or (out[-1] and size + e.size > max_bytes):
            out.append([])
            size = 0
        out[-1].append(e)
        size += e.size
    return out


def upload(
    lay: Layout,
    repo_id: str,
    api,
    call: Caller,
    private: bool = False,
    revision: str | None = None,
    files_per_commit: int = 50,
    bytes_per_commit: int = 20 * 2**30,
) -> dict:
    """Send what the Hub does not have yet; returns counts of what was sent and skipped."""
    kind = {"repo_type": "dataset"}
    call(
        "create repository",
        lambda: api.create_repo(repo_id, private=private, exist_ok=True, **kind),
    )
    if revision and revision != "main":
        call(
            "create branch",
            lambda: api.create_branch(repo_id, branch=revision, exist_ok=True, **kind),
        )
    try:
        tree = call(
            "list files",
            lambda: list(api.list_repo_tree(repo_id, recursive=True, revision=revision, **kind)),
        )
    except PublishError as e:
        if e.status != 404:  # a repository without a commit yet has no tree
            raise
        tree = []
    remote = {f.path: f for f in tree if hasattr(f, "size")}
    todo_shards = [e for e in lay.shards if not on_hub(e, remote.get(e.path))]
    todo_meta = [e for e in lay.metadata if not on_hub(e, remote.get(e.path))]
    ours = {e.path for e in lay.entries}
    # shards of an earlier publish that this build does not have: removed with the card, so
    # the repository never lists more shards than its _info.json
    stale = sorted(p for p in remote if p.startswith(SHARDS) and p not in ours)
    groups: list[list] = batches(todo_shards, files_per_commit, bytes_per_commit)
    if todo_meta or stale:
        groups.append([*todo_meta, *stale])
    skipped = len(lay.entries) - len(todo_shards) - len(todo_meta)
    call.console.print(
        f"{repo_id}: {len(lay.entries)} files, {skipped} already on the Hub, "
        f"{len(todo_shards) + len(todo_meta)} to send, {len(stale)} old shards to delete, "
        f"in {len(groups)} commit(s)",
        highlight=False,
    )
    for k, group in enumerate(groups, 1):
        message = f"infmix publish: part {k}/{len(groups)} ({len(group)} files)"

        def commit(group=group, message=message):
            return api.create_commit(
                repo_id,
                operations=_operations(group),
                commit_message=message,
                revision=revision,
                **kind,
            )

        call(f"commit {k}/{len(groups)}", commit)
        call.console.print(f"committed part {k}/{len(groups)}", highlight=False)
    return {
        "files": len(lay.entries),
        "sent": len(todo_shards) + len(todo_meta),
        "skipped": skipped,
        "deleted": len(stale),
        "commits": len(groups),
        "retries": len(call.retries),
    }


def _operations(group: list) -> list:
    """Fresh commit operations for a group of entries and stale paths (each try needs new
    ones: they carry upload state)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    return [
        CommitOperationDelete(path_in_repo=e)
        if isinstance(e, str)
        else CommitOperationAdd(
            path_in_repo=e.path,
            path_or_fileobj=str(e.local) if e.local is not None else e.data,
        )
        for e in group
    ]
