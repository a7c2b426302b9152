"""The client side of the local RPC API: how a program talks to its own cell.

:class:`CellsAPI` has one method per method of Nova's ``nova.cells.rpcapi``
(same names, same signatures, the request context first). Each returns a
Deferred. What each method sends is declared once, in :data:`RPC_METHODS`:
its RPC name, its newest version, call or cast, and which of its parameters
travel under which names. :meth:`CellsAPI._send` is the one place that checks
the version cap and hands a request to the :class:`~cellsd.interfaces.IRPCTransport`.

Most methods are only a signature and a docstring; :func:`_by_table` sends
them. Those that check or post-process something carry code of their own,
and those whose arguments change under a version cap live in
:class:`cellsd.rpc.api_backports.CapDependentMethods`, a mixin of CellsAPI.

This is not how cells talk to each other; that is the messaging module's job.
"""

# The table-driven methods have a docstring for a body; _by_table sends them.
# mypy: disable-error-code="empty-body"

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Final, ParamSpec, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from cellsd.context import RequestContext
from cellsd.interfaces import IRPCTransport
from cellsd.rpc import api_backports as bp
from cellsd.rpc.api_backports import VERSION_ALIASES
from cellsd.rpc.api_table import CALL, CAST, RPC_METHODS, RpcMethod
from cellsd.rpc.errors import InstanceUnknownCell, KeypairNotFound, RPCVersionCapError

