"""`infmix publish`: the card, the dry-run folder (read back with `datasets`), and the upload
against a stand-in HfApi that records calls and injects 429/500/401 and network errors."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from huggingface_hub import DatasetCard
from huggingface_hub.errors import HfHubHTTPError
from PIL import Image
from typer.testing import CliRunner

from infmix import outdir
from infmix.build import build
from infmix.cli import app
from infmix.config import load_config
from infmix.errors import InfmixError
from infmix.publish import PublishError, publish
from infmix.publish import layout as layout_mod
from tests.conftest import demo_config_dict

TOKEN = "hf_NotARealTokenButSecret0123456789"


@pytest.fixture(scope="module")
def corpus(demo_root, tmp_path_factory) -> Path:
    data = demo_config_dict(demo_root, near=True)
    for s in data["sources"]:
        if s["name"] != "coco":
            s["license"] = "cc-by-4.0"
        else:  # one source without a licence
            s.pop("license", None)
    data["sources"][0]["citation"] = "@misc{irstill,\n  title={IR still | demo}\n}"
    data["sources"][0]["homepage"] = "https://example.org/ir"
    out = tmp_path_factory.mktemp("corpus") / "out"
    build(load_config(None, data=data), out, workers=1)
    return out


@pytest.fixture(scope="module")
def dry(corpus, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("dry") / "repo"
    publish(corpus, "me/infmix-demo", dry_run=d)
    return d


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def tar_samples(folder: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for shard in sorted(folder.rglob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                key, ext = m.name.split(".", 1)
                out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


# ---------------------------------------------------------------- card and layout


def test_card_front_matter_parses_with_huggingface_hub(dry, corpus):
    card = DatasetCard((dry / "README.md").read_text())
    data = card.data.to_dict()
    stats = json.loads((corpus / "stats.json").read_text())
    assert data["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "shards/*/*.tar"}]}
    ]
    assert data["license"] == "other"  # the sources do not share one licence
    assert data["pretty_name"] == "infmix-demo"
    assert "infrared" in data["tags"]
    assert data["size_categories"] == ["n<1K"] and stats["total"]["kept"] < 1000
    assert data["task_categories"] and sorted(data["source_datasets"]) == sorted(stats["sources"])


def test_card_body_has_a_row_per_source_with_counts_licence_citation(dry, corpus):
    text = (dry / "README.md").read_text()
    stats = json.loads((corpus / "stats.json").read_text())
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("| source")
    }
    assert set(rows) == set(stats["sources"])
    for name, s in stats["sources"].items():
        dups = sum(v for k, v in s["dropped"].items() if k.endswith("duplicate"))
        rejected = sum(s["dropped"].values()) - dups
        assert rows[name][1:4] == [str(s["kept"]), str(dups), str(rejected)]
    assert rows["ir_video"][2] == "9"  # the demo's near-duplicate video frames
    assert rows["ir_still"][4] == "cc-by-4.0" and rows["coco"][4] == "**none recorded**"
    assert rows["ir_still"][5] == "https://example.org/ir"
    assert "Warning: no licence is recorded for 1 source(s): coco" in text
    assert "@misc{irstill,\n  title={IR still | demo}\n}" in text


def test_common_licence_becomes_the_cards_licence(corpus, tmp_path, monkeypatch):
    import yaml

    cfg = yaml.safe_load((corpus / "config.yaml").read_text())
    for s in cfg["sources"]:
        s["license"] = "cc-by-4.0"
    from infmix.publish.card import render

    text, unlicensed = render(cfg, json.loads((corpus / "stats.json").read_text()), 5, 1, "a/b")
    assert DatasetCard(text).data.license == "cc-by-4.0" and unlicensed == []
    assert "Warning" not in text


def test_dry_run_folder_layout(dry, corpus):
    files = files_of(dry)
    info = json.loads(files["_info.json"])
    names = info["splits"]["train"]["filenames"]
    assert set(files) == {"README.md", "_info.json", "stats.json", *names}
    assert all(n.startswith("shards/0000/") for n in names)
    built = json.loads((corpus / "_info.json").read_text())["splits"]["train"]
    for rel, new in zip(built["filenames"], names, strict=True):
        assert files[new] == (corpus / rel).read_bytes()  # the shards, unchanged
    assert info["splits"]["train"]["num_samples"] == built["num_samples"]
    stats = json.loads(files["stats.json"])
    assert "out" not in stats and str(corpus) not in files["stats.json"].decode()


def test_shards_are_split_into_folders_of_at_most_the_limit(corpus, tmp_path, monkeypatch):
    assert layout_mod.shard_path(9_999, "a.tar") == "shards/0000/a.tar"
    assert layout_mod.shard_path(10_000, "a.tar") == "shards/0001/a.tar"
    monkeypatch.setattr(layout_mod, "FILES_PER_FOLDER", 1)
    publish(corpus, "me/x", dry_run=tmp_path / "d")
    folders = [p for p in (tmp_path / "d" / "shards").iterdir()]
    assert len(folders) == 2 and all(len(list(f.iterdir())) == 1 for f in folders)
    import datasets

    ds = datasets.load_dataset(str(tmp_path / "d"), split="train", cache_dir=str(tmp_path / "c"))
    assert len(ds) == len(tar_samples(corpus / "shards"))


def test_dry_run_refuses_a_non_empty_folder_and_unfinished_builds(corpus, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(InfmixError, match="not empty"):
        publish(corpus, "me/x", dry_run=tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    with pytest.raises(InfmixError, match="not an infmix build"):
        publish(tmp_path, "me/x", dry_run=tmp_path / "d")
    with pytest.raises(PublishError, match="OWNER/NAME"):
        publish(corpus, "no-slash", dry_run=tmp_path / "d")


def test_a_build_in_progress_is_not_published(corpus, tmp_path):
    import fcntl

    with open(corpus / outdir.LOCK) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with pytest.raises(InfmixError, match="writing to"):
                publish(corpus, "me/x", dry_run=tmp_path / "d")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ---------------------------------------------------------------- datasets compatibility


@pytest.mark.parametrize("streaming", [False, True])
def test_dry_run_folder_loads_with_datasets(dry, tmp_path, streaming):
    import datasets

    ds = datasets.load_dataset(
        str(dry), split="train", streaming=streaming, cache_dir=str(tmp_path / "cache")
    )
    rows = list(ds)
    expected = tar_samples(dry)
    assert (
        len(rows)
        == len(expected)
        == json.loads((dry / "_info.json").read_text())["splits"]["train"]["num_samples"]
    )
    for row in rows:
        sample = expected[row["__key__"]]
        img = row["jpg"]
        assert img.mode == "L"
        ref = np.asarray(Image.open(io.BytesIO(sample["jpg"])))
        assert np.array_equal(np.asarray(img), ref)
        assert row["json"] == json.loads(sample["json"])


# ---------------------------------------------------------------- upload (stand-in HfApi)


def http_error(status: int, message: str = "", headers: dict | None = None) -> HfHubHTTPError:
    response = SimpleNamespace(status_code=status, headers=headers or {}, request=None)
    return HfHubHTTPError(f"{status} Client Error", response=response, server_message=message)


class FakeHub:
    """Records calls; `fail[method]` is a list of exceptions raised by the next calls."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.files: dict[str, bytes] = {}
        self.sent: list[str] = []
        self.fail: dict[str, list[BaseException]] = {}

    def _enter(self, name: str, **kw) -> None:
        self.calls.append((name, kw))
        if self.fail.get(name):
            raise self.fail[name].pop(0)

    def create_repo(self, repo_id, **kw):
        self._enter("create_repo", repo_id=repo_id, **kw)

    def create_branch(self, repo_id, **kw):
        self._enter("create_branch", repo_id=repo_id, **kw)

    def list_repo_tree(self, repo_id, **kw):
        self._enter("list_repo_tree", repo_id=repo_id, **kw)
        for path, data in self.files.items():
            lfs = {"sha256": hashlib.sha256(data).hexdigest()} if path.endswith(".tar") else None
            blob = hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()
            yield SimpleNamespace(path=path, size=len(data), blob_id=blob, lfs=lfs)

    def create_commit(self, repo_id, operations, **kw):
        self._enter("create_commit", repo_id=repo_id, paths=[o.path_in_repo for o in operations])
        for op in operations:
            if type(op).__name__ == "CommitOperationDelete":
                self.files.pop(op.path_in_repo)
                continue
            src = op.path_or_fileobj
            data = Path(src).read_bytes() if isinstance(src, str) else bytes(src)
            self.files[op.path_in_repo] = data
            self.sent.append(op.path_in_repo)


