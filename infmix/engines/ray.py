"""The Ray executor: the local engine's units as Ray tasks, on a local instance or a cluster.

Units commit their own files into the work folder, so on a cluster every node must see that
folder and the source roots at the same paths (a shared filesystem) and hold the versions that
decide the stored bytes. Each task checks this before it writes anything: a node with a private
disk would commit units the driver never sees, one without the sources would reject every
image as unreadable.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from PIL import Image

from infmix import atomic, outdir
from infmix.errors import InfmixError

INSTALL = 'pip install "infmix-unip[ray]" (or pip install ".[ray]" in a checkout)'
# units return small dicts; Ray's default would reserve 30% of the machine's memory
LOCAL_OBJECT_STORE = 512 * 2**20
# only for an instance this process starts: no usage reporting, no token file in ~/.ray
LOCAL_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
QUIET = {"logging_level": logging.WARNING, "log_to_driver": False}


def import_ray():
    try:
        import ray
    except ImportError as e:
        raise InfmixError(f"--engine ray needs Ray ({e}): {INSTALL}") from None
    return ray


@contextmanager
def _environ(defaults: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in defaults}
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def session(ray, address: str | None, workers: int | None) -> Iterator[None]:
    """Reuse a Ray the caller initialised (and leave it running); otherwise connect to
    `address`, or start a fresh local instance, and shut it down at the end."""
    if ray.is_initialized():
        yield
        return
    if address:
        try:
            ray.init(address=address, **QUIET)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise InfmixError(f"cannot connect to the Ray cluster at {address}: {e}") from None
        try:
            yield
        finally:
            ray.shutdown()  # disconnects; the cluster stays up
        return
    with _environ(LOCAL_ENV):
        # "local": a fresh instance, even if RAY_ADDRESS points at some cluster
        ray.init(
            address="local",
            num_cpus=workers,
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE,
            **QUIET,
        )
        try:
            yield
        finally:
            ray.shutdown()


@contextmanager
def probe(folder: Path | None) -> Iterator[tuple[str, str] | None]:
    """A file with a random token that every task must read back from `folder`. Its name is
    a temporary's, so a killed build's leftover is removed like any other."""
    if folder is None:
        yield None
        return
    path, token = atomic.tmp_name(Path(folder) / "ray-probe"), secrets.token_hex(16)
    path.write_text(token)
    try:
        yield str(path), token
    finally:
        path.unlink(missing_ok=True)


@cache
def _environment() -> dict:
    return outdir.environment()


def check_node(shared: tuple[str, str] | None, roots: list[str], env: dict) -> None:
    """Raise unless this node reads the driver's probe, has every source root and the
    driver's versions."""
    node = socket.gethostname()
    if shared is not None:
        path, token = shared
        try:
            seen = Path(path).read_text()
        except OSError:
            seen = None
        if seen != token:
            raise InfmixError(
                f"Ray node {node} cannot see the work folder {Path(path).parent}: the ray "
                "engine needs --out and the source roots on a shared filesystem, at the same "
                "paths on every node"
            )
    for root in roots:
        if not os.path.isdir(root):
            raise InfmixError(
                f"Ray node {node} cannot see the source folder {root}: the ray engine needs "
                "the source roots on a shared filesystem, at the same paths on every node"
            )
    mine = _environment()
    if mine != env:
        diff = ", ".join(
            f"{k} {env[k]} here, {mine.get(k)} there" for k in env if env[k] != mine.get(k)
        )
        raise InfmixError(
            f"Ray node {node} has other versions than the driver ({diff}); they change the "
            "stored bytes: install the same environment on every node"
        )


def _run_task(
    fn: Callable[..., dict], job: tuple, max_pixels: int, shared, roots: list[str], env: dict
) -> dict:
    check_node(shared, roots, env)
    Image.MAX_IMAGE_PIXELS = max_pixels  # as the local engine's workers
    return fn(*job)


def _next_result(ray, pending: list, on_done: Callable[[dict], None]) -> list:
    """Wait for one task, hand its result to `on_done`; returns the tasks still pending."""
    (ready,), pending = ray.wait(pending, num_returns=1)
    try:
        result = ray.get(ready)
    except ray.exceptions.RayTaskError as e:
        # the task's own exception (TransientError, OSError...) with its message, not Ray's
        # wrapper; the remote traceback stays attached for INFMIX_DEBUG=1
        if isinstance(e.cause, Exception):
            raise e.cause from e
        raise
    except ray.exceptions.RayError as e:  # a worker or node died, an object was lost
        raise InfmixError(
            f"Ray: {type(e).__name__}: {e} (committed units are kept: run the same command "
            "again to resume)"
        ) from e
    on_done(result)
    return pending


def run_units(
    fn: Callable[..., dict],
    jobs: Iterable[tuple],
    workers: int | None,
    max_pixels: int,
    on_done: Callable[[dict], None],
    address: str | None = None,
    shared: Path | None = None,
    roots: Iterable[Path] = (),
) -> None:
    """Call `fn(*job)` for every job as a Ray task; `on_done` gets each result as it completes.

    Args:
        workers: at most this many units in flight (and the CPUs of a local instance);
            None lets Ray schedule over every CPU it has.
        address: a cluster to connect to (`auto`, `HOST:PORT`, `ray://...`); None starts a
            local instance. A Ray this process already initialised is used as it is.
        shared: a folder every task must see (the work folder), checked on every node
            with a file written there; `roots`: folders (the sources) every node must have if
            the driver has them.
    """
    jobs = list(jobs)
    if not jobs:
        return
    ray = import_ray()
    with session(ray, address, workers), probe(shared) as token:
        task = ray.remote(_run_task)  # units are idempotent: Ray may retry a crashed worker
        roots = [str(r) for r in roots if os.path.isdir(r)]  # what the driver sees
        env, pending = outdir.environment(), []
        # On an error the tasks in flight are left to finish (each commits or drops its own
        # unit atomically) rather than cancelled: cancelling a task as it completes trips an
        # internal check in Ray 2.60 that aborts the driver process.
        for job in jobs:
            if workers and len(pending) >= workers:
                pending = _next_result(ray, pending, on_done)
            pending.append(task.remote(fn, job, max_pixels, token, roots, env))
        while pending:
            pending = _next_result(ray, pending, on_done)
