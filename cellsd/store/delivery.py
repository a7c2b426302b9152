"""Durable delivery in the cell store: the outbox of must-deliver messages,
the uuids of those already received, and the builds this cell owns.

The outbox holds each message's wire form per neighbour from the moment it
is accepted until that neighbour confirms it. A message received from a
neighbour is recorded (by uuid) in the same transaction that queues it for
the next hop, so a resend after a lost confirmation is recognised and
dropped; at the top the record is written once the message is applied.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from twisted.internet.defer import Deferred

from cellsd.errors import OutboxFull, PendingBuildsFull
from cellsd.store.core import StoreCore, utcnow
from cellsd.store.schema import outbox, pending_builds, received_messages


@attrs.frozen
class OutboxEntry:
    """One message waiting for one neighbour's confirmation."""

    id: int
    uuid: str
    neighbour: str
    method: str
    header: bytes
    body: bytes
    created_at: datetime.datetime
    attempts: int
    last_error: str | None


@attrs.frozen
class PendingBuild:
    """A build this cell owns that has not been placed or failed yet."""

    id: str
    ctxt: str
    build_kwargs: str
    route: str | None
    attempts: int
    created_at: datetime.datetime


def _count(conn: Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar_one())


def _was_received(conn: Connection, uuid: str) -> bool:
    found = conn.execute(
        sa.select(received_messages.c.uuid).where(received_messages.c.uuid == uuid)
    ).first()
    return found is not None