def run_upload(corpus, hub, console_file=None, **kw):
    from rich.console import Console

    sleeps: list[float] = []
    console = Console(file=console_file or io.StringIO(), width=200)
    result = publish(
        corpus, "me/infmix-demo", api=hub, token=TOKEN, console=console, sleep=sleeps.append, **kw
    )
    return result, sleeps


def test_upload_sends_exactly_the_dry_run_files(corpus, dry):
    hub = FakeHub()
    result, sleeps = run_upload(corpus, hub, private=True)
    assert hub.files == files_of(dry)
    assert sorted(hub.sent) == sorted(hub.files)  # each once
    assert hub.calls[0] == (
        "create_repo",
        {"repo_id": "me/infmix-demo", "private": True, "exist_ok": True, "repo_type": "dataset"},
    )
    commits = [kw["paths"] for name, kw in hub.calls if name == "create_commit"]
    assert set(commits[-1]) == {"README.md", "_info.json", "stats.json"}  # the card comes last
    assert result == {
        "files": 5,
        "sent": 5,
        "skipped": 0,
        "deleted": 0,
        "commits": 2,
        "retries": 0,
    }
    assert sleeps == []


def test_429_and_500_are_retried_with_backoff(corpus):
    hub = FakeHub()
    hub.fail["create_repo"] = [http_error(500, "boom")]
    hub.fail["create_commit"] = [
        http_error(429, "slow down", {"Retry-After": "7"}),
        http_error(503),
    ]
    result, sleeps = run_upload(corpus, hub)
    assert sleeps == [2.0, 7.0, 4.0]  # backoff, then the server's Retry-After, then backoff
    assert sorted(hub.sent) == sorted(hub.files) and len(hub.files) == 5
    assert result["retries"] == 3


