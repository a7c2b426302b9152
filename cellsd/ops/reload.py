"""Changing a running cell's configuration: SIGHUP, or ``reload()`` in the
manhole.

A reload reads the cell's TOML file again and checks it as at start (a bad
file is refused with the :class:`~cellsd.errors.ConfigError` naming the key,
and nothing changes), compares it with the running settings, and applies
what can change without a restart, keeping every healthy link and every
call in flight:

* **A neighbour added** (``[[parents]]`` or ``[[children]]``) is *joining*:
  health "disabled" with the reason "joining: …" (:mod:`cellsd.links.health`),
  so no call is sent to it and the scheduler does not pick it. It is enabled
  the moment its first link is up (both sides have accepted each other's
  certificate); a parent is dialed at once, a child accepted from then on.
* **A neighbour removed** leaves the state at once (nothing is routed to it
  any more) and is refused new links; its live links are closed once every
  call in flight on them has been answered, or after the longest a call may
  wait (``[cells] call_timeout`` / ``[api] call_timeout``). A child that
  still has live instances at or below it in this cell's store is not
  removed: the reload is refused with
  :class:`~cellsd.errors.CellStillOwnsInstances` (nothing changes) unless it
  is forced.
* **``enabled = false`` / ``true``** on a neighbour disables or enables it
  (health "disabled", no calls, not scheduled); its link is left as it is.
  Weights change at once.
* **New certificate, key or CA** (``[tls]``, new paths or new contents):
  checked first (the key must match the certificate, the certificate must
  come from the CA and name this cell), then used for every new connection,
  dialed or accepted. Links already up keep their TLS session.
* Everything else (the cell's name, listen endpoints, the store, the API,
  a parent's endpoint, …) needs a restart: the report lists those keys,
  and the running cell keeps its old values.

Reloads run one at a time; each logs what it changed and returns a
:class:`ReloadReport`.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application import service
from twisted.internet.defer import Deferred, DeferredLock, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from cellsd.config import Neighbour, Settings, load_settings
from cellsd.errors import CellsError, CellStillOwnsInstances, ConfigError
from cellsd.links.neighbours import DISABLED_REASON
from cellsd.links.tls import certificate_names, changed_parts, load_tls, match_peer

if TYPE_CHECKING:
    from cellsd.service import Cell

log = Logger(namespace="cellsd.ops.reload")

#: Sections applied online; every other difference needs a restart.
_ONLINE = frozenset({"parents", "children", "tls", "config_path"})


def _label(n: Neighbour) -> str:
    return f"{'parent' if n.is_parent else 'child'} {n.name}"


@attrs.define
class ReloadReport:
    """What a reload changed (each neighbour as ``"child NAME"`` or
    ``"parent NAME"``), and what it could not change without a restart."""

    config_path: str
    added: list[str] = attrs.field(factory=list)
    removed: list[str] = attrs.field(factory=list)
    enabled: list[str] = attrs.field(factory=list)
    disabled: list[str] = attrs.field(factory=list)
    reweighted: list[str] = attrs.field(factory=list)
    #: The ``[tls]`` keys whose file or contents changed.
    tls: list[str] = attrs.field(factory=list)
    #: Dotted keys that differ from the running cell's and need a restart.
    needs_restart: list[str] = attrs.field(factory=list)
    #: Live links closed with the removed neighbours.
    links_closed: int = 0

    @property
    def changed(self) -> bool:
        return any(
            (self.added, self.removed, self.enabled, self.disabled, self.reweighted, self.tls)
        )

    def summary(self) -> str:
        parts = [
            f"{what}: {', '.join(items)}"
            for what, items in (
                ("added (joining until their link is up)", self.added),
                ("removed", self.removed),
                ("enabled", self.enabled),
                ("disabled", self.disabled),
                ("new weights", self.reweighted),
                ("new TLS material for new connections", self.tls),
            )
            if items
        ]
        if not parts:
            parts.append("no change applied")
        if self.needs_restart:
            parts.append(f"needs a restart to change: {', '.join(self.needs_restart)}")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class SettingsDiff:
    """The neighbour changes between two settings, what needs a restart,
    and the settings the cell runs with once the online part is applied."""

    added: tuple[Neighbour, ...]
    removed: tuple[Neighbour, ...]
    enabled: tuple[Neighbour, ...]
    disabled: tuple[Neighbour, ...]
    reweighted: tuple[Neighbour, ...]
    needs_restart: tuple[str, ...]
    applied: Settings


def _differing_keys(name: str, old: Any, new: Any) -> list[str]:
    """The dotted keys under section ``name`` whose values differ."""
    if old == new:
        return []
    if attrs.has(type(old)) and type(old) is type(new):
        fields = attrs.fields(type(old))
        keys = [f"{name}.{f.name}" for f in fields if getattr(old, f.name) != getattr(new, f.name)]
        return keys or [name]
    return [name]


def diff_settings(old: Settings, new: Settings) -> SettingsDiff:
    """Compare the running settings with newly read ones (pure; the TLS
    files' contents are compared by :func:`reload_config`)."""
    restart: list[str] = []
    for field in attrs.fields(Settings):
        if field.name not in _ONLINE:
            name = field.name
            restart += _differing_keys(name, getattr(old, name), getattr(new, name))
    running = {(n.name, n.is_parent): n for n in old.neighbours}
    wanted = {(n.name, n.is_parent): n for n in new.neighbours}
    for index, n in enumerate(new.parents):
        if n.name == old.cell.name:
            raise ConfigError(f"parents[{index}].name", f"{n.name!r} is this cell's running name")
    for index, n in enumerate(new.children):
        if n.name == old.cell.name:
            raise ConfigError(f"children[{index}].name", f"{n.name!r} is this cell's running name")
    # A parent's endpoint is dialed by a running service: keep the old one.
    parents = []
    for n in new.parents:
        before = running.get((n.name, True))
        if before is not None and before.endpoint != n.endpoint:
            restart.append(f"parents[{n.name}].endpoint")
            n = attrs.evolve(n, endpoint=before.endpoint)
        parents.append(n)
    kept = [(running[k], n) for k, n in wanted.items() if k in running]
    return SettingsDiff(
        added=tuple(n for k, n in wanted.items() if k not in running),
        removed=tuple(n for k, n in running.items() if k not in wanted),
        enabled=tuple(n for before, n in kept if n.enabled and not before.enabled),
        disabled=tuple(n for before, n in kept if before.enabled and not n.enabled),
        reweighted=tuple(
            n
            for before, n in kept
            if (before.weight_offset, before.weight_scale) != (n.weight_offset, n.weight_scale)
        ),
        needs_restart=tuple(restart),
        applied=attrs.evolve(
            old,
            parents=tuple(parents),
            children=new.children,
            tls=new.tls,
            config_path=new.config_path,
        ),
    )


async def reload_config(
    cell: Cell, path: str | Path | None = None, *, force: bool = False
) -> ReloadReport:
    """Read ``path`` (default: the file the cell was started from) and apply
    it to the running ``cell`` as the module doc says.

    Raises ConfigError (the file, or its TLS files, are not valid) or
    CellStillOwnsInstances (``force`` not given) before anything is applied.
    Returns once removed neighbours' links are closed.
    """
    path = path or cell.settings.config_path
    if path is None:
        raise ConfigError("config", "this cell was not started from a file; give the path")
    new = load_settings(path)
    old = cell.settings
    diff = diff_settings(old, new)
    material = load_tls(new.tls.ca, new.tls.cert, new.tls.key)
    own = material.own.original.to_cryptography()
    if match_peer(own, [old.cell.name]) is None:
        raise ConfigError(
            "tls.cert",
            f"{new.tls.cert} names {certificate_names(own)}, not this cell ({old.cell.name!r})",
        )
    links = cell.links
    tls_keys = [f"tls.{part}" for part in changed_parts(links.tls.material, material)]
    if not force and cell.store is not None:
        for n in diff.removed:
            if n.is_parent:
                continue
            count = await cell.store.instance_count_in_subtree(f"{old.cell.name}!{n.name}")
            if count:
                raise CellStillOwnsInstances(cell_name=n.name, count=count)

    # Nothing is applied before this point; from here on nothing is refused.
    if tls_keys:
        links.set_tls(material)
    cell.state.set_neighbours(diff.applied.neighbours)
    for n in diff.added:
        links.add_neighbour(n)
    for n in diff.enabled:
        links.set_disabled(n.name, n.is_parent, None)
    for n in diff.disabled:
        links.set_disabled(n.name, n.is_parent, DISABLED_REASON)
    cell.settings = diff.applied
    report = ReloadReport(
        config_path=str(new.config_path or path),
        added=[_label(n) for n in diff.added],
        removed=[_label(n) for n in diff.removed],
        enabled=[_label(n) for n in diff.enabled],
        disabled=[_label(n) for n in diff.disabled],
        reweighted=[_label(n) for n in diff.reweighted],
        tls=tls_keys,
        needs_restart=list(diff.needs_restart),
    )
    grace = max(old.cells.call_timeout, old.api.call_timeout)
    removals = [
        Deferred.fromCoroutine(links.remove_neighbour(n.name, n.is_parent, grace))
        for n in diff.removed
    ]
    closed: list[int] = await gatherResults(removals, consumeErrors=True) if removals else []
    report.links_closed = sum(closed)
    return report


class Reloader:
    """Runs reloads of one cell one at a time, and logs each outcome."""

    def __init__(self, cell: Cell) -> None:
        self.cell = cell
        self._lock = DeferredLock()

    def reload(self, force: bool = False) -> Deferred[ReloadReport]:
        """Reload the cell's file (see :func:`reload_config`); fails with
        the error that refused it."""
        return self._lock.run(lambda: Deferred.fromCoroutine(self._reload(force)))

    async def _reload(self, force: bool) -> ReloadReport:
        name = self.cell.settings.cell.name
        path = self.cell.settings.config_path
        try:
            report = await reload_config(self.cell, force=force)
        except CellsError as e:
            log.error(
                "{cell}: configuration reload from {path} refused, nothing changed: {error}",
                cell=name,
                path=str(path),
                error=str(e),
            )
            raise
        except Exception:
            log.failure("{cell}: configuration reload from {path} failed", cell=name, path=path)
            raise
        log.info(
            "{cell}: configuration reloaded from {path}: {summary}",
            cell=name,
            path=report.config_path,
            summary=report.summary(),
            report=report.as_dict(),
        )
        return report


class ReloadOnSignal(service.Service):
    """Reloads the cell's configuration on SIGHUP while running.

    The handler only schedules the reload on the reactor
    (``callFromThread`` is the one reactor call safe from a signal handler);
    the outcome is logged by the :class:`Reloader` and never stops the
    daemon. Installed by the daemon's entry points (``cellsd run``, the
    twistd plugin, ``cellsd.tac``), not by ``make_service``: a process holds
    one handler per signal.
    """

    def __init__(self, reloader: Reloader, reactor: Any, signum: int = signal.SIGHUP) -> None:
        self.reloader = reloader
        self.reactor = reactor
        self.signum = signum
        self.setName("reload-on-signal")
        self._previous: Callable[[int, FrameType | None], Any] | int | None = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(self.signum, self._received)

    def _received(self, signum: int, frame: FrameType | None) -> None:
        self.reactor.callFromThread(self.reload_now)

    def reload_now(self) -> Deferred[ReloadReport | None]:
        """Reload, logging the outcome; never fails."""
        log.info("{signal}: reloading the configuration", signal=signal.Signals(self.signum).name)

        def logged(_: Failure) -> None:
            return None  # the Reloader logged why

        return self.reloader.reload().addErrback(logged)

    def stopService(self) -> None:
        previous = self._previous
        signal.signal(self.signum, signal.SIG_DFL if previous is None else previous)
        super().stopService()


def install_reload_on_signal(top: Any, reactor: Any, signum: int = signal.SIGHUP) -> None:
    """Give the cell service ``top`` (cellsd.service.CellService) a SIGHUP
    handler that reloads its configuration; for the daemon's entry points."""
    ReloadOnSignal(top.reloader, reactor, signum).setServiceParent(top)
