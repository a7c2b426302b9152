"""The contracts between cellsd's parts, as zope interfaces.

A message can invoke only a method declared on :class:`ITargetedMessageMethods`
or :class:`IBroadcastMessageMethods`: the runner looks names up in the
interface, never with ``getattr`` on an arbitrary name. Adding a message
method means declaring it here and writing its body on the implementation.

Every message method receives the :class:`~cellsd.messaging.message.Message`
first (for its context and routing path) and the message's keyword
arguments after it. It may return a plain value, a Deferred or a coroutine.
"""

from __future__ import annotations

from typing import Any

from zope.interface import Attribute, Interface


class ITargetedMessageMethods(Interface):
    """Work done when a targeted message reaches its target cell."""

    def ping(message: Any, detail: bool = False) -> Any:
        """Diagnostic: answer with this cell's name, path and hop count;
        with ``detail``, also its status (capacities, each child's link,
        mute state and last-seen age) for the tree view and status page."""

    def update_capabilities(message: Any, cell_name: str, capabilities: Any) -> Any:
        """A neighbour reports its capabilities (name -> list of values)."""

    def update_capacities(message: Any, cell_name: str, capacities: Any) -> Any:
        """A neighbour reports its aggregated capacities."""

    def announce_capabilities(message: Any) -> Any:
        """A parent asks this cell to push its capabilities upward."""

    def announce_capacities(message: Any) -> Any:
        """A parent asks this cell to push its capacities upward."""

    # -- behaviour §3.2: work at the target cell (cellsd.messaging.methods_targeted)

    def build_instances(message: Any, build_inst_kwargs: Any) -> Any:
        """Schedule and build instances in or below this cell (§6)."""

    def run_compute_api_method(message: Any, method_info: Any) -> Any:
        """Call an allow-listed compute API method on an instance here."""

    def service_get_by_compute_host(message: Any, host_name: str) -> Any:
        """The nova-compute service of a host; ComputeHostNotFound."""

    def get_host_uptime(message: Any, host_name: str) -> Any:
        """A compute host's uptime line; ComputeServiceUnavailable if down."""

    def service_update(message: Any, host_name: str, binary: str, params_to_update: Any) -> Any:
        """Change a service (e.g. disable it); the updated Service."""

    def service_delete(message: Any, service_id: Any) -> Any:
        """Delete a service; ServiceNotFound."""

    def proxy_rpc_to_manager(
        message: Any, host_name: str, rpc_message: Any, topic: str, timeout: Any
    ) -> Any:
        """Pass an RPC to a compute host's manager; its result if a call."""

    def compute_node_get(message: Any, compute_id: Any) -> Any:
        """A compute node by id; ComputeHostNotFound."""

    def actions_get(message: Any, instance_uuid: str) -> Any:
        """The instance's actions (dicts), newest first."""

    def action_get_by_request_id(message: Any, instance_uuid: str, request_id: str) -> Any:
        """One action (a dict) of the instance, or None."""

    def action_events_get(message: Any, action_id: Any) -> Any:
        """The events (dicts) of an action, newest first."""

    def validate_console_port(
        message: Any, instance_uuid: str, console_port: Any, console_type: str
    ) -> Any:
        """Whether the port is the instance's console port of that type."""

    def get_migrations(message: Any, filters: Any) -> Any:
        """Migrations of this cell matching the filters."""

    def task_log_get_all(
        message: Any,
        task_name: str,
        period_beginning: Any,
        period_ending: Any,
        host: Any = None,
        state: Any = None,
    ) -> Any:
        """Task log rows (dicts) of this cell."""

    def instance_update_from_api(
        message: Any,
        instance: Any,
        expected_vm_state: Any,
        expected_task_state: Any,
        admin_state_reset: Any,
    ) -> Any:
        """Apply the API cell's change of an instance owned here (§3.4)."""

    def instance_get_all(message: Any, filters: Any = None) -> Any:
        """cellsd diagnostics: this cell's instances (the top's view at the top)."""

    def start_instance(message: Any, instance: Any) -> Any:
        """Start an instance of this cell."""

    def stop_instance(message: Any, instance: Any, clean_shutdown: Any = True) -> Any:
        """Stop an instance; waits for it when the caller waits."""

    def reboot_instance(message: Any, instance: Any, reboot_type: str) -> Any:
        """Reboot (SOFT or HARD) an instance of this cell."""

    def suspend_instance(message: Any, instance: Any) -> Any:
        """Suspend an instance of this cell."""

    def resume_instance(message: Any, instance: Any) -> Any:
        """Resume an instance of this cell."""

    def terminate_instance(message: Any, instance: Any, delete_type: str = "delete") -> Any:
        """Delete (delete_type delete or force_delete) an instance."""

    def soft_delete_instance(message: Any, instance: Any) -> Any:
        """Soft-delete an instance of this cell."""

    def pause_instance(message: Any, instance: Any) -> Any:
        """Pause an instance of this cell."""

    def unpause_instance(message: Any, instance: Any) -> Any:
        """Unpause an instance of this cell."""

    def resize_instance(
        message: Any,
        instance: Any,
        flavor: Any,
        extra_instance_updates: Any,
        clean_shutdown: Any = True,
    ) -> Any:
        """Resize (or, with no flavor, cold-migrate) an instance."""

    def live_migrate_instance(
        message: Any, instance: Any, block_migration: Any, disk_over_commit: Any, host_name: Any
    ) -> Any:
        """Live-migrate an instance to another host of this cell."""

    def revert_resize(message: Any, instance: Any) -> Any:
        """Revert a resize waiting for confirmation."""

    def confirm_resize(message: Any, instance: Any) -> Any:
        """Confirm a resize waiting for confirmation."""

    def reset_network(message: Any, instance: Any) -> Any:
        """Reset an instance's networking."""

    def inject_network_info(message: Any, instance: Any) -> Any:
        """Inject networking into an instance."""

    def snapshot_instance(message: Any, instance: Any, image_id: str) -> Any:
        """Snapshot an instance into an image the API cell created."""

    def backup_instance(
        message: Any, instance: Any, image_id: str, backup_type: str, rotation: Any
    ) -> Any:
        """Back an instance up, keeping the newest ``rotation`` backups."""

    def rebuild_instance(
        message: Any,
        instance: Any,
        image_href: Any,
        admin_password: Any,
        files_to_inject: Any,
        preserve_ephemeral: Any,
        kwargs: Any,
    ) -> Any:
        """Rebuild an instance from an image."""

    def set_admin_password(message: Any, instance: Any, new_pass: Any) -> Any:
        """Set an instance's admin password."""


