"""State-changing broadcasts that tell their caller each cell's outcome
(local RPC 1.39).

The seed's ``instance_delete_everywhere`` and ``sync_instances`` are casts:
the caller learns nothing of the cells they reach. Their ``*_outcomes``
forms send the same broadcast and wait for every cell; each row says what
the caller knows of the effect there (:attr:`Response.outcome
<cellsd.messaging.message.Response.outcome>`):

* ``ok``: the cell answered; the request was applied;
* ``failed``: an error came back (``error`` says which);
* ``unreachable``: the message provably never reached the cell (no link,
  refused before sending): nothing happened there;
* ``unknown``: the message was sent, then the link was cut or the deadline
  passed before the answer: it may or may not have been applied.

A row that is not ok for a cell whose answer would have carried its
children's stands for those cells too. Both requests apply only what is
still to be done (a deleted instance is not deleted again; a report is
applied by generation), so re-running after an unknown or unreachable
outcome is safe and applies once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cellsd.context import RequestContext
from cellsd.errors import InvalidArguments
from cellsd.messaging.message import Response
from cellsd.messaging.routing import DOWN
from cellsd.messaging.runner import MessageRunner
from cellsd.rpc.registry import rpc_method

if TYPE_CHECKING:
    from cellsd.objects import Instance


def error_text(response: Response) -> str | None:
    """``Class: message`` of a failure Response (None for an answer)."""
    if not response.failure:
        return None
    exc = response.value
    name = getattr(type(exc), "_remote_of", type(exc)).__name__
    message = getattr(exc, "message", None) or str(exc).split("\n", 1)[0]
    return f"{name}: {message}"


def outcome_rows(responses: list[Response] | None) -> list[dict[str, Any]]:
    """One ``{"cell", "outcome", "error"}`` row per Response, by cell."""
    rows = [
        {"cell": r.cell_name, "outcome": r.outcome, "error": error_text(r)} for r in responses or []
    ]
    return sorted(rows, key=lambda row: row["cell"])


class OutcomeMethods:
    """Mixin of the CellsManager: the ``*_outcomes`` methods (1.39)."""

    runner: MessageRunner

    if TYPE_CHECKING:

        def _instance(self, value: Any, method: str) -> Instance: ...

    async def _outcomes(
        self, ctxt: RequestContext, method: str, kwargs: dict[str, Any]
    ) -> list[dict[str, Any]]:
        responses = await self.runner.send_broadcast(
            ctxt, method, kwargs, DOWN, need_response=True, run_locally=False
        )
        return outcome_rows(responses)

    @rpc_method("1.39")
    async def instance_delete_everywhere_outcomes(
        self, ctxt: RequestContext, instance: Any, delete_type: str
    ) -> list[dict[str, Any]]:
        """Delete the instance in whichever cell below holds it; each
        cell's outcome."""
        if delete_type not in ("soft", "hard"):
            raise InvalidArguments(
                method_name="instance_delete_everywhere_outcomes",
                reason=f"delete_type must be 'soft' or 'hard', not {delete_type!r}",
            )
        inst = self._instance(instance, "instance_delete_everywhere_outcomes")
        kwargs = {"instance": inst, "delete_type": delete_type}
        return await self._outcomes(ctxt, "instance_delete_everywhere", kwargs)

    @rpc_method("1.39")
    async def sync_instances_outcomes(
        self,
        ctxt: RequestContext,
        project_id: str | None = None,
        updated_since: Any = None,
        deleted: bool = False,
    ) -> list[dict[str, Any]]:
        """Every cell below reports its (matching) instances to the top;
        each cell's outcome."""
        kwargs = {"project_id": project_id, "updated_since": updated_since, "deleted": deleted}
        return await self._outcomes(ctxt, "sync_instances", kwargs)
