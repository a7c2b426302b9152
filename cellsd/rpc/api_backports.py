"""Version arithmetic and the older argument forms of the CellsAPI.

A caller that runs under a version cap must send each method in the form the
capped version defined (behaviour §4.2). The helpers here are pure functions:
they never send anything and never mutate the caller's arguments.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred

from cellsd.context import RequestContext
from cellsd.rpc.errors import InvalidVersionCap

#: Release names accepted as a version cap, and the version each one speaks.
VERSION_ALIASES: dict[str, str] = {
    "grizzly": "1.6",
    "havana": "1.24",
    "icehouse": "1.27",
    "juno": "1.29",
    "kilo": "1.34",
    "liberty": "1.37",
}

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)$")


def parse_version(version: str) -> tuple[int, int]:
    """``"1.34"`` -> ``(1, 34)``; ValueError for anything else."""
    match = _VERSION_RE.match(version)
    if match is None:
        raise ValueError(f"not an X.Y version: {version!r}")
    return int(match.group(1)), int(match.group(2))


def resolve_version_cap(cap: str | None) -> str | None:
    """The "X.Y" version a cap stands for; InvalidVersionCap when it is bad."""
    if cap is None:
        return None
    aliases = ", ".join(sorted(VERSION_ALIASES))
    if not isinstance(cap, str):
        raise InvalidVersionCap(repr(cap), "not a string", aliases)
    resolved = VERSION_ALIASES.get(cap.strip().lower(), cap.strip())
    try:
        parse_version(resolved)
    except ValueError:
        raise InvalidVersionCap(
            cap, "neither a known release alias nor an X.Y version", aliases
        ) from None
    return resolved


def can_send_version(version: str, cap: str | None) -> bool:
    """No cap, or the same major version and a minor version within the cap."""
    if cap is None:
        return True
    major, minor = parse_version(version)
    cap_major, cap_minor = parse_version(cap)
    return major == cap_major and minor <= cap_minor


# --------------------------------------------------------------------------
# Primitive (plain dict) forms


def is_object(value: Any) -> bool:
    """Anything with ``to_dict`` is a versioned object."""
    return callable(getattr(value, "to_dict", None))


def plain(value: Any) -> Any:
    """The plain-dict form older versions sent: objects become dicts of their
    fields, recursively; dicts and lists are copied; anything else is kept."""
    if is_object(value):
        return plain(value.to_dict())
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def field(value: Any, name: str) -> Any:
    """``value[name]`` for a dict, ``value.name`` for an object, else None."""
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


def _instance_class() -> Callable[..., Any] | None:
    """The Instance object class, once cellsd.objects provides one."""
    try:
        module = importlib.import_module("cellsd.objects")
    except ImportError:
        return None
    cls = getattr(module, "Instance", None)
    return cls if callable(cls) else None


def info_cache_instance(info_cache: Any) -> Any:
    """An instance carrying only the uuid and the info cache (the 1.35 form).

    An Instance object when cellsd.objects defines one, else its dict form.
    """
    uuid = field(info_cache, "instance_uuid")
    cls = _instance_class()
    if cls is not None:
        return cls(uuid=uuid, info_cache=info_cache)
    return {"uuid": uuid, "info_cache": info_cache}


# --------------------------------------------------------------------------
# build_instances


def build_instances_form(
    kwargs: Mapping[str, Any], can_send: Callable[[str], bool]
) -> tuple[str, dict[str, Any]]:
    """The version and ``build_inst_kwargs`` build_instances sends.

    The newest form (1.34) carries objects and no ``legacy_bdm``. Each older
    step converts one more part to plain dicts: block device mappings for
    1.32 (``legacy_bdm`` kept), instances for 1.30, the flavor in
    ``filter_properties['instance_type']`` for 1.8. The image is always a
    plain dict. The caller checks the returned version against the cap.
    """
    build = dict(kwargs)
    build["image"] = plain(build.get("image"))
    version = "1.34"
    if can_send("1.34"):
        build.pop("legacy_bdm", None)
    else:
        if "block_device_mapping" in build:
            build["block_device_mapping"] = plain(build["block_device_mapping"])
        version = "1.32"
    if not can_send("1.32"):
        build["instances"] = [plain(i) for i in build.get("instances") or []]
        version = "1.30"
    if not can_send("1.30"):
        if build.get("filter_properties") is not None:
            props = dict(build["filter_properties"])
            if "instance_type" in props:
                props["instance_type"] = plain(props["instance_type"])
            build["filter_properties"] = props
        version = "1.8"
    return version, build


# --------------------------------------------------------------------------
# The CellsAPI methods whose arguments depend on the version cap


class CapDependentMethods:
    """The CellsAPI methods that send an older form under a version cap.

    A mixin of :class:`cellsd.rpc.api.CellsAPI`, which provides the cap and
    the sending core (:meth:`_send` checks the returned version against the
    cap, so a form still too new fails with RPCVersionCapError).
    """

    def can_send_version(self, version: str) -> bool:
        raise NotImplementedError

    def _send(
        self,
        ctxt: RequestContext,
        api_method: str,
        kwargs: dict[str, Any],
        *,
        version: str | None = None,
        call: bool | None = None,
        timeout: float | None = None,
        swallow_send_errors: bool = False,
    ) -> Deferred[Any]:
        raise NotImplementedError

    def build_instances(self, ctxt: RequestContext, **kwargs: Any) -> Deferred[None]:
        """Build instances (1.34; older caps step down to 1.32, 1.30, 1.8)."""
        version, build = build_instances_form(kwargs, self.can_send_version)
        return self._send(ctxt, "build_instances", {"build_inst_kwargs": build}, version=version)

    def _instance_at_top(
        self, ctxt: RequestContext, api_method: str, instance: Any
    ) -> Deferred[None]:
        # 1.35 sends the object; older servers take its plain form at 1.34.
        if self.can_send_version("1.35"):
            return self._send(ctxt, api_method, {"instance": instance})
        wire = {"instance": plain(instance)}
        return self._send(ctxt, api_method, wire, version="1.34")

    def instance_update_at_top(self, ctxt: RequestContext, instance: Any) -> Deferred[None]:
        """Update instance at API level."""
        return self._instance_at_top(ctxt, "instance_update_at_top", instance)

    def instance_destroy_at_top(self, ctxt: RequestContext, instance: Any) -> Deferred[None]:
        """Destroy instance at API level."""
        return self._instance_at_top(ctxt, "instance_destroy_at_top", instance)

    def instance_info_cache_update_at_top(
        self, ctxt: RequestContext, instance_info_cache: Any
    ) -> Deferred[None]:
        """Broadcast up that an instance's info_cache has changed.

        Sent as instance_update_at_top, with an instance that carries only
        its uuid and the info cache.
        """
        instance = info_cache_instance(instance_info_cache)
        return self._instance_at_top(ctxt, "instance_info_cache_update_at_top", instance)

    def instance_delete_everywhere(
        self, ctxt: RequestContext, instance: Any, delete_type: str
    ) -> Deferred[None]:
        """Delete instance everywhere; delete_type is 'soft' or 'hard'.

        Used to resolve races when the API cell does not know which cell
        holds the instance. Before 1.27 the instance travels as a plain dict.
        """
        if self.can_send_version("1.27"):
            wire = {"instance": instance, "delete_type": delete_type}
            return self._send(ctxt, "instance_delete_everywhere", wire)
        wire = {"instance": plain(instance), "delete_type": delete_type}
        return self._send(ctxt, "instance_delete_everywhere", wire, version="1.0")

    def bdm_update_or_create_at_top(
        self, ctxt: RequestContext, bdm: Any, create: bool | None = None
    ) -> Deferred[None]:
        """Create or update a block device mapping in API cells.

        create True: only create; False: only update; None: update, falling
        back to create. Before 1.28 the BDM travels as a plain dict. A
        failure to send is logged, not reported.
        """
        version = "1.28"
        if not self.can_send_version(version):
            bdm, version = plain(bdm), "1.10"
        wire = {"bdm": bdm, "create": create}
        return self._send(
            ctxt, "bdm_update_or_create_at_top", wire, version=version, swallow_send_errors=True
        )

    def stop_instance(
        self, ctxt: RequestContext, instance: Any, do_cast: bool = True, clean_shutdown: bool = True
    ) -> Deferred[Any]:
        """Stop an instance in its cell: a cast, or a call unless do_cast.

        clean_shutdown is sent from 1.31.
        """
        if self.can_send_version("1.31"):
            wire = {"instance": instance, "do_cast": do_cast, "clean_shutdown": clean_shutdown}
            return self._send(ctxt, "stop_instance", wire, call=not do_cast)
        wire = {"instance": instance, "do_cast": do_cast}
        return self._send(ctxt, "stop_instance", wire, version="1.12", call=not do_cast)

    def terminate_instance(
        self,
        ctxt: RequestContext,
        instance: Any,
        bdms: Any,
        reservations: Any = None,
        delete_type: str = "delete",
    ) -> Deferred[None]:
        """Delete an instance in its cell (delete_type is sent from 1.36)."""
        if self.can_send_version("1.36"):
            wire = {"instance": instance, "delete_type": delete_type}
            return self._send(ctxt, "terminate_instance", wire)
        return self._send(ctxt, "terminate_instance", {"instance": instance}, version="1.18")

    def resize_instance(
        self,
        ctxt: RequestContext,
        instance: Any,
        extra_instance_updates: Any,
        scheduler_hint: Any,
        flavor: Any,
        reservations: Any,
        clean_shutdown: bool = True,
    ) -> Deferred[None]:
        """Resize an instance; the flavor travels as a plain dict, and
        clean_shutdown is sent from 1.33."""
        wire = {
            "instance": instance,
            "flavor": plain(flavor),
            "extra_instance_updates": extra_instance_updates,
        }
        if self.can_send_version("1.33"):
            wire["clean_shutdown"] = clean_shutdown
            return self._send(ctxt, "resize_instance", wire)
        return self._send(ctxt, "resize_instance", wire, version="1.20")