class IBroadcastMessageMethods(Interface):
    """Work done at every cell a broadcast reaches."""

    def ping(message: Any, detail: bool = False) -> Any:
        """Diagnostic: answer with this cell's name, path and hop count;
        with ``detail``, also its status (capacities, each child's link,
        mute state and last-seen age) for the tree view and status page."""

    # -- behaviour §3.3 (cellsd.messaging.methods_broadcast); *_at_top: top only

    def instance_update_at_top(message: Any, instance: Any) -> Any:
        """Apply the owning cell's report of an instance, if newer (§3.4)."""

    def instance_destroy_at_top(message: Any, instance: Any) -> Any:
        """Delete the top's copy of an instance."""

    def instance_delete_everywhere(message: Any, instance: Any, delete_type: str) -> Any:
        """Delete (soft or hard) the instance wherever it lives."""

    def instance_fault_create_at_top(message: Any, instance_fault: Any) -> Any:
        """Record an instance fault at the top."""

    def bw_usage_update_at_top(message: Any, bw_update_info: Any) -> Any:
        """Upsert bandwidth usage at the top."""

    def sync_instances(message: Any, project_id: Any, updated_since: Any, deleted: Any) -> Any:
        """Report every (matching) instance of this cell to the top."""

    def service_get_all(message: Any, filters: Any = None) -> Any:
        """This cell's services matching the filters."""

    def compute_node_get_all(message: Any, hypervisor_match: Any = None) -> Any:
        """This cell's compute nodes (hypervisor_hostname containing the match)."""

    def compute_node_stats(message: Any) -> Any:
        """Totals over this cell's enabled compute nodes."""

    def task_log_get_all(
        message: Any,
        task_name: str,
        period_beginning: Any,
        period_ending: Any,
        host: Any = None,
        state: Any = None,
    ) -> Any:
        """Task log rows (dicts) of this cell."""

    def consoleauth_delete_tokens(message: Any, instance_uuid: str) -> Any:
        """Forget the console tokens of an instance at the top."""

    def bdm_update_or_create_at_top(message: Any, bdm: Any, create: Any = None) -> Any:
        """Create or update a block device mapping at the top."""

    def bdm_destroy_at_top(
        message: Any, instance_uuid: str, device_name: Any = None, volume_id: Any = None
    ) -> Any:
        """Delete block device mappings at the top."""

    def get_migrations(message: Any, filters: Any) -> Any:
        """Migrations of this cell matching the filters."""

    def get_keypair_at_top(message: Any, user_id: str, name: str) -> Any:
        """A key pair at the top, or None."""


