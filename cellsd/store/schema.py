"""The cell database, as SQLAlchemy Core tables (Appendix A of behaviour.md).

Every table but ``leases`` and ``console_auth_tokens`` has ``created_at``,
``updated_at``, ``deleted_at`` and ``deleted`` (0 = live; a soft delete sets
it to the row's id, so unique constraints that include ``deleted`` let a name
be reused after a delete).

Instance metadata, system metadata and the flavor are JSON columns on
``instances`` rather than Nova's key/value side tables: they are always read
and written whole together with the instance (the top applies whole
snapshots, guarded by ``generation``), no method queries by a metadata key,
and one row per instance makes an update a single statement on both SQLite
and PostgreSQL.

This module is the *current* shape of the schema; the database is created and
changed only by the Alembic migrations in ``migrations/versions``, and a test
checks that they agree.
"""

from __future__ import annotations

import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData()


class UTCDateTime(sa.types.TypeDecorator[datetime.datetime]):
    """Timestamps are UTC: tz-aware in Python, ``timestamptz`` on PostgreSQL
    and naive UTC text on SQLite (which has no time zones)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(
        self, value: datetime.datetime | None, dialect: Dialect
    ) -> datetime.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.datetime.fromisoformat(value)
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        value = value.astimezone(datetime.UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=datetime.UTC)
        return value.astimezone(datetime.UTC)


def _soft_delete_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("created_at", UTCDateTime()),
        sa.Column("updated_at", UTCDateTime()),
        sa.Column("deleted_at", UTCDateTime()),
        sa.Column("deleted", sa.Integer, nullable=False, server_default="0"),
    ]


def _id() -> sa.Column[Any]:
    return sa.Column("id", sa.Integer, primary_key=True, autoincrement=True)


def _s(name: str, length: int = 255, *args: Any, **kw: Any) -> sa.Column[Any]:
    return sa.Column(name, sa.String(length), *args, **kw)


instances = sa.Table(
    "instances",
    metadata,
    _id(),
    _s("uuid", 36, nullable=False),
    _s("user_id"),
    _s("project_id"),
    _s("image_ref"),
    _s("kernel_id"),
    _s("ramdisk_id"),
    _s("hostname"),
    _s("display_name"),
    sa.Column("display_description", sa.Text),
    sa.Column("launch_index", sa.Integer),
    _s("key_name"),
    sa.Column("key_data", sa.Text),
    sa.Column("user_data", sa.Text),
    sa.Column("power_state", sa.Integer),
    _s("vm_state"),
    _s("task_state"),
    sa.Column("memory_mb", sa.Integer),
    sa.Column("vcpus", sa.Integer),
    sa.Column("root_gb", sa.Integer),
    sa.Column("ephemeral_gb", sa.Integer),
    _s("host"),
    _s("node"),
    _s("launched_on"),
    sa.Column("instance_type_id", sa.Integer),
    sa.Column("flavor", sa.JSON),
    _s("reservation_id"),
    sa.Column("launched_at", UTCDateTime()),
    sa.Column("terminated_at", UTCDateTime()),
    _s("availability_zone"),
    sa.Column("locked", sa.Boolean, nullable=False, server_default=sa.false()),
    _s("locked_by"),
    _s("os_type"),
    _s("architecture"),
    _s("vm_mode"),
    _s("root_device_name"),
    _s("default_ephemeral_device"),
    _s("default_swap_device"),
    _s("config_drive"),
    _s("access_ip_v4", 39),
    _s("access_ip_v6", 39),
    sa.Column("auto_disk_config", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("progress", sa.Integer),
    sa.Column("shutdown_terminate", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("disable_terminate", sa.Boolean, nullable=False, server_default=sa.false()),
    _s("cell_name"),
    sa.Column("metadata", sa.JSON),
    sa.Column("system_metadata", sa.JSON),
    sa.Column("generation", sa.Integer, nullable=False, server_default="0"),
    *_soft_delete_columns(),
    sa.UniqueConstraint("uuid", name="uniq_instances0uuid"),
    sa.Index("instances_project_id_deleted_idx", "project_id", "deleted"),
    sa.Index("instances_host_node_deleted_idx", "host", "node", "deleted"),
    sa.Index("instances_updated_at_idx", "updated_at"),
    sa.Index("instances_cell_name_idx", "cell_name"),
)

instance_info_caches = sa.Table(
    "instance_info_caches",
    metadata,
    _id(),
    sa.Column("network_info", sa.Text),
    _s(
        "instance_uuid",
        36,
        sa.ForeignKey("instances.uuid", name="instance_info_caches_instance_uuid_fkey"),
        nullable=False,
    ),
    *_soft_delete_columns(),
    sa.UniqueConstraint("instance_uuid", name="uniq_instance_info_caches0instance_uuid"),
)

instance_faults = sa.Table(
    "instance_faults",
    metadata,
    _id(),
    _s("instance_uuid", 36),
    sa.Column("code", sa.Integer, nullable=False),
    _s("message"),
    sa.Column("details", sa.Text),
    _s("host"),
    *_soft_delete_columns(),
    sa.Index(
        "instance_faults_instance_uuid_deleted_created_at_idx",
        "instance_uuid",
        "deleted",
        "created_at",
    ),
)

block_device_mapping = sa.Table(
    "block_device_mapping",
    metadata,
    _id(),
    _s("uuid", 36, nullable=False),
    _s("instance_uuid", 36),
    _s("source_type"),
    _s("destination_type"),
    _s("guest_format"),
    _s("device_type"),
    _s("disk_bus"),
    sa.Column("boot_index", sa.Integer),
    _s("device_name"),
    sa.Column("delete_on_termination", sa.Boolean, nullable=False, server_default=sa.false()),
    _s("snapshot_id", 36),
    _s("volume_id", 36),
    sa.Column("volume_size", sa.Integer),
    _s("image_id", 36),
    sa.Column("no_device", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("connection_info", sa.Text),
    *_soft_delete_columns(),
    sa.UniqueConstraint("uuid", name="uniq_block_device_mapping0uuid"),
    sa.Index("block_device_mapping_instance_uuid_device_name_idx", "instance_uuid", "device_name"),
    sa.Index("block_device_mapping_instance_uuid_volume_id_idx", "instance_uuid", "volume_id"),
)

bw_usage_cache = sa.Table(
    "bw_usage_cache",
    metadata,
    _id(),
    _s("uuid", 36),
    _s("mac"),
    sa.Column("start_period", UTCDateTime(), nullable=False),
    sa.Column("last_refreshed", UTCDateTime()),
    sa.Column("bw_in", sa.BigInteger),
    sa.Column("bw_out", sa.BigInteger),
    sa.Column("last_ctr_in", sa.BigInteger),
    sa.Column("last_ctr_out", sa.BigInteger),
    *_soft_delete_columns(),
    sa.UniqueConstraint(
        "uuid",
        "mac",
        "start_period",
        "deleted",
        name="uniq_bw_usage_cache0uuid0mac0start_period0deleted",
    ),
)

key_pairs = sa.Table(
    "key_pairs",
    metadata,
    _id(),
    _s("name", nullable=False),
    _s("user_id", nullable=False),
    _s("fingerprint"),
    sa.Column("public_key", sa.Text),
    sa.Column("type", sa.String(8), nullable=False, server_default="ssh"),
    *_soft_delete_columns(),
    sa.UniqueConstraint("user_id", "name", "deleted", name="uniq_key_pairs0user_id0name0deleted"),
)

services = sa.Table(
    "services",
    metadata,
    _id(),
    _s("host"),
    _s("binary"),
    _s("topic"),
    sa.Column("report_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
    _s("disabled_reason"),
    sa.Column("last_seen_up", UTCDateTime()),
    sa.Column("forced_down", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("version", sa.Integer, nullable=False, server_default="0"),
    *_soft_delete_columns(),
    sa.UniqueConstraint("host", "topic", "deleted", name="uniq_services0host0topic0deleted"),
    sa.UniqueConstraint("host", "binary", "deleted", name="uniq_services0host0binary0deleted"),
)

compute_nodes = sa.Table(
    "compute_nodes",
    metadata,
    _id(),
    sa.Column("service_id", sa.Integer),
    _s("host"),
    sa.Column("vcpus", sa.Integer, nullable=False, server_default="0"),
    sa.Column("memory_mb", sa.Integer, nullable=False, server_default="0"),
    sa.Column("local_gb", sa.Integer, nullable=False, server_default="0"),
    sa.Column("vcpus_used", sa.Integer, nullable=False, server_default="0"),
    sa.Column("memory_mb_used", sa.Integer, nullable=False, server_default="0"),
    sa.Column("local_gb_used", sa.Integer, nullable=False, server_default="0"),
    _s("hypervisor_type"),
    sa.Column("hypervisor_version", sa.Integer),
    _s("hypervisor_hostname"),
    sa.Column("free_ram_mb", sa.Integer),
    sa.Column("free_disk_gb", sa.Integer),
    sa.Column("current_workload", sa.Integer),
    sa.Column("running_vms", sa.Integer),
    sa.Column("cpu_info", sa.Text),
    sa.Column("disk_available_least", sa.Integer),
    _s("host_ip", 39),
    sa.Column("supported_instances", sa.JSON),
    sa.Column("metrics", sa.Text),
    sa.Column("pci_stats", sa.Text),
    sa.Column("extra_resources", sa.Text),
    sa.Column("stats", sa.JSON),
    sa.Column("numa_topology", sa.Text),
    sa.Column("ram_allocation_ratio", sa.Float),
    sa.Column("cpu_allocation_ratio", sa.Float),
    *_soft_delete_columns(),
    sa.Index("compute_nodes_host_deleted_idx", "host", "deleted"),
    sa.Index("compute_nodes_hypervisor_hostname_idx", "hypervisor_hostname"),
)

migrations = sa.Table(
    "migrations",
    metadata,
    _id(),
    _s("source_compute"),
    _s("dest_compute"),
    _s("source_node"),
    _s("dest_node"),
    _s("dest_host"),
    sa.Column("old_instance_type_id", sa.Integer),
    sa.Column("new_instance_type_id", sa.Integer),
    _s("instance_uuid", 36),
    _s("status"),
    _s("migration_type", 32),
    sa.Column("hidden", sa.Boolean, nullable=False, server_default=sa.false()),
    *_soft_delete_columns(),
    sa.Index("migrations_instance_uuid_and_status_idx", "deleted", "instance_uuid", "status"),
    sa.Index(
        "migrations_by_host_nodes_and_status_idx",
        "deleted",
        "source_compute",
        "dest_compute",
        "source_node",
        "dest_node",
        "status",
    ),
)

task_log = sa.Table(
    "task_log",
    metadata,
    _id(),
    _s("task_name", nullable=False),
    _s("state", nullable=False),
    _s("host", nullable=False),
    sa.Column("period_beginning", UTCDateTime(), nullable=False),
    sa.Column("period_ending", UTCDateTime(), nullable=False),
    _s("message", nullable=False, server_default=""),
    sa.Column("task_items", sa.Integer, server_default="0"),
    sa.Column("errors", sa.Integer, server_default="0"),
    *_soft_delete_columns(),
    sa.UniqueConstraint(
        "task_name",
        "host",
        "period_beginning",
        "period_ending",
        name="uniq_task_log0task_name0host0period_beginning0period_ending",
    ),
)

instance_actions = sa.Table(
    "instance_actions",
    metadata,
    _id(),
    _s("action"),
    _s("instance_uuid", 36),
    _s("request_id"),
    _s("user_id"),
    _s("project_id"),
    sa.Column("start_time", UTCDateTime()),
    sa.Column("finish_time", UTCDateTime()),
    _s("message"),
    *_soft_delete_columns(),
    sa.Index("instance_uuid_idx", "instance_uuid"),
    sa.Index("request_id_idx", "request_id"),
)

instance_actions_events = sa.Table(
    "instance_actions_events",
    metadata,
    _id(),
    _s("event"),
    sa.Column(
        "action_id",
        sa.Integer,
        sa.ForeignKey("instance_actions.id", name="instance_actions_events_action_id_fkey"),
    ),
    sa.Column("start_time", UTCDateTime()),
    sa.Column("finish_time", UTCDateTime()),
    _s("result"),
    sa.Column("traceback", sa.Text),
    _s("host"),
    sa.Column("details", sa.Text),
    *_soft_delete_columns(),
)

# Tokens are short-lived and removed outright, so no soft-delete columns.
console_auth_tokens = sa.Table(
    "console_auth_tokens",
    metadata,
    _id(),
    _s("token_hash", 64, nullable=False),
    _s("console_type", 64, nullable=False),
    _s("host", nullable=False),
    sa.Column("port", sa.Integer, nullable=False),
    _s("internal_access_path"),
    _s("instance_uuid", 36, nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("created_at", UTCDateTime()),
    sa.Column("updated_at", UTCDateTime()),
    sa.UniqueConstraint("token_hash", name="uniq_console_auth_tokens0token_hash"),
    sa.Index("console_auth_tokens_instance_uuid_idx", "instance_uuid"),
)

cells = sa.Table(
    "cells",
    metadata,
    _id(),
    _s("name"),
    _s("api_url"),
    _s("transport_url", nullable=False),
    sa.Column("weight_offset", sa.Float, server_default="0.0"),
    sa.Column("weight_scale", sa.Float, server_default="1.0"),
    sa.Column("is_parent", sa.Boolean, nullable=False, server_default=sa.false()),
    *_soft_delete_columns(),
    sa.UniqueConstraint("name", "deleted", name="uniq_cells0name0deleted"),
)

# One row per periodic task that only one worker of a cell may run at a time.
leases = sa.Table(
    "leases",
    metadata,
    _s("name", primary_key=True),
    _s("holder", nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
)

# Must-deliver messages waiting for a neighbour to confirm them (issue 7):
# written before the message is acknowledged locally, deleted when the
# neighbour has confirmed it. ``header`` and ``body`` are the message's wire
# form for that neighbour, so a resend after a restart is the same message.
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _s("uuid", 36, nullable=False),
    _s("neighbour", nullable=False),
    _s("method", nullable=False),
    sa.Column("header", sa.LargeBinary, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    sa.UniqueConstraint("uuid", "neighbour", name="uniq_outbox0uuid0neighbour"),
)

# The uuids of must-deliver messages this cell has accepted (stored for
# forwarding, or applied at the top), so that a resend is dropped; pruned
# after the retention the config sets.
received_messages = sa.Table(
    "received_messages",
    metadata,
    _s("uuid", 36, primary_key=True),
    _s("method", nullable=False),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.Index("received_messages_received_at_idx", "received_at"),
)

# Builds this cell owns that are not yet placed (or failed): resumed after a
# restart. ``route`` is the cell a hand-off was last sent to, so a resumed
# build asks that cell first rather than building twice elsewhere.
pending_builds = sa.Table(
    "pending_builds",
    metadata,
    _s("id", 36, primary_key=True),
    sa.Column("ctxt", sa.Text, nullable=False),
    sa.Column("build_kwargs", sa.Text, nullable=False),
    _s("route"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime()),
)
