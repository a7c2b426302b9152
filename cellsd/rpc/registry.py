"""Which CellsManager methods are callable over RPC, and since which version.

Kept apart from :mod:`cellsd.rpc.manager` so that the manager's method
mixins can register their methods without importing the manager.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from cellsd.errors import InvalidArguments

#: The newest version of the local RPC API this server speaks.
RPC_API_VERSION = "1.39"

F = TypeVar("F", bound=Callable[..., Any])
_RPC_METHODS: dict[str, str] = {}


def rpc_method(version: str) -> Callable[[F], F]:
    """Register a manager method as callable over RPC since ``version``."""

    def register(fn: F) -> F:
        _RPC_METHODS[fn.__name__] = version
        return fn

    return register


def parse_version(version: str) -> tuple[int, int]:
    """``"1.34"`` -> ``(1, 34)``; InvalidArguments for anything else."""
    try:
        major, minor = version.split(".")
        return int(major), int(minor)
    except ValueError:
        raise InvalidArguments(
            method_name="(version)", reason=f"{version!r} is not a MAJOR.MINOR version"
        ) from None


def rpc_methods() -> dict[str, str]:
    """Every RPC method name with the version that introduced it."""
    return dict(_RPC_METHODS)


def registered_version(method: str) -> str | None:
    """The version that introduced ``method``, or None if it is not served."""
    return _RPC_METHODS.get(method)