class ICellLink(Interface):
    """A live connection to one neighbour cell."""

    neighbour = Attribute("The neighbour's short name.")
    is_parent = Attribute("True when the neighbour is our parent.")

    def deliver(header: bytes, body: bytes, timeout: float | None) -> Any:
        """Send one message; a Deferred firing with the encoded responses
        (a JSON array) when an answer is wanted, or ``b"[]"``.

        Fails with CellTimeout after ``timeout`` seconds, CellUnreachable when
        the connection is lost, and MessageTooLarge when the message exceeds
        the link's limit (nothing is sent then).
        """


class INeighbourLinks(Interface):
    """Finds the live link to a neighbour; what the runner sends through."""

    def link_for(name: str, is_parent: bool) -> ICellLink | None:
        """A live link to the named parent or child, or None when none is up."""


class IMessageReceiver(Interface):
    """What a link hands incoming messages to (the MessageRunner)."""

    def receive(header: bytes, body: bytes, sender: str, from_parent: bool) -> Any:
        """Process a message from a neighbour; a Deferred firing with the
        encoded responses (a JSON array, ``b"[]"`` when none are wanted)."""


class IMessageRelay(Interface):
    """Optionally provided by a receiver: the relay fast path, letting a
    link forward a passing message's body and answer as raw bytes."""

    def relay(header: bytes, sender: str, from_parent: bool) -> Any:
        """A :class:`~cellsd.messaging.relay.Relay` (next link, rewritten
        header, wait) for a targeted call that only passes through this
        cell, or None when the cell must process the message itself.
        Raises MalformedMessage like ``receive``."""

    def relay_failed(relay: Any, failure: Any) -> bytes:
        """The encoded answer (failure Responses) for a relayed message
        that could not be sent on or got no answer in time."""


# --------------------------------------------------------------------------
# Local RPC API (CellsAPI <-> the local cellsd)

# Appended after the other contracts, so these imports sit here rather than
# at the top; annotations are lazy, the names are only for type checkers.
from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from cellsd.context import RequestContext


class IRPCTransport(Interface):
    """Carries CellsAPI requests to the local cellsd (AMP, AMQP, in memory).

    ``kwargs`` are encoded with :func:`cellsd.messaging.message.dumps` (objects
    in their versioned primitive form). ``method`` is the RPC name and
    ``version`` the API version the request is sent as; the CellsAPI has
    already checked it against the caller's version cap.
    """

    def call(
        ctxt: RequestContext,
        method: str,
        version: str,
        kwargs: dict[str, Any],
        timeout: float,
    ) -> Deferred[Any]:
        """Send a request and fire with the server's result.

        Fails with the server's (rebuilt) exception, or with a timeout error
        when no answer arrives within ``timeout`` seconds.
        """

    def cast(
        ctxt: RequestContext, method: str, version: str, kwargs: dict[str, Any]
    ) -> Deferred[None]:
        """Send a request without waiting for its result; fire with None once
        the transport has accepted the message."""

    def close() -> None:
        """Release the connection; later requests fail with NotConnected."""


# --------------------------------------------------------------------------
# The cell store (cellsd.store.CellStore)

import typing as _typing  # noqa: E402

if _typing.TYPE_CHECKING:
    import datetime
    from collections.abc import Mapping, Sequence

    from twisted.internet.defer import Deferred

    from cellsd.objects import (
        BandwidthUsage,
        BlockDeviceMapping,
        Cell,
        ComputeNode,
        Instance,
        InstanceAction,
        InstanceActionEvent,
        InstanceFault,
        KeyPair,
        Migration,
        Service,
        TaskLog,
    )


