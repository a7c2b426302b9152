"""The cells table (neighbours recorded in the database), console auth
tokens, and leases that let one of several workers run a periodic task."""

from __future__ import annotations

import datetime
import hashlib
import secrets
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from twisted.internet.defer import Deferred

from cellsd.errors import CellExists, CellNotFound
from cellsd.objects.records import Cell
from cellsd.store.core import (
    StoreCore,
    get_row,
    insert_row,
    live,
    live_row,
    row_values,
    soft_delete_values,
    to_obj,
    utcnow,
)
from cellsd.store.schema import cells, console_auth_tokens, leases

tokens = console_auth_tokens


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _cell_values(values: Mapping[str, Any] | Cell) -> dict[str, Any]:
    if not isinstance(values, Cell):
        values = Cell.from_dict(values)
    return row_values(values, cells)


def _live_cell(conn: Connection, name: str) -> Cell:
    row = live_row(conn, cells, cells.c.name == name)
    if row is None:
        raise CellNotFound(cell_name=name)
    return to_obj(Cell, row)


class CellTableStore(StoreCore):
    """Cells, console auth tokens and leases."""

    # -- cells -----------------------------------------------------------------------

    def cell_create(self, values: Mapping[str, Any] | Cell) -> Deferred[Cell]:
        """Record a neighbour cell (name, api_url, transport_url,
        weight_offset, weight_scale, is_parent); CellExists."""
        row_vals = _cell_values(values)

        def create(conn: Connection) -> Cell:
            name = row_vals.get("name")
            exists = conn.execute(
                sa.select(cells.c.id).where(cells.c.name == name, live(cells))
            ).first()
            if exists is not None:
                raise CellExists(name=name)
            row_vals["created_at"] = utcnow()
            try:
                row = get_row(conn, cells, insert_row(conn, cells, row_vals))
            except IntegrityError:
                raise CellExists(name=name) from None
            assert row is not None
            return to_obj(Cell, row)

        return self._run(create)

    def cell_update(self, name: str, values: Mapping[str, Any]) -> Deferred[Cell]:
        """Change a live cell record; CellNotFound."""
        changes = row_values(values, cells)

        def update(conn: Connection) -> Cell:
            cell = _live_cell(conn, name)
            changes["updated_at"] = utcnow()
            conn.execute(sa.update(cells).where(cells.c.id == cell.id).values(changes))
            row = get_row(conn, cells, cell.id)
            assert row is not None
            return to_obj(Cell, row)

        return self._run(update)

    def cell_delete(self, name: str) -> Deferred[int]:
        """Soft-delete the live cell record of that name; how many (0 or 1)."""

        def delete(conn: Connection) -> int:
            return conn.execute(
                sa.update(cells)
                .where(cells.c.name == name, live(cells))
                .values(soft_delete_values(cells, utcnow()))
            ).rowcount

        return self._run(delete)

    def cell_get(self, name: str) -> Deferred[Cell]:
        """The live cell record of that name; CellNotFound."""
        return self._run(_live_cell, name)

    def cell_get_all(self) -> Deferred[list[Cell]]:
        """Every live cell record, by name."""

        def get_all(conn: Connection) -> list[Cell]:
            rows = conn.execute(
                sa.select(cells).where(live(cells)).order_by(cells.c.name)
            ).mappings()
            return [to_obj(Cell, r) for r in rows]

        return self._run(get_all)

    # -- console auth tokens ------------------------------------------------------------

    def console_auth_token_create(
        self,
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
        token = token or secrets.token_urlsafe(32)

        def create(conn: Connection) -> str:
            now = utcnow()
            insert_row(
                conn,
                tokens,
                {
                    "token_hash": _token_hash(token),
                    "console_type": console_type,
                    "host": host,
                    "port": port,
                    "internal_access_path": internal_access_path,
                    "instance_uuid": instance_uuid,
                    "expires_at": now + datetime.timedelta(seconds=ttl),
                    "created_at": now,
                },
            )
            return token

        return self._run(create)

    def console_auth_token_validate(self, token: str) -> Deferred[dict[str, Any] | None]:
        """The connection details an unexpired token authorises, or None."""

        def validate(conn: Connection) -> dict[str, Any] | None:
            row = (
                conn.execute(
                    sa.select(tokens).where(
                        tokens.c.token_hash == _token_hash(token),
                        tokens.c.expires_at > utcnow(),
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                return None
            keys = ("instance_uuid", "console_type", "host", "port")
            return {k: row[k] for k in (*keys, "internal_access_path", "expires_at")}

        return self._run(validate)

    def console_auth_token_delete_all_for_instance(self, instance_uuid: str) -> Deferred[int]:
        """Remove every console token of the instance; how many."""

        def delete(conn: Connection) -> int:
            return conn.execute(
                sa.delete(tokens).where(tokens.c.instance_uuid == instance_uuid)
            ).rowcount

        return self._run(delete)

    def console_auth_token_delete_expired(self) -> Deferred[int]:
        """Remove expired console tokens; how many."""

        def delete(conn: Connection) -> int:
            return conn.execute(sa.delete(tokens).where(tokens.c.expires_at <= utcnow())).rowcount

        return self._run(delete)

    # -- leases ------------------------------------------------------------------------------

    def try_lease(self, name: str, holder: str, ttl: float) -> Deferred[bool]:
        """Take or renew the lease ``name`` for ``ttl`` seconds. True when
        ``holder`` holds it afterwards: it was free, expired, or already
        ``holder``'s. Atomic across workers sharing the database (a
        conditional UPDATE, else an INSERT that loses to a concurrent one)."""

        def take(conn: Connection) -> bool:
            now = utcnow()
            expires = now + datetime.timedelta(seconds=ttl)
            renewed = conn.execute(
                sa.update(leases)
                .where(
                    leases.c.name == name,
                    sa.or_(leases.c.holder == holder, leases.c.expires_at <= now),
                )
                .values(holder=holder, expires_at=expires)
            ).rowcount
            if renewed:
                return True
            exists = conn.execute(sa.select(leases.c.name).where(leases.c.name == name)).first()
            if exists is not None:
                return False
            conn.execute(sa.insert(leases).values(name=name, holder=holder, expires_at=expires))
            return True

        def lost_race(failure: Any) -> bool:
            failure.trap(IntegrityError)
            return False

        d = self._run(take)
        d.addErrback(lost_race)
        return d

    def release_lease(self, name: str, holder: str) -> Deferred[bool]:
        """Give the lease up if ``holder`` holds it; True if it did."""

        def release(conn: Connection) -> bool:
            return bool(
                conn.execute(
                    sa.delete(leases).where(leases.c.name == name, leases.c.holder == holder)
                ).rowcount
            )

        return self._run(release)
