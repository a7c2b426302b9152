"""Contracts of message methods and of the links that carry messages.

Only a method declared on ITargetedMessageMethods or IBroadcastMessageMethods
can be invoked from the wire; it receives the Message first and the
message's keyword arguments after it.
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

    def instance_digests_at_top(message: Any, digests: Any) -> Any:
        """Anti-entropy: compare the asking cell's per-project instance
        digests with the top's copies; the differing buckets' lists."""

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
        nothing was sent (the link is down), CellOutcomeUnknown when the
        connection is lost after the message was sent (it may have been
        applied), and MessageTooLarge when the message exceeds the link's
        limit (nothing is sent then).
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
