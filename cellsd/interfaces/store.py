"""The cell store contract (cellsd.store.CellStore)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import Interface

if TYPE_CHECKING:
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

    def instance_count_in_subtree(path: str) -> Deferred[int]:
        """How many live instances belong to the cell at ``path`` or below
        it (``cell_name`` holds ``path`` as a whole run of segments)."""

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


class IDeliveryStore(Interface):
    """Durable delivery (cellsd.store.delivery): the outbox of must-deliver
    messages, the uuids of those received, and the builds a cell owns.
    Every method returns a Deferred."""

    def outbox_put(
        uuid: str,
        method: str,
        entries: Sequence[tuple[str, bytes, bytes]],
        limit: int,
        cell_name: str = "",
        received: bool = False,
    ) -> Deferred[bool]:
        """Queue message ``uuid`` for each ``(neighbour, header, body)`` in
        one transaction; with ``received`` also record the uuid, firing
        False (and queuing nothing) if it was recorded before. OutboxFull
        when the outbox would exceed ``limit`` rows."""

    def outbox_pending(neighbour: str, after_id: int = 0, limit: int = 100) -> Deferred[Any]:
        """Up to ``limit`` OutboxEntry for ``neighbour`` after row
        ``after_id``, oldest first."""

    def outbox_confirm(entry_id: int) -> Deferred[None]:
        """The neighbour confirmed the entry: delete it."""

    def outbox_failed(entry_id: int, error: str) -> Deferred[None]:
        """A send failed: count the attempt and keep the error."""

    def outbox_counts() -> Deferred[dict[str, int]]:
        """Entries waiting, per neighbour."""

    def message_was_received(uuid: str) -> Deferred[bool]:
        """Whether must-deliver message ``uuid`` was accepted here before."""

    def message_record_received(uuid: str, method: str) -> Deferred[bool]:
        """Record ``uuid`` as applied here; False if it already was."""

    def messages_prune_received(older_than: datetime.datetime) -> Deferred[int]:
        """Forget received uuids older than ``older_than``."""

    def build_put(
        build_id: str,
        ctxt: str,
        build_kwargs: str,
        limit: int | None = None,
        cell_name: str = "",
    ) -> Deferred[bool]:
        """Record a build this cell owns before scheduling it; False (and
        nothing recorded) when the id is pending or was done already.
        PendingBuildsFull when ``limit`` builds are pending."""

    def build_route(build_id: str, route: str | None) -> Deferred[None]:
        """The cell a hand-off of the build is about to go to."""

    def build_done(build_id: str) -> Deferred[None]:
        """The build was placed or failed for good: forget it (its id is
        kept with the received uuids, so a resend is recognised)."""

    def builds_pending() -> Deferred[Any]:
        """Every PendingBuild not yet done, oldest first."""
