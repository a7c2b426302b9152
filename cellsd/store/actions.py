"""Instance actions and their events: what was done to an instance, per
request id, kept by the cell that did it."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred

from cellsd.errors import InstanceActionEventNotFound, InstanceActionNotFound
from cellsd.objects.records import InstanceAction, InstanceActionEvent
from cellsd.store.core import (
    StoreCore,
    get_row,
    insert_row,
    live,
    row_values,
    to_obj,
    utcnow,
)
from cellsd.store.schema import instance_actions as actions
from cellsd.store.schema import instance_actions_events as events

_NEWEST_ACTIONS = (actions.c.created_at.desc(), actions.c.id.desc())
_NEWEST_EVENTS = (events.c.created_at.desc(), events.c.id.desc())


def _action_by_request(
    conn: Connection, instance_uuid: str, request_id: str
) -> InstanceAction | None:
    row = (
        conn.execute(
            sa.select(actions)
            .where(
                actions.c.instance_uuid == instance_uuid,
                actions.c.request_id == request_id,
                live(actions),
            )
            .order_by(*_NEWEST_ACTIONS)
            .limit(1)
        )
        .mappings()
        .first()
    )
    return None if row is None else to_obj(InstanceAction, row)


class ActionStore(StoreCore):
    """Instance actions and events."""

    def action_start(self, action: InstanceAction) -> Deferred[InstanceAction]:
        """Record an action (start_time defaults to now)."""
        values = row_values(action, actions)

        def start(conn: Connection) -> InstanceAction:
            now = utcnow()
            values["created_at"] = values.get("created_at") or now
            values["start_time"] = values.get("start_time") or now
            row = get_row(conn, actions, insert_row(conn, actions, values))
            assert row is not None
            return to_obj(InstanceAction, row)

        return self._run(start)

    def action_finish(
        self, instance_uuid: str, request_id: str, message: str | None = None
    ) -> Deferred[InstanceAction]:
        """Set the finish time (and message) of the newest action of that
        request on the instance; InstanceActionNotFound."""

        def finish(conn: Connection) -> InstanceAction:
            found = _action_by_request(conn, instance_uuid, request_id)
            if found is None:
                raise InstanceActionNotFound(request_id=request_id, instance_uuid=instance_uuid)
            now = utcnow()
            values: dict[str, Any] = {"finish_time": now, "updated_at": now}
            if message is not None:
                values["message"] = message
            conn.execute(sa.update(actions).where(actions.c.id == found.id).values(values))
            row = get_row(conn, actions, found.id)
            assert row is not None
            return to_obj(InstanceAction, row)

        return self._run(finish)

    def actions_get(self, instance_uuid: str) -> Deferred[list[InstanceAction]]:
        """The instance's actions, newest first (created_at, then id)."""

        def get(conn: Connection) -> list[InstanceAction]:
            rows = conn.execute(
                sa.select(actions)
                .where(actions.c.instance_uuid == instance_uuid, live(actions))
                .order_by(*_NEWEST_ACTIONS)
            ).mappings()
            return [to_obj(InstanceAction, r) for r in rows]

        return self._run(get)

    def action_get_by_request_id(
        self, instance_uuid: str, request_id: str
    ) -> Deferred[InstanceAction | None]:
        """The newest action of that request on the instance, or None."""
        return self._run(_action_by_request, instance_uuid, request_id)

    def action_event_start(self, event: InstanceActionEvent) -> Deferred[InstanceActionEvent]:
        """Record the start of an event of an action (``action_id`` set;
        start_time defaults to now)."""
        values = row_values(event, events)

        def start(conn: Connection) -> InstanceActionEvent:
            now = utcnow()
            values["created_at"] = values.get("created_at") or now
            values["start_time"] = values.get("start_time") or now
            row = get_row(conn, events, insert_row(conn, events, values))
            assert row is not None
            return to_obj(InstanceActionEvent, row)

        return self._run(start)

    def action_event_finish(
        self,
        action_id: int,
        event: str,
        result: str,
        traceback: str | None = None,
        details: str | None = None,
    ) -> Deferred[InstanceActionEvent]:
        """Finish the newest event of that name of the action with ``result``
        (e.g. Success, Error); InstanceActionEventNotFound."""

        def finish(conn: Connection) -> InstanceActionEvent:
            row = conn.execute(
                sa.select(events.c.id)
                .where(
                    events.c.action_id == action_id,
                    events.c.event == event,
                    live(events),
                )
                .order_by(*_NEWEST_EVENTS)
                .limit(1)
            ).first()
            if row is None:
                raise InstanceActionEventNotFound(action_id=action_id, event=event)
            now = utcnow()
            values: dict[str, Any] = {
                "finish_time": now,
                "updated_at": now,
                "result": result,
            }
            if traceback is not None:
                values["traceback"] = traceback
            if details is not None:
                values["details"] = details
            conn.execute(sa.update(events).where(events.c.id == row.id).values(values))
            stored = get_row(conn, events, row.id)
            assert stored is not None
            return to_obj(InstanceActionEvent, stored)

        return self._run(finish)

    def action_events_get(self, action_id: int) -> Deferred[list[InstanceActionEvent]]:
        """The action's events, newest first (created_at, then id)."""

        def get(conn: Connection) -> list[InstanceActionEvent]:
            rows = conn.execute(
                sa.select(events)
                .where(events.c.action_id == action_id, live(events))
                .order_by(*_NEWEST_EVENTS)
            ).mappings()
            return [to_obj(InstanceActionEvent, r) for r in rows]

        return self._run(get)