@pytest.mark.parametrize("status", [401, 403, 404])
def test_auth_and_missing_repo_fail_fast(corpus, status):
    hub = FakeHub()
    hub.fail["create_commit"] = [http_error(status, "nope")]
    with pytest.raises(PublishError, match=f"HTTP {status}") as e:
        run_upload(corpus, hub)
    assert [n for n, _ in hub.calls].count("create_commit") == 1 and hub.sent == []
    assert ("HF_TOKEN" in str(e.value)) == (status == 401)


def test_interrupted_upload_resumes_without_resending(corpus):
    hub = FakeHub()
    real_commit = hub.create_commit
    state = {"commits": 0}

    def flaky_commit(repo_id, operations, **kw):  # one commit lands, then the network is down
        if state["commits"] >= 1:
            hub.calls.append(("create_commit", {"failed": True}))
            raise ConnectionError("network down")
        state["commits"] += 1
        return real_commit(repo_id, operations, **kw)

    hub.create_commit = flaky_commit
    with pytest.raises(PublishError, match="gave up after 6 tries"):
        run_upload(corpus, hub, files_per_commit=1)
    assert len(hub.sent) == 1 and hub.sent[0].endswith(".tar")
    hub.create_commit = real_commit  # the network is back
    result, _ = run_upload(corpus, hub, files_per_commit=1)
    assert result["skipped"] == 1 and result["sent"] == 4
    assert sorted(hub.sent) == sorted(hub.files) and len(hub.sent) == 5  # nothing twice


def test_revision_creates_the_branch_and_commits_to_it(corpus):
    hub = FakeHub()
    run_upload(corpus, hub, revision="v1")
    names = [n for n, _ in hub.calls]
    assert names[:3] == ["create_repo", "create_branch", "list_repo_tree"]
    assert hub.calls[1][1]["branch"] == "v1"


def test_token_never_appears_in_any_output(corpus, monkeypatch, capsys, caplog):
    """Through the CLI, with the token in HF_TOKEN and a server that echoes it back."""
    import huggingface_hub

    hub = FakeHub()
    hub.fail["create_repo"] = [http_error(500, f"bad header Bearer {TOKEN}")]
    hub.fail["create_commit"] = [http_error(418, f"teapot saw {TOKEN}")]
    seen = {}

    def fake_api(token=None):
        seen["token"] = token
        return hub

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(huggingface_hub, "HfApi", fake_api)
    monkeypatch.setattr("infmix.publish.hub.time.sleep", lambda s: None)
    result = CliRunner().invoke(app, ["publish", str(corpus), "--repo-id", "me/x"])
    assert result.exit_code == 1
    assert seen["token"] == TOKEN  # it was used...
    out = result.output + capsys.readouterr().err + caplog.text + str(result.exception)
    assert "HTTP 418" in out and "***" in out
    assert TOKEN not in out  # ...and never shown


