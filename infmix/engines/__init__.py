"""Executors that run the processing units of a plan; every engine gives the same bytes.

`local` (default): one process or a process pool on this machine. `ray`: Ray tasks on a local
instance or a cluster with a shared filesystem (the optional `ray` extra).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from infmix.errors import InfmixError

ENGINES = ("local", "ray")


def check(engine: str, ray_address: str | None = None) -> None:
    """Fail before any work: an unknown engine, an address without Ray, Ray not installed."""
    if engine not in ENGINES:
        raise InfmixError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if ray_address and engine != "ray":
        raise InfmixError("--ray-address needs --engine ray")
    if engine == "ray":
        from infmix.engines.ray import import_ray

        import_ray()


def runner(
    engine: str, ray_address: str | None, shared: Path, roots: list[Path]
) -> Callable[..., None]:
    """`run_units(fn, jobs, workers, max_pixels, on_done)` of the engine. Every Ray node must
    see `shared` (the work folder) and the source `roots`."""
    check(engine, ray_address)
    if engine == "ray":
        from infmix.engines import ray

        return partial(ray.run_units, address=ray_address, shared=shared, roots=roots)
    from infmix.engines import local

    return local.run_units
