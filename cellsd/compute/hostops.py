"""What the simulated compute does for its hosts rather than for one
instance: service heartbeats, uptime, consoles, proxied compute-manager
calls, and the hourly usage audit recorded in the task log."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from cellsd.compute import states as st
from cellsd.compute.core import ComputeCore
from cellsd.context import RequestContext
from cellsd.deferreds import async_to_deferred
from cellsd.errors import (
    ComputeHostNotFound,
    ComputeServiceUnavailable,
    ConsoleTypeInvalid,
    TaskAlreadyRunning,
    UnknownMethod,
)
from cellsd.objects import Instance

AUDIT_TASK = "instance_usage_audit"

#: First port of each console type; an instance's port is base + (uuid % 100).
CONSOLE_PORTS: Mapping[str, int] = {
    "novnc": 5900,
    "xvpvnc": 5900,
    "spice-html5": 5800,
    "rdp-html5": 3389,
    "serial": 10000,
    "webmks": 7000,
}


def console_port(instance: Instance, console_type: str) -> int:
    base = CONSOLE_PORTS.get(console_type)
    if base is None:
        raise ConsoleTypeInvalid(console_type=console_type)
    return base + int(str(instance.uuid).replace("-", ""), 16) % 100


def uptime_line(now: datetime.datetime, seconds: float) -> str:
    """``uptime``'s line: `` 12:00:05 up 2 days,  3:04,  0 users,  load ...``."""
    days, rest = divmod(int(max(0.0, seconds)), 86400)
    hours, minutes = rest // 3600, rest % 3600 // 60
    up = f"{days} day{'s' if days != 1 else ''}, " if days else ""
    return (
        f" {now:%H:%M:%S} up {up}{hours:2d}:{minutes:02d},  0 users,  "
        "load average: 0.00, 0.00, 0.00"
    )


class HostOperations(ComputeCore):
    """Heartbeats, uptime, consoles, host-manager RPCs and the audit."""

    started_at: float = 0.0
    _audited: tuple[datetime.datetime, datetime.datetime] | None = None
    _report_counts: dict[str, int]

    async def heartbeat(self) -> None:
        """Each host reports in (last_seen_up, report_count); then learn
        which hosts are disabled and run the usage audit once per hour."""
        now = self.now()
        counts = self._report_counts
        for host in self.hosts.values():
            if host.service_id is None:
                continue
            counts[host.name] = counts.get(host.name, 0) + 1
            await self.store.service_update(
                host.service_id, {"last_seen_up": now, "report_count": counts[host.name]}
            )
        await self.refresh_disabled()
        await self.audit_usage()

    def audit_period(self) -> tuple[datetime.datetime, datetime.datetime]:
        """The last whole hour before now."""
        end = self.now().replace(minute=0, second=0, microsecond=0)
        return end - datetime.timedelta(hours=1), end

    async def audit_usage(self) -> None:
        """Record the usage audit of the last whole hour in the task log,
        per host, once (a restart finds the rows already there)."""
        period = self.audit_period()
        if period == self._audited:
            return
        begin, end = period
        for host in self.hosts:
            running = await self.store.instance_get_all_by_filters({"host": host, "deleted": False})
            try:
                await self.store.task_log_begin_task(
                    AUDIT_TASK, begin, end, host, task_items=len(running)
                )
            except TaskAlreadyRunning:
                continue
            await self.store.task_log_end_task(
                AUDIT_TASK,
                begin,
                end,
                host,
                errors=0,
                message=f"Instance usage audit ran for host {host}, {len(running)} instances.",
            )
        self._audited = period

    async def _service_up(self, host_name: str) -> None:
        service = await self.store.service_get_by_compute_host(host_name)
        seen = service.last_seen_up
        age = None if seen is None else (self.now() - seen).total_seconds()
        if (
            host_name not in self.hosts
            or service.forced_down
            or age is None
            or age > self.service_down_time
        ):
            raise ComputeServiceUnavailable(host=host_name)

    @async_to_deferred
    async def get_host_uptime(self, ctxt: RequestContext, host_name: str) -> str:
        await self._service_up(host_name)
        return uptime_line(self.now(), self.clock.seconds() - self.started_at)

    # -- consoles -----------------------------------------------------------------

    @async_to_deferred
    async def get_console(
        self, ctxt: RequestContext, instance: Instance, console_type: str
    ) -> dict[str, Any]:
        port = console_port(instance, console_type)
        if not instance.host or instance.vm_state in (st.BUILDING, st.DELETED):
            raise self.invalid(instance, "vm_state", instance.vm_state, "get_console")
        return {
            "host": instance.host,
            "port": port,
            "internal_access_path": None,
            "url": f"http://{instance.host}:{port}/console?instance={instance.uuid}",
        }

    @async_to_deferred
    async def validate_console_port(
        self, ctxt: RequestContext, instance: Instance, port: Any, console_type: str
    ) -> bool:
        expected = console_port(instance, console_type)
        if not instance.host or instance.power_state != st.RUNNING:
            return False
        try:
            return int(port) == expected
        except (TypeError, ValueError):
            return False

    @async_to_deferred
    async def get_console_output(
        self, ctxt: RequestContext, instance: Instance, tail_length: int | None = None
    ) -> str:
        lines = [
            f"[    0.000000] Booting simulated instance {instance.uuid}",
            f"[    0.100000] Host {instance.host}, image {instance.image_ref}",
            f"[    1.000000] {instance.display_name or instance.uuid} login:",
        ]
        if tail_length is not None:
            lines = lines[-int(tail_length) :] if int(tail_length) else []
        return "\n".join(lines)

    # -- compute-manager RPCs (proxy_rpc_to_manager) -------------------------------------

    @async_to_deferred
    async def host_rpc(
        self, ctxt: RequestContext, host_name: str, method: str, args: Mapping[str, Any]
    ) -> Any:
        """The host-level calls Nova's HostAPI proxies through the cells;
        anything else is refused (there is no attribute lookup by name)."""
        host = self.hosts.get(host_name)
        if host is None:
            raise ComputeHostNotFound(host=host_name)
        if method == "get_host_uptime":
            return await self.get_host_uptime(ctxt, host_name)
        if method == "set_host_enabled":
            enabled = bool(args.get("enabled"))
            if host.service_id is not None:
                await self.store.service_update(host.service_id, {"disabled": not enabled})
            host.disabled = not enabled
            return "enabled" if enabled else "disabled"
        if method == "host_power_action":
            action = str(args.get("action"))
            if action not in ("startup", "shutdown", "reboot"):
                raise UnknownMethod(kind="host power action", method_name=action)
            return action
        if method == "host_maintenance_mode":
            mode = str(args.get("mode"))
            return "on_maintenance" if mode in ("enable", "True", "true") else "off_maintenance"
        raise UnknownMethod(kind="compute manager", method_name=method)