class DeliveryStore(StoreCore):
    """The outbox, received-message and pending-build tables."""

    # -- the outbox ----------------------------------------------------------------

    def outbox_put(
        self,
        uuid: str,
        method: str,
        entries: Sequence[tuple[str, bytes, bytes]],
        limit: int,
        cell_name: str = "",
        received: bool = False,
    ) -> Deferred[bool]:
        """Queue message ``uuid`` for each ``(neighbour, header, body)``.

        ``received``: the message came from a neighbour, so record its uuid
        in the same transaction; a uuid already recorded queues nothing and
        fires False (a resend). OutboxFull when the outbox would hold more
        than ``limit`` rows. Queuing a uuid already queued for a neighbour
        is a no-op for that neighbour."""

        def put(conn: Connection) -> bool:
            now = utcnow()
            if received:
                if _was_received(conn, uuid):
                    return False
                conn.execute(
                    sa.insert(received_messages).values(uuid=uuid, method=method, received_at=now)
                )
            count = _count(conn)
            if count + len(entries) > limit:
                raise OutboxFull(
                    cell_name=cell_name or "this cell",
                    count=count,
                    limit=limit,
                    method=method,
                    neighbour=", ".join(n for n, _, _ in entries),
                )
            for neighbour, header, body in entries:
                queued = conn.execute(
                    sa.select(outbox.c.id).where(
                        outbox.c.uuid == uuid, outbox.c.neighbour == neighbour
                    )
                ).first()
                if queued is None:
                    conn.execute(
                        sa.insert(outbox).values(
                            uuid=uuid,
                            neighbour=neighbour,
                            method=method,
                            header=header,
                            body=body,
                            created_at=now,
                        )
                    )
            return True

        return self._run(put)

    def outbox_pending(
        self, neighbour: str, after_id: int = 0, limit: int = 100
    ) -> Deferred[list[OutboxEntry]]:
        """Up to ``limit`` messages for ``neighbour`` after row ``after_id``,
        oldest first."""

        def pending(conn: Connection) -> list[OutboxEntry]:
            rows = conn.execute(
                sa.select(outbox)
                .where(outbox.c.neighbour == neighbour, outbox.c.id > after_id)
                .order_by(outbox.c.id)
                .limit(limit)
            ).mappings()
            return [OutboxEntry(**{str(k): v for k, v in row.items()}) for row in rows]

        return self._run(pending)

    def outbox_confirm(self, entry_id: int) -> Deferred[None]:
        """The neighbour confirmed the message: forget it."""

        def confirm(conn: Connection) -> None:
            conn.execute(sa.delete(outbox).where(outbox.c.id == entry_id))

        return self._run(confirm)

    def outbox_failed(self, entry_id: int, error: str) -> Deferred[None]:
        """A send of the message failed: count it and keep why."""

        def failed(conn: Connection) -> None:
            conn.execute(
                sa.update(outbox)
                .where(outbox.c.id == entry_id)
                .values(attempts=outbox.c.attempts + 1, last_error=error[:2000])
            )

        return self._run(failed)

    def outbox_counts(self) -> Deferred[dict[str, int]]:
        """How many messages wait for each neighbour."""

        def counts(conn: Connection) -> dict[str, int]:
            rows = conn.execute(
                sa.select(outbox.c.neighbour, sa.func.count()).group_by(outbox.c.neighbour)
            )
            return {str(n): int(c) for n, c in rows}

        return self._run(counts)

    # -- received message uuids ------------------------------------------------------

    def message_was_received(self, uuid: str) -> Deferred[bool]:
        """True when must-deliver message ``uuid`` was already accepted here."""
        return self._run(_was_received, uuid)

    def message_record_received(self, uuid: str, method: str) -> Deferred[bool]:
        """Record that message ``uuid`` was applied here; False if it
        already was."""

        def record(conn: Connection) -> bool:
            if _was_received(conn, uuid):
                return False
            try:
                with conn.begin_nested():
                    conn.execute(
                        sa.insert(received_messages).values(
                            uuid=uuid, method=method, received_at=utcnow()
                        )
                    )
            except IntegrityError:
                return False
            return True

        return self._run(record)

    def messages_prune_received(self, older_than: datetime.datetime) -> Deferred[int]:
        """Forget received uuids recorded before ``older_than``; how many."""

        def prune(conn: Connection) -> int:
            result = conn.execute(
                sa.delete(received_messages).where(received_messages.c.received_at < older_than)
            )
            return int(result.rowcount or 0)

        return self._run(prune)

    # -- builds this cell owns -----------------------------------------------------------

    def build_put(
        self,
        build_id: str,
        ctxt: str,
        build_kwargs: str,
        limit: int | None = None,
        cell_name: str = "",
    ) -> Deferred[bool]:
        """Record a build (JSON context and keyword arguments) before it is
        scheduled; True when recorded. False, recording nothing, when the id
        is pending already or was done (a resend of the same request).
        PendingBuildsFull when ``limit`` builds are pending."""

        def put(conn: Connection) -> bool:
            found = conn.execute(
                sa.select(pending_builds.c.id).where(pending_builds.c.id == build_id)
            ).first()
            if found is not None or _was_received(conn, build_id):
                return False
            if limit is not None:
                count = int(
                    conn.execute(
                        sa.select(sa.func.count()).select_from(pending_builds)
                    ).scalar_one()
                )
                if count >= limit:
                    raise PendingBuildsFull(
                        cell_name=cell_name or "this cell", count=count, limit=limit, uuids=build_id
                    )
            conn.execute(
                sa.insert(pending_builds).values(
                    id=build_id, ctxt=ctxt, build_kwargs=build_kwargs, created_at=utcnow()
                )
            )
            return True

        return self._run(put)

    def build_route(self, build_id: str, route: str | None) -> Deferred[None]:
        """The cell a hand-off of the build is about to be sent to."""

        def mark(conn: Connection) -> None:
            conn.execute(
                sa.update(pending_builds)
                .where(pending_builds.c.id == build_id)
                .values(route=route, attempts=pending_builds.c.attempts + 1, updated_at=utcnow())
            )

        return self._run(mark)

    def build_done(self, build_id: str) -> Deferred[None]:
        """The build was placed, or failed for good: forget it, and record
        its id with the received uuids so that a resend of the request is
        recognised (until those are pruned)."""

        def done(conn: Connection) -> None:
            conn.execute(sa.delete(pending_builds).where(pending_builds.c.id == build_id))
            if not _was_received(conn, build_id):
                conn.execute(
                    sa.insert(received_messages).values(
                        uuid=build_id, method="build_instances", received_at=utcnow()
                    )
                )

        return self._run_retrying(done)

    def builds_pending(self) -> Deferred[list[PendingBuild]]:
        """Every build not yet placed, oldest first."""

        def pending(conn: Connection) -> list[PendingBuild]:
            rows = conn.execute(
                sa.select(pending_builds).order_by(pending_builds.c.created_at)
            ).mappings()
            return [
                PendingBuild(**{str(k): v for k, v in row.items() if k != "updated_at"})
                for row in rows
            ]

        return self._run(pending)