def test_no_token_is_a_clear_error(corpus, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    result = CliRunner().invoke(app, ["publish", str(corpus), "--repo-id", "me/x"])
    assert result.exit_code == 1 and "no Hugging Face token" in result.output


def test_cli_dry_run(corpus, tmp_path):
    result = CliRunner().invoke(
        app, ["publish", str(corpus), "--repo-id", "me/x", "--dry-run", str(tmp_path / "d")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / "README.md").is_file() and "no licence recorded" in result.output


def test_list_404_on_a_new_repository_means_nothing_there(corpus):
    hub = FakeHub()
    hub.fail["list_repo_tree"] = [http_error(404, "empty")]
    result, _ = run_upload(corpus, hub)
    assert result["sent"] == 5


# ---------------------------------------------------------------- the real HfApi, local server


@pytest.fixture
def local_hub():
    """An HTTP server on 127.0.0.1 that answers every request with `status`."""
    import http.server
    import threading

    state = {"status": 401, "auth": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            state["auth"].append(self.headers.get("authorization"))
            self.rfile.read(int(self.headers.get("content-length") or 0))
            body = json.dumps({"error": f"fake {state['status']}"}).encode()
            self.send_response(state["status"])
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_HEAD = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()


@pytest.mark.parametrize("status", [401, 403, 500])
def test_real_hfapi_errors_are_classified(corpus, local_hub, status):
    from huggingface_hub import HfApi

    endpoint, state = local_hub
    state["status"] = status
    out = io.StringIO()
    with pytest.raises(PublishError) as e:
        run_upload(corpus, HfApi(endpoint=endpoint, token=TOKEN), console_file=out)
    assert e.value.status == status
    assert f"Bearer {TOKEN}" in state["auth"]  # the token was sent...
    assert TOKEN not in str(e.value) + out.getvalue()  # ...and never shown
    if status == 500:
        assert "gave up after 6 tries" in str(e.value)
    else:
        assert "create repository" in str(e.value)


# ---------------------------------------------------------------- review findings


def test_republishing_a_smaller_build_deletes_the_old_shards(corpus, tmp_path, monkeypatch):
    hub = FakeHub()
    monkeypatch.setattr(layout_mod, "FILES_PER_FOLDER", 1)  # other paths than the default
    run_upload(corpus, hub)
    old = {p for p in hub.files if p.startswith("shards/")}
    monkeypatch.setattr(layout_mod, "FILES_PER_FOLDER", 10_000)
    result, _ = run_upload(corpus, hub)
    assert result["deleted"] == len(old) - 1  # shards/0000/infmix-000000.tar is still there
    info = json.loads(hub.files["_info.json"])
    assert sorted(p for p in hub.files if p.endswith(".tar")) == sorted(
        info["splits"]["train"]["filenames"]
    )


def test_published_stats_name_no_local_path(corpus, dry):
    stats = json.loads((dry / "stats.json").read_text())
    assert not {"out", "warnings", "skipped_sources"} & set(stats)
    assert "/" not in json.dumps({k: v for k, v in stats.items() if k != "sources"})


def test_an_empty_build_is_not_published(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    (root / "junk.jpg").write_bytes(b"not an image")
    cfg = load_config(
        None,
        data={"sources": [{"name": "s", "kind": "folder", "root": str(root), "modality": "rgb"}]},
    )
    with pytest.raises(InfmixError, match="no image was kept"):
        build(cfg, tmp_path / "out", workers=1)
    with pytest.raises(InfmixError, match="nothing to publish"):
        publish(tmp_path / "out", "me/x", dry_run=tmp_path / "d")


def test_invalid_repo_id_is_a_clear_error(corpus, tmp_path):
    result = CliRunner().invoke(
        app, ["publish", str(corpus), "--repo-id", "me/my corpus", "--dry-run", str(tmp_path)]
    )
    assert result.exit_code == 1 and "--repo-id must be OWNER/NAME" in result.output
    assert "Traceback" not in result.output


def test_citation_with_backticks_stays_in_its_block(corpus):
    import yaml

    from infmix.publish.card import render

    cfg = yaml.safe_load((corpus / "config.yaml").read_text())
    cfg["sources"][0]["citation"] = "see ```code```\n# not a heading"
    cfg["name"] = "two\nlines"
    text, _ = render(cfg, json.loads((corpus / "stats.json").read_text()), 5, 1, "a/b")
    assert "````\nsee ```code```\n# not a heading\n````" in text
    assert "# two lines\n" in text


def test_server_text_is_printed_as_it_is(corpus):
    hub = FakeHub()
    hub.fail["create_repo"] = [http_error(500, "closing [/body] and [apache-2.0, mit]")]
    out = io.StringIO()
    run_upload(corpus, hub, console_file=out)
    assert "closing [/body] and [apache-2.0, mit]" in out.getvalue()


def test_a_long_retry_after_stops_instead_of_sleeping(corpus):
    hub = FakeHub()
    hub.fail["create_commit"] = [http_error(429, "quota", {"Retry-After": "86400"})]
    with pytest.raises(PublishError, match="asks to wait 86400 s"):
        run_upload(corpus, hub)


def test_dry_run_shards_are_read_only(dry):
    import os

    shard = next(dry.rglob("*.tar"))
    assert not os.access(shard, os.W_OK) or os.geteuid() == 0
    assert shard.stat().st_mode & 0o222 == 0
