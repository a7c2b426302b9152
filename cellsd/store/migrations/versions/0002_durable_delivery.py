"""Durable delivery: the outbox, received message uuids, pending builds.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("neighbour", sa.String(length=255), nullable=False),
        sa.Column("method", sa.String(length=255), nullable=False),
        sa.Column("header", sa.LargeBinary(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("uuid", "neighbour", name="uniq_outbox0uuid0neighbour"),
    )
    op.create_table(
        "received_messages",
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("method", sa.String(length=255), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("uuid"),
    )
    op.create_index(
        "received_messages_received_at_idx", "received_messages", ["received_at"], unique=False
    )
    op.create_table(
        "pending_builds",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("ctxt", sa.Text(), nullable=False),
        sa.Column("build_kwargs", sa.Text(), nullable=False),
        sa.Column("route", sa.String(length=255), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("pending_builds")
    op.drop_index("received_messages_received_at_idx", table_name="received_messages")
    op.drop_table("received_messages")
    op.drop_table("outbox")
