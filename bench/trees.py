"""Tree shapes, and a real cellsd tree running inside this process.

Every cell is a full ``cellsd.service.make_service`` service tree (links
over real loopback TCP with mutual TLS, the local API listener, the state
pusher) started in this process's reactor. One process measures the
routing code alone: every hop's CPU is spent on the same core, so a
throughput figure is the inverse of the CPU one call costs the whole tree.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.internet.defer import Deferred

from cellsd.cli.demo import CellFiles, write_tree
from cellsd.config import load_settings
from cellsd.service import CellService, freeze_startup_objects, make_service

Shape = dict[str, list[str]]

TOP = "api-cell"


def chain_shape(hops: int) -> Shape:
    """api-cell -> cell1 -> ... -> cell<hops>."""
    names = [TOP, *(f"cell{i}" for i in range(1, hops + 1))]
    return {parent: [child] for parent, child in itertools.pairwise(names)}


def fanout_shape(count: int, fanout: int) -> Shape:
    """``count`` cells filled breadth first, at most ``fanout`` children each."""
    shape: Shape = {TOP: []}
    order = [TOP]
    n = 1
    parent_index = 0
    while n < count:
        parent = order[parent_index]
        if len(shape[parent]) == fanout:
            parent_index += 1
            continue
        n += 1
        name = f"cell{n - 1}"
        shape[parent].append(name)
        shape[name] = []
        order.append(name)
    return {p: kids for p, kids in shape.items() if kids}


def paths_of(shape: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Each cell's full path from the top (``api-cell!cell1!cell2``)."""
    paths = {TOP: TOP}
    todo = [TOP]
    while todo:
        parent = todo.pop()
        for child in shape.get(parent, ()):
            paths[child] = f"{paths[parent]}!{child}"
            todo.append(child)
    return paths


async def _ready(top: MultiService) -> None:
    """Wait for every part of a cell's service tree that has a ``ready``."""
    for part in top:
        ready = getattr(part, "ready", None)
        if isinstance(ready, Deferred):
            await ready


class CellTree:
    """A tree of real cells, all in this process."""

    def __init__(
        self,
        reactor: Any,
        base: Path,
        shape: Shape,
        extra: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.reactor = reactor
        self.base = base
        self.shape = shape
        # No periodic work (state pushes, healing) while measuring.
        settings: dict[str, dict[str, Any]] = {"cells": {"update_interval": 3600.0}}
        for section, values in (extra or {}).items():
            settings.setdefault(section, {}).update(values)
        self.files: dict[str, CellFiles] = write_tree(base, shape, settings)
        self.services: dict[str, CellService] = {}

    @property
    def pki(self) -> Path:
        return self.base / "pki"

    def cell(self, name: str = TOP) -> Any:
        return self.services[name].cell

    async def start(self, timeout: float = 30.0) -> None:
        # One cell at a time, each once its parts say they are ready (the
        # store, once migrated): several SQLite stores migrating at once on
        # their own threads in one process have crashed the interpreter.
        for name, files in self.files.items():
            service = make_service(load_settings(files.config), self.reactor)
            service.startService()
            self.services[name] = service
            await _ready(service)
        deadline = self.reactor.seconds() + timeout
        while not self._all_up():
            if self.reactor.seconds() > deadline:
                raise RuntimeError(f"cellsd tree under {self.base} did not come up")
            await task.deferLater(self.reactor, 0.05, lambda: None)
        # Let the state exchanged on link-up settle.
        await task.deferLater(self.reactor, 0.5, lambda: None)
        # As `cellsd run` does once its service tree is up.
        freeze_startup_objects()

    def _all_up(self) -> bool:
        for service in self.services.values():
            states = service.cell.links.link_states()
            for side in ("parents", "children"):
                if not all(s["up"] for s in states[side].values()):
                    return False
        return True

    async def stop(self) -> None:
        for service in reversed(self.services.values()):
            await defer.maybeDeferred(service.stopService)
        self.services.clear()
        await task.deferLater(self.reactor, 0.2, lambda: None)