__all__ = ["CALL", "CAST", "RPC_METHODS", "VERSION_ALIASES", "CellsAPI", "RpcMethod"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _by_table(method: Callable[_P, Deferred[_R]]) -> Callable[_P, Deferred[_R]]:
    """Send ``method`` exactly as :data:`RPC_METHODS` declares it.

    The decorated method is a signature and a docstring: the call's
    arguments are bound to that signature (defaults included) and the
    table's parameters are sent under their wire names.
    """
    name = method.__name__
    spec = RPC_METHODS[name]
    signature = inspect.signature(method)
    ctxt_param = list(signature.parameters)[1]

    @functools.wraps(method)
    def send(*args: _P.args, **kwargs: _P.kwargs) -> Deferred[_R]:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = bound.arguments
        api: CellsAPI = values["self"]
        wire = {w: values[p] for w, p in spec.sources}
        return api._send(values[ctxt_param], name, wire)

    return send


def _discard(_: object) -> None:
    return None


class CellsAPI(bp.CapDependentMethods):
    """Client side of the local cells RPC API.

    API version history (each version adds to the one before):

    * 1.0 - the first version.
    * 1.1 - get_cell_info_for_neighbors() and sync_instances().
    * 1.2 - service_get_all(), service_get_by_compute_host() and
      proxy_rpc_to_manager() (then called proxy_rpc_to_compute_manager).
    * 1.3 - task_log_get_all().
    * 1.4 - compute_node_get(), compute_node_get_all(), compute_node_stats().
    * 1.5 - actions_get(), action_get_by_request_id(), action_events_get().
    * 1.6 - consoleauth_delete_tokens() and validate_console_port().

      Grizzly speaks 1.6: later changes must still work with a cap of 1.6.

    * 1.7 - service_update().
    * 1.8 - build_instances(), replacing schedule_run_instance().
    * 1.9 - get_capacities().
    * 1.10 - bdm_update_or_create_at_top() and bdm_destroy_at_top().
    * 1.11 - get_migrations().
    * 1.12 - start_instance() and stop_instance().
    * 1.13 - cell_create(), cell_update(), cell_delete(), cell_get().
    * 1.14 - reboot_instance().
    * 1.15 - suspend_instance() and resume_instance().
    * 1.16 - instance_update_from_api().
    * 1.17 - get_host_uptime().
    * 1.18 - terminate_instance() and soft_delete_instance().
    * 1.19 - pause_instance() and unpause_instance().
    * 1.20 - resize_instance() and live_migrate_instance().
    * 1.21 - revert_resize() and confirm_resize().
    * 1.22 - reset_network().
    * 1.23 - inject_network_info().
    * 1.24 - backup_instance() and snapshot_instance().

      Havana speaks 1.24: later changes must still work with a cap of 1.24.

    * 1.25 - rebuild_instance().
    * 1.26 - service_delete().
    * 1.27 - instance_delete_everywhere() takes an instance object.

      Icehouse speaks 1.27: later changes must still work with a cap of 1.27.

    * 1.28 - bdm_update_or_create_at_top() takes a BDM object.
    * 1.29 - set_admin_password().

      Juno speaks 1.29: later changes must still work with a cap of 1.29.

    * 1.30 - build_instances() sends the flavor as an object.
    * 1.31 - clean_shutdown for stop (and resize, rescue, shelve).
    * 1.32 - build_instances() sends instance objects.
    * 1.33 - clean_shutdown for resize_instance().
    * 1.34 - build_instances() sends BlockDeviceMapping objects and no
      longer sends legacy_bdm.

      Kilo speaks 1.34: later changes must still work with a cap of 1.34.

    * 1.35 - instance_update_at_top(), instance_destroy_at_top() and
      instance_info_cache_update_at_top() send instance objects.
    * 1.36 - terminate_instance() sends delete_type.
    * 1.37 - get_keypair_at_top(), to read a key pair from the API cell.

      Liberty speaks 1.37: later changes must still work with a cap of 1.37.

    * 1.38 - cellsd: ping(), ping_all(), tree() and instance_list(), the
      diagnostics and views of cellsctl. Under a cap of liberty or older they are refused on the
      caller's side like any method newer than the cap.
    * 1.39 - cellsd: instance_delete_everywhere_outcomes() and
      sync_instances_outcomes(), the call forms of those two broadcasts:
      they wait for every cell and answer each cell's outcome (ok, failed,
      unknown or unreachable).

    ``version_cap`` is a release name of :data:`VERSION_ALIASES` or an "X.Y"
    version; anything else raises InvalidVersionCap here. Under a cap each
    method sends the form its capped version defined, and a method newer
    than the cap fails its Deferred with RPCVersionCapError, sending nothing.

    Call methods fire with the server's result; casts fire with None once the
    transport has accepted the message. Calls wait ``call_timeout`` seconds.
    """

    BASE_RPC_API_VERSION: Final = "1.0"
    VERSION_ALIASES: Final = VERSION_ALIASES

    _log = Logger()

    def __init__(
        self,
        transport: IRPCTransport,
        version_cap: str | None = None,
        call_timeout: float = 60.0,
    ) -> None:
        self.transport = transport
        #: The cap as an "X.Y" version (an alias resolved), or None.
        self.version_cap: str | None = bp.resolve_version_cap(version_cap)
        self.call_timeout = call_timeout

    def can_send_version(self, version: str) -> bool:
        """No cap, or the same major version and a minor within the cap."""
        return bp.can_send_version(version, self.version_cap)

    # ------------------------------------------------------------------
    # The core: the one place that checks the cap and sends

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
        """Send ``api_method`` as :data:`RPC_METHODS` declares it.

        ``version`` and ``call`` override the table for the older forms and
        for stop_instance. A version above the cap fails the Deferred with
        RPCVersionCapError and sends nothing. Casts fire with None, calls
        with the result; with ``swallow_send_errors`` a failure to send is
        logged and the Deferred fires with None.
        """
        spec = RPC_METHODS[api_method]
        version = version or spec.version
        if self.version_cap is not None and not self.can_send_version(version):
            return defer.fail(RPCVersionCapError(api_method, version, self.version_cap))
        if call is None:
            call = spec.kind == CALL
        if call:
            timeout = self.call_timeout if timeout is None else timeout
            d = defer.maybeDeferred(
                self.transport.call, ctxt, spec.rpc_name, version, kwargs, timeout
            )
        else:
            d = defer.maybeDeferred(self.transport.cast, ctxt, spec.rpc_name, version, kwargs)
            d.addCallback(_discard)
        if swallow_send_errors:
            d.addErrback(self._log_send_error, api_method)
        return d

    def _log_send_error(self, failure: Failure, api_method: str) -> None:
        self._log.failure("Failed to notify cells of {api_method}", failure, api_method=api_method)

    # ------------------------------------------------------------------
    # Compute API methods in a given cell

    def cast_compute_api_method(
        self, ctxt: RequestContext, cell_name: str, method: str, *args: Any, **kwargs: Any
    ) -> Deferred[None]:
        """Make a cast to a compute API method in a certain cell."""
        info = {"method": method, "method_args": list(args), "method_kwargs": kwargs}
        wire = {"cell_name": cell_name, "method_info": info, "call": False}
        return self._send(ctxt, "cast_compute_api_method", wire)

    def call_compute_api_method(
        self, ctxt: RequestContext, cell_name: str, method: str, *args: Any, **kwargs: Any
    ) -> Deferred[Any]:
        """Make a call to a compute API method in a certain cell."""
        info = {"method": method, "method_args": list(args), "method_kwargs": kwargs}
        wire = {"cell_name": cell_name, "method_info": info, "call": True}
        return self._send(ctxt, "call_compute_api_method", wire)

    # ------------------------------------------------------------------
    # Instance data sent up to the API cell

    def instance_fault_create_at_top(
        self, ctxt: RequestContext, instance_fault: Any
    ) -> Deferred[None]:
        """Create an instance fault at the top (sent as a plain dict)."""
        wire = {"instance_fault": bp.plain(instance_fault)}
        return self._send(ctxt, "instance_fault_create_at_top", wire)

    def bw_usage_update_at_top(
        self,
        ctxt: RequestContext,
        uuid: str,
        mac: str,
        start_period: Any,
        bw_in: int,
        bw_out: int,
        last_ctr_in: int,
        last_ctr_out: int,
        last_refreshed: Any = None,
    ) -> Deferred[None]:
        """Broadcast upwards that bw_usage was updated."""
        info = {
            "uuid": uuid,
            "mac": mac,
            "start_period": start_period,
            "bw_in": bw_in,
            "bw_out": bw_out,
            "last_ctr_in": last_ctr_in,
            "last_ctr_out": last_ctr_out,
            "last_refreshed": last_refreshed,
        }
        return self._send(ctxt, "bw_usage_update_at_top", {"bw_update_info": info})

    @_by_table
    def consoleauth_delete_tokens(self, ctxt: RequestContext, instance_uuid: str) -> Deferred[None]:
        """Delete consoleauth tokens for an instance in API cells."""

    def bdm_destroy_at_top(
        self,
        ctxt: RequestContext,
        instance_uuid: str,
        device_name: str | None = None,
        volume_id: str | None = None,
    ) -> Deferred[None]:
        """Broadcast upwards that a block device mapping was destroyed.

        One of device_name or volume_id should be given. A failure to send is
        logged, not reported.
        """
        wire = {"instance_uuid": instance_uuid, "device_name": device_name, "volume_id": volume_id}
        return self._send(ctxt, "bdm_destroy_at_top", wire, swallow_send_errors=True)

    def get_keypair_at_top(self, ctxt: RequestContext, user_id: str, name: str) -> Deferred[Any]:
        """Fetch a key pair from the API cell; KeypairNotFound when none."""

        def found(keypair: Any) -> Any:
            if keypair is None:
                raise KeypairNotFound(user_id=user_id, name=name)
            return keypair

        wire = {"user_id": user_id, "name": name}
        return self._send(ctxt, "get_keypair_at_top", wire).addCallback(found)

    # ------------------------------------------------------------------
    # Cells, services, compute nodes, task logs, migrations

    @_by_table
    def get_cell_info_for_neighbors(self, ctxt: RequestContext) -> Deferred[Any]:
        """Get information about our neighbour cells from the manager."""

    @_by_table
    def sync_instances(
        self,
        ctxt: RequestContext,
        project_id: str | None = None,
        updated_since: Any = None,
        deleted: bool = False,
    ) -> Deferred[None]:
        """Ask all cells to sync instance data."""

    @_by_table
    def service_get_all(self, ctxt: RequestContext, filters: Any = None) -> Deferred[Any]:
        """Ask all cells for their list of services."""

    @_by_table
    def service_get_by_compute_host(self, ctxt: RequestContext, host_name: str) -> Deferred[Any]:
        """The service entry of a host; host_name is ``cell@host``."""

    @_by_table
    def get_host_uptime(self, context: RequestContext, host_name: str) -> Deferred[Any]:
        """The uptime of a host; host_name is ``cell@host``."""

    @_by_table
    def service_update(
        self, ctxt: RequestContext, host_name: str, binary: str, params_to_update: Any
    ) -> Deferred[Any]:
        """Update a service of ``cell@host``, e.g. ``{'disabled': True}`` stops
        new builds arriving on a compute host."""

    def service_delete(self, ctxt: RequestContext, cell_service_id: str) -> Deferred[None]:
        """Delete a service; cell_service_id is ``cell@id``. Fires with None."""
        wire = {"cell_service_id": cell_service_id}
        return self._send(ctxt, "service_delete", wire).addCallback(_discard)

    def proxy_rpc_to_manager(
        self,
        ctxt: RequestContext,
        rpc_message: Any,
        topic: str,
        call: bool = False,
        timeout: float | None = None,
    ) -> Deferred[Any]:
        """Proxy RPC to a compute manager; the topic's host is ``cell@host``.

        Always a call (waiting ``timeout`` seconds, or the default), whether
        or not the proxied message is one.
        """
        wire = {"topic": topic, "rpc_message": rpc_message, "call": call, "timeout": timeout}
        return self._send(ctxt, "proxy_rpc_to_manager", wire, timeout=timeout)

    @_by_table
    def task_log_get_all(
        self,
        ctxt: RequestContext,
        task_name: str,
        period_beginning: Any,
        period_ending: Any,
        host: str | None = None,
        state: str | None = None,
    ) -> Deferred[Any]:
        """Get the task logs from the DB in child cells."""

    @_by_table
    def compute_node_get(self, ctxt: RequestContext, compute_id: str) -> Deferred[Any]:
        """Get a compute node by ``cell@id``."""

    @_by_table
    def compute_node_get_all(
        self, ctxt: RequestContext, hypervisor_match: str | None = None
    ) -> Deferred[Any]:
        """Compute nodes of all cells, optionally filtered by hypervisor host."""

    @_by_table
    def compute_node_stats(self, ctxt: RequestContext) -> Deferred[Any]:
        """Compute node stats summed over all cells."""

    @_by_table
    def get_capacities(self, ctxt: RequestContext, cell_name: str | None = None) -> Deferred[Any]:
        """The capacities of one cell, or of this cell and its children."""

    @_by_table
    def get_migrations(self, ctxt: RequestContext, filters: Any) -> Deferred[Any]:
        """Get all migrations applying the filters."""

    @_by_table
    def cell_create(self, ctxt: RequestContext, values: Any) -> Deferred[Any]:
        """Add a neighbour cell."""

    @_by_table
    def cell_update(self, ctxt: RequestContext, cell_name: str, values: Any) -> Deferred[Any]:
        """Update a neighbour cell."""

    @_by_table
    def cell_delete(self, ctxt: RequestContext, cell_name: str) -> Deferred[Any]:
        """Remove a neighbour cell."""

    @_by_table
    def cell_get(self, ctxt: RequestContext, cell_name: str) -> Deferred[Any]:
        """Read a neighbour cell."""

    # ------------------------------------------------------------------
    # Per-instance queries

    def _in_cell(
        self, ctxt: RequestContext, api_method: str, instance: Any, **wire: Any
    ) -> Deferred[Any]:
        # Routed by the instance's cell: refuse before sending when unknown.
        cell_name = bp.field(instance, "cell_name")
        if not cell_name:
            return defer.fail(InstanceUnknownCell(bp.field(instance, "uuid")))
        return self._send(ctxt, api_method, {"cell_name": cell_name, **wire})

    def actions_get(self, ctxt: RequestContext, instance: Any) -> Deferred[Any]:
        """The actions of an instance; InstanceUnknownCell without a cell."""
        uuid = bp.field(instance, "uuid")
        return self._in_cell(ctxt, "actions_get", instance, instance_uuid=uuid)

    def action_get_by_request_id(
        self, ctxt: RequestContext, instance: Any, request_id: str
    ) -> Deferred[Any]:
        """One action of an instance; InstanceUnknownCell without a cell."""
        uuid = bp.field(instance, "uuid")
        return self._in_cell(
            ctxt, "action_get_by_request_id", instance, instance_uuid=uuid, request_id=request_id
        )

    def action_events_get(
        self, ctxt: RequestContext, instance: Any, action_id: Any
    ) -> Deferred[Any]:
        """The events of an action; InstanceUnknownCell without a cell."""
        return self._in_cell(ctxt, "action_events_get", instance, action_id=action_id)

    @_by_table
    def validate_console_port(
        self, ctxt: RequestContext, instance_uuid: str, console_port: Any, console_type: str
    ) -> Deferred[Any]:
        """Validate console port with child cell compute node."""

    # ------------------------------------------------------------------
    # Instance actions

    @_by_table
    def instance_update_from_api(
        self,
        ctxt: RequestContext,
        instance: Any,
        expected_vm_state: Any,
        expected_task_state: Any,
        admin_state_reset: bool,
    ) -> Deferred[None]:
        """Update an instance in its cell (takes an instance object)."""

    @_by_table
    def start_instance(self, ctxt: RequestContext, instance: Any) -> Deferred[None]:
        """Start an instance in its cell."""

    @_by_table
    def reboot_instance(
        self, ctxt: RequestContext, instance: Any, block_device_info: Any, reboot_type: str
    ) -> Deferred[None]:
        """Reboot an instance in its cell (block_device_info is not sent)."""

    @_by_table
    def pause_instance(self, ctxt: RequestContext, instance: Any) -> Deferred[None]:
        """Pause an instance in its cell."""

    @_by_table
    def unpause_instance(self, ctxt: RequestContext, instance: Any) -> Deferred[None]:
        """Unpause an instance in its cell."""

    @_by_table
    def suspend_instance(self, ctxt: RequestContext, instance: Any) -> Deferred[None]:
        """Suspend an instance in its cell."""

    @_by_table
    def resume_instance(self, ctxt: RequestContext, instance: Any) -> Deferred[None]:
        """Resume an instance in its cell."""

    @_by_table
    def soft_delete_instance(
        self, ctxt: RequestContext, instance: Any, reservations: Any = None
    ) -> Deferred[None]:
        """Soft-delete an instance in its cell."""

    @_by_table
    def live_migrate_instance(
        self,
        ctxt: RequestContext,
        instance: Any,
        host_name: str,
        block_migration: bool,
        disk_over_commit: bool,
        request_spec: Any = None,
    ) -> Deferred[None]:
        """Live-migrate an instance (request_spec is not sent: the cell
        builds its own)."""

    @_by_table
    def revert_resize(
        self, ctxt: RequestContext, instance: Any, migration: Any, host: Any, reservations: Any
    ) -> Deferred[None]:
        """Revert a resize (only the instance is sent)."""

    @_by_table
    def confirm_resize(
        self,
        ctxt: RequestContext,
        instance: Any,
        migration: Any,
        host: Any,
        reservations: Any,
        cast: bool = True,
    ) -> Deferred[None]:
        """Confirm a resize; always a cast, whatever ``cast`` says."""

    @_by_table
    def reset_network(self, ctxt: RequestContext, instance: Any) -> Deferred[None]:
        """Reset networking for an instance."""

    @_by_table
    def inject_network_info(self, ctxt: RequestContext, instance: Any) -> Deferred[None]:
        """Inject networking for an instance."""

    @_by_table
    def snapshot_instance(
        self, ctxt: RequestContext, instance: Any, image_id: str
    ) -> Deferred[None]:
        """Snapshot an instance into image_id."""

    @_by_table
    def backup_instance(
        self, ctxt: RequestContext, instance: Any, image_id: str, backup_type: str, rotation: int
    ) -> Deferred[None]:
        """Back an instance up into image_id, keeping ``rotation`` backups."""

    @_by_table
    def rebuild_instance(
        self,
        ctxt: RequestContext,
        instance: Any,
        new_pass: str | None,
        injected_files: Any,
        image_ref: str,
        orig_image_ref: str,
        orig_sys_metadata: Any,
        bdms: Any,
        recreate: bool = False,
        on_shared_storage: bool = False,
        host: str | None = None,
        preserve_ephemeral: bool = False,
        request_spec: Any = None,
        kwargs: Any = None,
    ) -> Deferred[None]:
        """Rebuild an instance; only the image, password, files to inject,
        preserve_ephemeral and ``kwargs`` are sent."""

    @_by_table
    def set_admin_password(
        self, ctxt: RequestContext, instance: Any, new_pass: str
    ) -> Deferred[None]:
        """Set the admin password of an instance."""

    # ------------------------------------------------------------------
    # cellsd diagnostics (1.38)

    @_by_table
    def ping(self, ctxt: RequestContext, cell_name: str | None = None) -> Deferred[Any]:
        """Round trip to one cell (a path from the connected cell, or
        relative below it): ``{"cell", "ok", "ms", "error"}``."""

    @_by_table
    def ping_all(self, ctxt: RequestContext, up: bool = False) -> Deferred[Any]:
        """Round trip to every cell below (or, with ``up``, above) the
        connected one, that one included: one row per cell."""

    @_by_table
    def tree(self, ctxt: RequestContext) -> Deferred[Any]:
        """The connected cell's view of the tree below it, with the state
        of each neighbour."""

    @_by_table
    def instance_list(
        self, ctxt: RequestContext, cell_name: str | None = None, filters: Any = None
    ) -> Deferred[Any]:
        """Every field of each instance the connected cell keeps (at the
        top, its copy of every instance), or another cell's with
        ``cell_name``; ``filters={"deleted": None}`` includes deleted ones."""

    # ------------------------------------------------------------------
    # cellsd's state-changing broadcasts with outcomes (1.39)

    @_by_table
    def instance_delete_everywhere_outcomes(
        self, ctxt: RequestContext, instance: Any, delete_type: str
    ) -> Deferred[Any]:
        """instance_delete_everywhere, waiting for every cell below the
        connected one: one row ``{"cell", "outcome", "error"}`` per cell
        (outcome ok, failed, unknown or unreachable; a row that is not ok
        stands for the cells below it too). A re-run deletes only where the
        instance is still live, so it is safe after an unknown outcome."""

    @_by_table
    def sync_instances_outcomes(
        self,
        ctxt: RequestContext,
        project_id: str | None = None,
        updated_since: Any = None,
        deleted: bool = False,
    ) -> Deferred[Any]:
        """sync_instances, waiting for every cell below the connected one:
        one row ``{"cell", "outcome", "error"}`` per cell."""
