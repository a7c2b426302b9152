"""The initial schema: every table of the cell store.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Written out in full (not derived from schema.py) so that this revision stays
what it was when later revisions change the schema.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "block_device_mapping",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("instance_uuid", sa.String(length=36), nullable=True),
        sa.Column("source_type", sa.String(length=255), nullable=True),
        sa.Column("destination_type", sa.String(length=255), nullable=True),
        sa.Column("guest_format", sa.String(length=255), nullable=True),
        sa.Column("device_type", sa.String(length=255), nullable=True),
        sa.Column("disk_bus", sa.String(length=255), nullable=True),
        sa.Column("boot_index", sa.Integer(), nullable=True),
        sa.Column("device_name", sa.String(length=255), nullable=True),
        sa.Column("delete_on_termination", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("snapshot_id", sa.String(length=36), nullable=True),
        sa.Column("volume_id", sa.String(length=36), nullable=True),
        sa.Column("volume_size", sa.Integer(), nullable=True),
        sa.Column("image_id", sa.String(length=36), nullable=True),
        sa.Column("no_device", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("connection_info", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("uuid", name="uniq_block_device_mapping0uuid"),
    )
    op.create_index(
        "block_device_mapping_instance_uuid_device_name_idx",
        "block_device_mapping",
        ["instance_uuid", "device_name"],
        unique=False,
    )
    op.create_index(
        "block_device_mapping_instance_uuid_volume_id_idx",
        "block_device_mapping",
        ["instance_uuid", "volume_id"],
        unique=False,
    )
    op.create_table(
        "bw_usage_cache",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=True),
        sa.Column("mac", sa.String(length=255), nullable=True),
        sa.Column("start_period", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_refreshed", sa.DateTime(timezone=True), nullable=True),
        sa.Column("bw_in", sa.BigInteger(), nullable=True),
        sa.Column("bw_out", sa.BigInteger(), nullable=True),
        sa.Column("last_ctr_in", sa.BigInteger(), nullable=True),
        sa.Column("last_ctr_out", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "uuid",
            "mac",
            "start_period",
            "deleted",
            name="uniq_bw_usage_cache0uuid0mac0start_period0deleted",
        ),
    )
    op.create_table(
        "cells",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("api_url", sa.String(length=255), nullable=True),
        sa.Column("transport_url", sa.String(length=255), nullable=False),
        sa.Column("weight_offset", sa.Float(), server_default="0.0", nullable=True),
        sa.Column("weight_scale", sa.Float(), server_default="1.0", nullable=True),
        sa.Column("is_parent", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "deleted", name="uniq_cells0name0deleted"),
    )
    op.create_table(
        "compute_nodes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=True),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("vcpus", sa.Integer(), server_default="0", nullable=False),
        sa.Column("memory_mb", sa.Integer(), server_default="0", nullable=False),
        sa.Column("local_gb", sa.Integer(), server_default="0", nullable=False),
        sa.Column("vcpus_used", sa.Integer(), server_default="0", nullable=False),
        sa.Column("memory_mb_used", sa.Integer(), server_default="0", nullable=False),
        sa.Column("local_gb_used", sa.Integer(), server_default="0", nullable=False),
        sa.Column("hypervisor_type", sa.String(length=255), nullable=True),
        sa.Column("hypervisor_version", sa.Integer(), nullable=True),
        sa.Column("hypervisor_hostname", sa.String(length=255), nullable=True),
        sa.Column("free_ram_mb", sa.Integer(), nullable=True),
        sa.Column("free_disk_gb", sa.Integer(), nullable=True),
        sa.Column("current_workload", sa.Integer(), nullable=True),
        sa.Column("running_vms", sa.Integer(), nullable=True),
        sa.Column("cpu_info", sa.Text(), nullable=True),
        sa.Column("disk_available_least", sa.Integer(), nullable=True),
        sa.Column("host_ip", sa.String(length=39), nullable=True),
        sa.Column("supported_instances", sa.JSON(), nullable=True),
        sa.Column("metrics", sa.Text(), nullable=True),
        sa.Column("pci_stats", sa.Text(), nullable=True),
        sa.Column("extra_resources", sa.Text(), nullable=True),
        sa.Column("stats", sa.JSON(), nullable=True),
        sa.Column("numa_topology", sa.Text(), nullable=True),
        sa.Column("ram_allocation_ratio", sa.Float(), nullable=True),
        sa.Column("cpu_allocation_ratio", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "compute_nodes_host_deleted_idx", "compute_nodes", ["host", "deleted"], unique=False
    )
    op.create_index(
        "compute_nodes_hypervisor_hostname_idx",
        "compute_nodes",
        ["hypervisor_hostname"],
        unique=False,
    )
    op.create_table(
        "console_auth_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("console_type", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("internal_access_path", sa.String(length=255), nullable=True),
        sa.Column("instance_uuid", sa.String(length=36), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash", name="uniq_console_auth_tokens0token_hash"),
    )
    op.create_index(
        "console_auth_tokens_instance_uuid_idx",
        "console_auth_tokens",
        ["instance_uuid"],
        unique=False,
    )
    op.create_table(
        "instance_actions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("action", sa.String(length=255), nullable=True),
        sa.Column("instance_uuid", sa.String(length=36), nullable=True),
        sa.Column("request_id", sa.String(length=255), nullable=True),
        sa.Column("user_id", sa.String(length=255), nullable=True),
        sa.Column("project_id", sa.String(length=255), nullable=True),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finish_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("message", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("instance_uuid_idx", "instance_actions", ["instance_uuid"], unique=False)
    op.create_index("request_id_idx", "instance_actions", ["request_id"], unique=False)
    op.create_table(
        "instance_faults",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("instance_uuid", sa.String(length=36), nullable=True),
        sa.Column("code", sa.Integer(), nullable=False),
        sa.Column("message", sa.String(length=255), nullable=True),
        sa.Column("details", sa.Text(), nullable=True),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "instance_faults_instance_uuid_deleted_created_at_idx",
        "instance_faults",
        ["instance_uuid", "deleted", "created_at"],
        unique=False,
    )
    op.create_table(
        "instances",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=True),
        sa.Column("project_id", sa.String(length=255), nullable=True),
        sa.Column("image_ref", sa.String(length=255), nullable=True),
        sa.Column("kernel_id", sa.String(length=255), nullable=True),
        sa.Column("ramdisk_id", sa.String(length=255), nullable=True),
        sa.Column("hostname", sa.String(length=255), nullable=True),
        sa.Column("display_name", sa.String(length=255), nullable=True),
        sa.Column("display_description", sa.Text(), nullable=True),
        sa.Column("launch_index", sa.Integer(), nullable=True),
        sa.Column("key_name", sa.String(length=255), nullable=True),
        sa.Column("key_data", sa.Text(), nullable=True),
        sa.Column("user_data", sa.Text(), nullable=True),
        sa.Column("power_state", sa.Integer(), nullable=True),
        sa.Column("vm_state", sa.String(length=255), nullable=True),
        sa.Column("task_state", sa.String(length=255), nullable=True),
        sa.Column("memory_mb", sa.Integer(), nullable=True),
        sa.Column("vcpus", sa.Integer(), nullable=True),
        sa.Column("root_gb", sa.Integer(), nullable=True),
        sa.Column("ephemeral_gb", sa.Integer(), nullable=True),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("node", sa.String(length=255), nullable=True),
        sa.Column("launched_on", sa.String(length=255), nullable=True),
        sa.Column("instance_type_id", sa.Integer(), nullable=True),
        sa.Column("flavor", sa.JSON(), nullable=True),
        sa.Column("reservation_id", sa.String(length=255), nullable=True),
        sa.Column("launched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("terminated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("availability_zone", sa.String(length=255), nullable=True),
        sa.Column("locked", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("locked_by", sa.String(length=255), nullable=True),
        sa.Column("os_type", sa.String(length=255), nullable=True),
        sa.Column("architecture", sa.String(length=255), nullable=True),
        sa.Column("vm_mode", sa.String(length=255), nullable=True),
        sa.Column("root_device_name", sa.String(length=255), nullable=True),
        sa.Column("default_ephemeral_device", sa.String(length=255), nullable=True),
        sa.Column("default_swap_device", sa.String(length=255), nullable=True),
        sa.Column("config_drive", sa.String(length=255), nullable=True),
        sa.Column("access_ip_v4", sa.String(length=39), nullable=True),
        sa.Column("access_ip_v6", sa.String(length=39), nullable=True),
        sa.Column("auto_disk_config", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=True),
        sa.Column("shutdown_terminate", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("disable_terminate", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("cell_name", sa.String(length=255), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("system_metadata", sa.JSON(), nullable=True),
        sa.Column("generation", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("uuid", name="uniq_instances0uuid"),
    )
    op.create_index("instances_cell_name_idx", "instances", ["cell_name"], unique=False)
    op.create_index(
        "instances_host_node_deleted_idx", "instances", ["host", "node", "deleted"], unique=False
    )
    op.create_index(
        "instances_project_id_deleted_idx", "instances", ["project_id", "deleted"], unique=False
    )
    op.create_index("instances_updated_at_idx", "instances", ["updated_at"], unique=False)
    op.create_table(
        "key_pairs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=255), nullable=True),
        sa.Column("public_key", sa.Text(), nullable=True),
        sa.Column("type", sa.String(length=8), server_default="ssh", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "user_id", "name", "deleted", name="uniq_key_pairs0user_id0name0deleted"
        ),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("holder", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "migrations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("source_compute", sa.String(length=255), nullable=True),
        sa.Column("dest_compute", sa.String(length=255), nullable=True),
        sa.Column("source_node", sa.String(length=255), nullable=True),
        sa.Column("dest_node", sa.String(length=255), nullable=True),
        sa.Column("dest_host", sa.String(length=255), nullable=True),
        sa.Column("old_instance_type_id", sa.Integer(), nullable=True),
        sa.Column("new_instance_type_id", sa.Integer(), nullable=True),
        sa.Column("instance_uuid", sa.String(length=36), nullable=True),
        sa.Column("status", sa.String(length=255), nullable=True),
        sa.Column("migration_type", sa.String(length=32), nullable=True),
        sa.Column("hidden", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "migrations_by_host_nodes_and_status_idx",
        "migrations",
        ["deleted", "source_compute", "dest_compute", "source_node", "dest_node", "status"],
        unique=False,
    )
    op.create_index(
        "migrations_instance_uuid_and_status_idx",
        "migrations",
        ["deleted", "instance_uuid", "status"],
        unique=False,
    )
    op.create_table(
        "services",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("binary", sa.String(length=255), nullable=True),
        sa.Column("topic", sa.String(length=255), nullable=True),
        sa.Column("report_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("disabled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("disabled_reason", sa.String(length=255), nullable=True),
        sa.Column("last_seen_up", sa.DateTime(timezone=True), nullable=True),
        sa.Column("forced_down", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("version", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("host", "binary", "deleted", name="uniq_services0host0binary0deleted"),
        sa.UniqueConstraint("host", "topic", "deleted", name="uniq_services0host0topic0deleted"),
    )
    op.create_table(
        "task_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task_name", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=255), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("period_beginning", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_ending", sa.DateTime(timezone=True), nullable=False),
        sa.Column("message", sa.String(length=255), server_default="", nullable=False),
        sa.Column("task_items", sa.Integer(), server_default="0", nullable=True),
        sa.Column("errors", sa.Integer(), server_default="0", nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "task_name",
            "host",
            "period_beginning",
            "period_ending",
            name="uniq_task_log0task_name0host0period_beginning0period_ending",
        ),
    )
    op.create_table(
        "instance_actions_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event", sa.String(length=255), nullable=True),
        sa.Column("action_id", sa.Integer(), nullable=True),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finish_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", sa.String(length=255), nullable=True),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("details", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted", sa.Integer(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["action_id"], ["instance_actions.id"], name="instance_actions_events_action_id_fkey"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "instance_info_caches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("network_info", sa.Text(), nullable=True),
        sa.Column("instance_uuid", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted", sa.Integer(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_uuid"], ["instances.uuid"], name="instance_info_caches_instance_uuid_fkey"
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("instance_uuid", name="uniq_instance_info_caches0instance_uuid"),
    )


def downgrade() -> None:
    op.drop_table("instance_info_caches")
    op.drop_table("instance_actions_events")
    op.drop_table("task_log")
    op.drop_table("services")
    op.drop_table("migrations")
    op.drop_table("leases")
    op.drop_table("key_pairs")
    op.drop_table("instances")
    op.drop_table("instance_faults")
    op.drop_table("instance_actions")
    op.drop_table("console_auth_tokens")
    op.drop_table("compute_nodes")
    op.drop_table("cells")
    op.drop_table("bw_usage_cache")
    op.drop_table("block_device_mapping")
