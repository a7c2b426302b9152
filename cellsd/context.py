"""The request context that travels with every message."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import attrs

#: Keys of the context that are forwarded between cells. Anything else a
#: caller puts in a context (tokens, service catalogues) stays local: cells
#: forward a minimal identity, not credentials.
_FORWARDED = (
    "user_id",
    "project_id",
    "is_admin",
    "read_deleted",
    "request_id",
    "roles",
    "remote_address",
)


def _new_request_id() -> str:
    return "req-" + str(uuid.uuid4())


@attrs.define
class RequestContext:
    """Who asks, and how: user, project, admin flag, request id."""

    user_id: str | None = None
    project_id: str | None = None
    is_admin: bool = False
    read_deleted: str = attrs.field(
        default="no",
        validator=attrs.validators.in_(("no", "yes", "only")),
    )
    request_id: str = attrs.field(factory=_new_request_id)
    roles: list[str] = attrs.field(factory=list)
    remote_address: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _FORWARDED}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RequestContext:
        """Build a context from its dict form; unknown keys are ignored."""
        known = {k: values[k] for k in _FORWARDED if k in values}
        if "roles" in known and not isinstance(known["roles"], list):
            known["roles"] = list(known["roles"] or [])
        known["is_admin"] = bool(known.get("is_admin", False))
        if not known.get("request_id"):
            known.pop("request_id", None)
        return cls(**known)

    def elevated(self) -> RequestContext:
        """A copy with admin rights, for work a cell does on its own behalf."""
        return attrs.evolve(self, is_admin=True, roles=[*self.roles, "admin"])


def get_admin_context() -> RequestContext:
    return RequestContext(is_admin=True, roles=["admin"])