class ICellStore(Interface):
    """A cell's database. Every method returns a Deferred and runs its SQL
    off the reactor thread; errors are the typed CellsErrors of
    cellsd.errors (InstanceNotFound, ComputeHostNotFound, ...). Objects come
    back with every stored field set and no changes; row ids are local to
    this cell and never used as keys of another cell's rows.
    """

    # -- lifecycle --

    def start() -> Deferred[None]:
        """Start the pool, connect, and apply pending migrations."""

    def stop() -> Deferred[None]:
        """Close every connection, then stop (and join) our thread pool."""

    # -- instances, info caches, faults --

    def instance_create(instance: Instance, generation: int | None = None) -> Deferred[Instance]:
        """Store a new instance (a uuid is made if it has none); InstanceExists
        if the uuid is taken. ``generation`` defaults to the instance's own if
        set, else 1: the owning cell's creation is its first change. An API
        cell that records a boot request before any cell owns it passes 0, so
        that the owning cell's first report always applies."""

    def instance_get_by_uuid(instance_uuid: str, read_deleted: str = "no") -> Deferred[Instance]:
        """The instance, with its info cache; InstanceNotFound."""

    def instance_get_all_by_filters(
        filters: Mapping[str, Any] | None = None, limit: int | None = None
    ) -> Deferred[list[Instance]]:
        """Instances matching ``filters``, live ones first, oldest first.

        ``deleted`` (True: only soft-deleted, False: only live, absent: both),
        ``changes-since`` (datetime or ISO-8601: created, updated or deleted
        since), ``uuid`` (one or a list), and any instance column (a value or
        a list of values), e.g. ``project_id``, ``host``, ``cell_name``.
        Unknown keys are ignored."""

    def instance_update(
        instance_uuid: str,
        updates: Mapping[str, Any] | Instance,
        expected_vm_state: Any = None,
        expected_task_state: Any = None,
    ) -> Deferred[Instance]:
        """Change a live instance in the owning cell and bump its generation.

        ``updates`` is a dict of fields, or an Instance whose changed fields
        are written. ``expected_vm_state`` / ``expected_task_state`` (a state
        or a list; ``[None]`` expects no task) make the write conditional:
        UnexpectedVMStateError / UnexpectedTaskStateError when the stored
        state differs. InstanceNotFound when there is no live instance."""

    def instance_apply_update(instance: Instance, generation: int | None = None) -> Deferred[bool]:
        """At the top: apply the owning cell's report of ``instance`` only if
        its generation (``generation``, else the instance's) is newer than the
        stored one; create the row if there is none. Writes every set field
        but id, uuid, metadata (the API cell's) and the soft-delete columns,
        soft-deleted rows included. True when something was written."""

    def instance_upsert_at_top(instance: Instance) -> Deferred[Instance]:
        """At the top: write ``instance`` keyed by uuid whatever the stored
        generation (a full repair), creating it if missing; its row id is
        ignored. Returns the stored instance."""

    def instance_destroy(instance_uuid: str) -> Deferred[Instance]:
        """Soft-delete a live instance (and its info cache and block device
        mappings), bumping its generation; returns the deleted instance.
        InstanceNotFound if there is no live instance with that uuid."""

    def instance_info_cache_update(instance_uuid: str, network_info: Any) -> Deferred[Instance]:
        """Replace the network_info of a live instance (bumping its
        generation); returns the instance. InstanceNotFound."""

    def instance_info_cache_get(instance_uuid: str) -> Deferred[Any]:
        """The decoded network_info; InstanceInfoCacheNotFound."""

    def instance_fault_create(fault: InstanceFault | Mapping[str, Any]) -> Deferred[InstanceFault]:
        """Record a fault (its row id, if any, is another cell's and dropped)."""

    def instance_fault_get_by_instance_uuids(
        instance_uuids: Sequence[str], latest: bool = False
    ) -> Deferred[dict[str, list[InstanceFault]]]:
        """Faults per instance uuid, newest first (only the newest if
        ``latest``); every asked uuid is a key."""

    # -- block device mappings, bandwidth usage, key pairs --

    def bdm_create(bdm: BlockDeviceMapping | Mapping[str, Any]) -> Deferred[BlockDeviceMapping]:
        """Store a new mapping; a uuid is made if it has none; its row id (if
        any) is another cell's and ignored. A new swap mapping replaces the
        instance's other swap mappings."""

    def bdm_update_or_create(
        bdm: BlockDeviceMapping | Mapping[str, Any],
    ) -> Deferred[BlockDeviceMapping]:
        """Update the mapping with the same uuid (soft-deleted ones included),
        or create it. A mapping without uuid (from an older cell) matches the
        live mapping of its instance with the same device_name, if any."""

    def bdm_get_by_uuid(bdm_uuid: str) -> Deferred[BlockDeviceMapping]:
        """A live mapping by uuid; BlockDeviceMappingNotFound."""

    def bdm_get_all_by_instance(instance_uuid: str) -> Deferred[list[BlockDeviceMapping]]:
        """The live mappings of an instance, by boot index then id."""

    def bdm_destroy(
        instance_uuid: str, device_name: str | None = None, volume_id: str | None = None
    ) -> Deferred[int]:
        """Soft-delete the instance's live mappings with ``device_name``, else
        those with ``volume_id``; with neither, nothing. Returns how many."""

    def bdm_destroy_by_uuid(bdm_uuid: str) -> Deferred[int]:
        """Soft-delete the live mapping with that uuid; returns 0 or 1."""

    def bw_usage_update(
        instance_uuid: str,
        mac: str,
        start_period: datetime.datetime | str,
        bw_in: int,
        bw_out: int,
        last_ctr_in: int,
        last_ctr_out: int,
        last_refreshed: datetime.datetime | str | None = None,
    ) -> Deferred[BandwidthUsage]:
        """Upsert the usage row keyed by (instance uuid, mac, start_period);
        ``last_refreshed`` defaults to now."""

    def bw_usage_get_by_uuids(
        instance_uuids: Sequence[str], start_period: datetime.datetime | str
    ) -> Deferred[list[BandwidthUsage]]:
        """Usage of the instances for the period starting at ``start_period``."""

    def key_pair_create(keypair: KeyPair) -> Deferred[KeyPair]:
        """Store a key pair; KeyPairExists if the user has one of that name."""

    def key_pair_get(user_id: str, name: str) -> Deferred[KeyPair]:
        """The user's key pair of that name; KeypairNotFound."""

    def key_pair_get_all_by_user(user_id: str) -> Deferred[list[KeyPair]]:
        """The user's live key pairs by name."""

    def key_pair_destroy(user_id: str, name: str) -> Deferred[None]:
        """Soft-delete the user's key pair of that name; KeypairNotFound."""

    # -- services, compute nodes, migrations, task logs --

    def service_create(service: Service) -> Deferred[Service]:
        """Register a service; ServiceBinaryExists / ServiceTopicExists when
        the host already has a live one with that binary / topic."""

    def service_get(service_id: int) -> Deferred[Service]:
        """A live service by id; ServiceNotFound."""

    def service_get_all(disabled: bool | None = None) -> Deferred[list[Service]]:
        """Live services, by id; only enabled or disabled ones when
        ``disabled`` is False / True."""

    def service_get_by_host_and_binary(host: str, binary: str) -> Deferred[Service]:
        """The live service of ``binary`` on ``host``; HostBinaryNotFound."""

    def service_get_by_compute_host(host: str) -> Deferred[Service]:
        """The live nova-compute service on ``host``; ComputeHostNotFound."""

    def service_update(service_id: int, values: Mapping[str, Any] | Service) -> Deferred[Service]:
        """Change a live service (a dict of fields, or a Service's changed
        fields), e.g. ``{"disabled": True, "disabled_reason": "..."}``;
        ServiceNotFound."""

    def service_destroy(service_id: int) -> Deferred[None]:
        """Soft-delete a live service and its compute nodes; ServiceNotFound."""

    def compute_node_create(node: ComputeNode) -> Deferred[ComputeNode]:
        """Store a compute node (its id, if any, is ignored)."""

    def compute_node_get(compute_id: int) -> Deferred[ComputeNode]:
        """A live compute node by id; ComputeHostNotFound."""

    def compute_node_get_all(hypervisor_match: str | None = None) -> Deferred[list[ComputeNode]]:
        """Live compute nodes by id; with ``hypervisor_match``, those whose
        hypervisor_hostname contains it (LIKE, with % and _ taken literally)."""

    def compute_node_get_all_by_host(host: str) -> Deferred[list[ComputeNode]]:
        """The live compute nodes of a host; ComputeHostNotFound if none."""

    def compute_node_update(
        compute_id: int, values: Mapping[str, Any] | ComputeNode
    ) -> Deferred[ComputeNode]:
        """Change a live compute node; ComputeHostNotFound."""

    def compute_node_delete(compute_id: int) -> Deferred[None]:
        """Soft-delete a live compute node; ComputeHostNotFound."""

    def compute_node_statistics() -> Deferred[dict[str, int]]:
        """Totals over the live compute nodes whose host has a live, enabled
        nova-compute service: ``count`` and the sums of vcpus, memory_mb,
        local_gb, their *_used, free_ram_mb, free_disk_gb, current_workload,
        running_vms and disk_available_least (0 for nothing or NULL)."""

    def migration_create(migration: Migration) -> Deferred[Migration]:
        """Record a migration (its id, if any, is ignored)."""

    def migration_get(migration_id: int) -> Deferred[Migration]:
        """A live migration by id; MigrationNotFound."""

    def migration_update(
        migration_id: int, values: Mapping[str, Any] | Migration
    ) -> Deferred[Migration]:
        """Change a live migration (e.g. its status); MigrationNotFound."""

    def migration_get_all_by_filters(
        filters: Mapping[str, Any] | None = None,
    ) -> Deferred[list[Migration]]:
        """Live migrations by id. Filters: ``status`` (one or a list),
        ``host`` (source or destination compute), ``source_compute``,
        ``migration_type``, ``hidden``, ``instance_uuid``; other keys (such as
        ``cell_name``) are ignored."""

    def task_log_create(log: TaskLog) -> Deferred[TaskLog]:
        """Record a task log row; TaskAlreadyRunning if the same task, host
        and period is already recorded."""

    def task_log_begin_task(
        task_name: str,
        period_beginning: datetime.datetime | str,
        period_ending: datetime.datetime | str,
        host: str,
        task_items: int | None = None,
        message: str | None = None,
    ) -> Deferred[TaskLog]:
        """Record that a task started for a period (state RUNNING)."""

    def task_log_end_task(
        task_name: str,
        period_beginning: datetime.datetime | str,
        period_ending: datetime.datetime | str,
        host: str,
        errors: int,
        message: str | None = None,
    ) -> Deferred[TaskLog]:
        """Mark a task run DONE with its error count; TaskNotRunning when no
        run of it was recorded."""

    def task_log_get_all(
        task_name: str,
        period_beginning: datetime.datetime | str,
        period_ending: datetime.datetime | str,
        host: str | None = None,
        state: str | None = None,
    ) -> Deferred[list[TaskLog]]:
        """Task logs with exactly that task name and period, and that host /
        state when given (behaviour §3.2), by id."""

    # -- instance actions and events --

    def action_start(action: InstanceAction) -> Deferred[InstanceAction]:
        """Record an action (start_time defaults to now)."""

    def action_finish(
        instance_uuid: str, request_id: str, message: str | None = None
    ) -> Deferred[InstanceAction]:
        """Set the finish time (and message) of the newest action of that
        request on the instance; InstanceActionNotFound."""

    def actions_get(instance_uuid: str) -> Deferred[list[InstanceAction]]:
        """The instance's actions, newest first (created_at, then id)."""

    def action_get_by_request_id(
        instance_uuid: str, request_id: str
    ) -> Deferred[InstanceAction | None]:
        """The newest action of that request on the instance, or None."""

    def action_event_start(event: InstanceActionEvent) -> Deferred[InstanceActionEvent]:
        """Record the start of an event of an action (``action_id`` set;
        start_time defaults to now)."""

    def action_event_finish(
        action_id: int,
        event: str,
        result: str,
        traceback: str | None = None,
        details: str | None = None,
    ) -> Deferred[InstanceActionEvent]:
        """Finish the newest event of that name of the action with ``result``
        (e.g. Success, Error); InstanceActionEventNotFound."""

    def action_events_get(action_id: int) -> Deferred[list[InstanceActionEvent]]:
        """The action's events, newest first (created_at, then id)."""

    # -- cells table, console auth tokens, leases --

    def cell_create(values: Mapping[str, Any] | Cell) -> Deferred[Cell]:
        """Record a neighbour cell (name, api_url, transport_url,
        weight_offset, weight_scale, is_parent); CellExists."""

    def cell_update(name: str, values: Mapping[str, Any]) -> Deferred[Cell]:
        """Change a live cell record; CellNotFound."""

    def cell_delete(name: str) -> Deferred[int]:
        """Soft-delete the live cell record of that name; how many (0 or 1)."""

    def cell_get(name: str) -> Deferred[Cell]:
        """The live cell record of that name; CellNotFound."""

    def cell_get_all() -> Deferred[list[Cell]]:
        """Every live cell record, by name."""

    def console_auth_token_create(
        instance_uuid: str,
        console_type: str,
        host: str,
        port: int,
        ttl: float,
        internal_access_path: str | None = None,
        token: str | None = None,
    ) -> Deferred[str]:
        """Authorise a console connection for ``ttl`` seconds; returns the
        token (made here unless given). Only its hash is stored."""

    def console_auth_token_validate(token: str) -> Deferred[dict[str, Any] | None]:
        """The connection details an unexpired token authorises, or None."""

    def console_auth_token_delete_all_for_instance(instance_uuid: str) -> Deferred[int]:
        """Remove every console token of the instance; how many."""

    def console_auth_token_delete_expired() -> Deferred[int]:
        """Remove expired console tokens; how many."""

    def try_lease(name: str, holder: str, ttl: float) -> Deferred[bool]:
        """Take or renew the lease ``name`` for ``ttl`` seconds. True when
        ``holder`` holds it afterwards: it was free, expired, or already
        ``holder``'s. Atomic across workers sharing the database (a
        conditional UPDATE, else an INSERT that loses to a concurrent one)."""

    def release_lease(name: str, holder: str) -> Deferred[bool]:
        """Give the lease up if ``holder`` holds it; True if it did."""


