"""Errors of the local RPC API (CellsAPI and its transports).

The module is allow-listed for remote rebuilding, so an error raised by the
local cellsd (for example InstanceUnknownCell from validate_console_port)
reaches the caller as its own class. Every class reads its fields from
``self.kwargs``, because a rebuilt error does not run the subclass
``__init__``.
"""

from __future__ import annotations

from typing import Any

from cellsd.errors import CellsError, KeypairNotFound, allow_remote_module

__all__ = [
    "CellsUpdateUnsupported",
    "InstanceUnknownCell",
    "InvalidVersionCap",
    "KeypairNotFound",
    "NoCellStore",
    "RPCVersionCapError",
]

allow_remote_module(__name__)


class RPCVersionCapError(CellsError):
    """A method needs a newer API version than the caller's version cap.

    Raised on the caller's side before anything is sent.
    """

    msg_fmt = (
        "CellsAPI method {method} needs API version {version}, "
        "which is above the version cap {cap}; nothing was sent"
    )

    def __init__(self, method: str, version: str, cap: str) -> None:
        super().__init__(method=method, version=version, cap=cap)

    @property
    def method(self) -> Any:
        return self.kwargs.get("method")

    @property
    def version(self) -> Any:
        return self.kwargs.get("version")

    @property
    def cap(self) -> Any:
        return self.kwargs.get("cap")


class InvalidVersionCap(CellsError):
    """The version cap is neither a release alias nor an "X.Y" version."""

    msg_fmt = (
        "Invalid CellsAPI version cap {cap!r}: {reason} "
        "(use a version such as '1.34' or one of the aliases: {aliases})"
    )
    code = 400

    def __init__(self, cap: str, reason: str, aliases: str = "") -> None:
        super().__init__(cap=cap, reason=reason, aliases=aliases)


class InstanceUnknownCell(CellsError):
    """The instance has no cell_name, so nothing can be routed for it."""

    msg_fmt = "Cell is not known for instance {instance_uuid}"
    code = 404

    def __init__(self, instance_uuid: str | None) -> None:
        super().__init__(instance_uuid=instance_uuid)


class CellsUpdateUnsupported(CellsError):
    """cell_create/update/delete on a cellsd without a cell store: its
    neighbours come from its configuration file."""

    msg_fmt = "Cannot update cells configuration file: {reason}"

    def __init__(self, reason: str = "neighbours are configured in the cell's TOML file") -> None:
        super().__init__(reason=reason)


class NoCellStore(CellsError):
    """A request needs this cell's database, and this cellsd has none."""

    msg_fmt = "{method} needs the cell store, and this cellsd has none"
    code = 503

    def __init__(self, method: str) -> None:
        super().__init__(method=method)
