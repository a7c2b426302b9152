"""The shape of cellsd.config.Settings that NeighbourLinks reads, as small
frozen classes, for the link tests that build NeighbourLinks without a
config file (this module holds no tests itself)."""

from __future__ import annotations

import attrs


@attrs.frozen
class Neighbour:
    name: str
    endpoint: str | None = None
    is_parent: bool = False


@attrs.frozen
class CellName:
    name: str


@attrs.frozen
class Cells:
    listen: str | None = None
    max_message_bytes: int = 16 * 1024 * 1024
    reconnect_max_delay: float = 30.0
    handshake_timeout: float = 10.0
    max_pending_handshakes: int = 64


@attrs.frozen
class Settings:
    cell: CellName
    cells: Cells
    parents: tuple[Neighbour, ...] = ()
    children: tuple[Neighbour, ...] = ()