# --------------------------------------------------------------------------
# A cell's compute layer (cellsd.compute.simulated.SimulatedCompute) and the
# cells scheduler's contract. ``instance`` is an Instance read from this
# cell's store; actions check its state and return once the action is under
# way (its task_state set), the rest runs on: settled() says when it ends.


class IComputeAPI(Interface):
    """The compute layer of a cell: its hosts and the state machine of its
    instances. A refused action raises InstanceInvalidState."""

    def startup() -> Deferred[None]:
        """Register the hosts as services and compute nodes; recount claims."""

    def shutdown() -> Deferred[None]:
        """Stop the timers and wait for the actions under way."""

    def settled() -> Deferred[None]:
        """Fires when no action is under way."""

    def capacities() -> dict[str, Any]:
        """This cell's capacities (behaviour §5.4), from its enabled hosts."""

    def can_host(flavor: Any) -> bool:
        """Whether some enabled host has room for the flavor now."""

    def build_instances(
        ctxt: RequestContext, instances: Sequence[Any], **build_kwargs: Any
    ) -> Deferred[list[Instance]]:
        """Create the instances here, report them up, and build each on a
        host (first fit); returns the created records."""

    def start(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Power on a stopped instance."""

    def stop(
        ctxt: RequestContext, instance: Instance, do_cast: bool = True, clean_shutdown: bool = True
    ) -> Deferred[Any]:
        """Power off; with ``do_cast`` false, fires once stopped."""

    def reboot(ctxt: RequestContext, instance: Instance, reboot_type: str) -> Deferred[Instance]:
        """SOFT or HARD reboot."""

    def pause(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Pause."""

    def unpause(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Unpause."""

    def suspend(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Suspend."""

    def resume(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Resume."""

    def resize(
        ctxt: RequestContext,
        instance: Instance,
        flavor: Any = None,
        clean_shutdown: bool = True,
        **extra_instance_updates: Any,
    ) -> Deferred[Instance]:
        """Resize to ``flavor`` (cold-migrate when None), recording a migration."""

    def confirm_resize(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Keep the new size; free the old host's share."""

    def revert_resize(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Go back to the old size and host."""

    def live_migrate(
        ctxt: RequestContext,
        instance: Instance,
        block_migration: Any,
        disk_over_commit: Any,
        host_name: str | None,
    ) -> Deferred[Instance]:
        """Move a running instance to another host (first fit when None)."""

    def rebuild(
        ctxt: RequestContext,
        instance: Instance,
        image_href: Any,
        admin_password: Any,
        files_to_inject: Any = None,
        **kwargs: Any,
    ) -> Deferred[Instance]:
        """Rebuild from an image."""

    def snapshot(ctxt: RequestContext, instance: Instance, image_id: str) -> Deferred[Instance]:
        """Snapshot into an image."""

    def backup(
        ctxt: RequestContext, instance: Instance, image_id: str, backup_type: str, rotation: int
    ) -> Deferred[Instance]:
        """Back up, keeping the newest ``rotation`` backups of that type."""

    def set_admin_password(
        ctxt: RequestContext, instance: Instance, password: Any = None
    ) -> Deferred[Instance]:
        """Set the admin password."""

    def reset_network(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Reset networking (rewrites the info cache)."""

    def inject_network_info(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Inject networking into the guest."""

    def soft_delete(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Soft-delete (keeps the resources)."""

    def delete(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Delete; frees the resources and reports the destroy up."""

    def force_delete(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Delete, soft-deleted or not."""

    def lock(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Lock against actions by non-admins."""

    def unlock(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Unlock."""

    def get_console_output(
        ctxt: RequestContext, instance: Instance, tail_length: int | None = None
    ) -> Deferred[str]:
        """The instance's console log."""

    def get_console(
        ctxt: RequestContext, instance: Instance, console_type: str
    ) -> Deferred[dict[str, Any]]:
        """Connection details of the instance's console of that type."""

    def validate_console_port(
        ctxt: RequestContext, instance: Instance, port: Any, console_type: str
    ) -> Deferred[bool]:
        """Whether ``port`` is the instance's console port of that type."""

    def get_host_uptime(ctxt: RequestContext, host_name: str) -> Deferred[str]:
        """A host's uptime line; ComputeServiceUnavailable when it is down."""

    def host_rpc(
        ctxt: RequestContext, host_name: str, method: str, args: Mapping[str, Any]
    ) -> Deferred[Any]:
        """A compute-manager RPC to one host (allow-listed methods)."""


class ICellScheduler(Interface):
    """Decides where build_instances goes from this cell (behaviour §6)."""

    def build_instances(message: Any, build_inst_kwargs: Mapping[str, Any]) -> Deferred[Any]:
        """Build here or hand the request to a child cell; fires with where
        the build went (None once it was seen through here)."""


class ICellFilter(Interface):
    """A cells scheduler filter (behaviour §6.3), named in ``[scheduler]
    filters`` by :attr:`name` or by dotted path (``package.module.Class``).
    Filters run in the configured order on every cell the build reaches."""

    name = Attribute("The name ``[scheduler] filters`` lists the filter by.")

    def filter_all(cells: Sequence[Any], request: Any) -> Sequence[Any]:
        """The candidate cells (CellState) that pass, in their order, for a
        cellsd.scheduler.request.SchedulingRequest. Must not change the
        request; a request it refuses raises a CellsError (not retried)."""


class ICellWeigher(Interface):
    """A cells scheduler weigher (behaviour §6.4), named in ``[scheduler]
    weighers`` by :attr:`name` or by dotted path. Each cell's raw value is
    normalized to [0, 1] over the candidates of one request when
    :attr:`normalize` is true, then multiplied by the configured (else the
    default) multiplier and added to the cell's weight."""

    name = Attribute("The name ``[scheduler] weighers`` lists the weigher by.")
    multiplier = Attribute("The default multiplier (float).")
    normalize = Attribute("Whether raw values are normalized per request (bool).")

    def weigh(cell: Any, request: Any) -> float:
        """The raw value of one candidate cell (CellState) for the request."""
