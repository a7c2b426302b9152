"""Test doubles for the CellsManager: a MessageRunner that records each
operation and answers canned Responses, and a store with what the manager
reads from it.

:class:`FakeRunner` has every public MessageRunner operation of the seed
(``../shared/reference/seeds/001_*.txt``) with the seed's signature, and
the two core sends of :class:`cellsd.messaging.runner.MessageRunner` with
theirs. tests/unit/test_rpc_manager.py proves both, so the fake cannot
drift from the contract the manager is written against.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred

from cellsd.context import RequestContext
from cellsd.errors import CellNotFound, InstanceNotFound
from cellsd.messaging.message import Response
from cellsd.messaging.routing import DOWN
from cellsd.objects import Cell, Instance
from cellsd.objects.base import CellsObject

#: The seed file of MessageRunner, when this checkout sits in the shared tree.
SEED_FILE = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "reference"
    / "seeds"
    / "001_fc749e6190db29a1.txt"
)

#: The seed's MessageRunner operations (a copy of the signature lines of
#: SEED_FILE; test_rpc_manager checks the copy against the file).
SEED_SIGNATURES = """
action_events_get(ctxt, cell_name, action_id)
action_get_by_request_id(ctxt, cell_name, instance_uuid, request_id)
actions_get(ctxt, cell_name, instance_uuid)
backup_instance(ctxt, instance, image_id, backup_type, rotation)
bdm_destroy_at_top(ctxt, instance_uuid, device_name=None, volume_id=None)
bdm_update_or_create_at_top(ctxt, bdm, create=None)
build_instances(ctxt, target_cell, build_inst_kwargs)
bw_usage_update_at_top(ctxt, bw_update_info)
compute_node_get(ctxt, cell_name, compute_id)
compute_node_get_all(ctxt, hypervisor_match=None)
confirm_resize(ctxt, instance)
consoleauth_delete_tokens(ctxt, instance_uuid)
get_host_uptime(ctxt, cell_name, host_name)
get_keypair_at_top(ctxt, user_id, name)
get_migrations(ctxt, cell_name, run_locally, filters)
inject_network_info(ctxt, instance)
instance_delete_everywhere(ctxt, instance, delete_type)
instance_destroy_at_top(ctxt, instance)
instance_fault_create_at_top(ctxt, instance_fault)
instance_update_at_top(ctxt, instance)
instance_update_from_api(ctxt, instance, expected_vm_state, expected_task_state, admin_state_reset)
live_migrate_instance(ctxt, instance, block_migration, disk_over_commit, host_name)
pause_instance(ctxt, instance)
proxy_rpc_to_manager(ctxt, cell_name, host_name, topic, rpc_message, call, timeout)
reboot_instance(ctxt, instance, reboot_type)
rebuild_instance(ctxt, instance, image_href, admin_password, files_to_inject, preserve_ephemeral, kwargs)
reset_network(ctxt, instance)
resize_instance(ctxt, instance, flavor, extra_instance_updates, clean_shutdown=True)
resume_instance(ctxt, instance)
revert_resize(ctxt, instance)
run_compute_api_method(ctxt, cell_name, method_info, call)
service_delete(ctxt, cell_name, service_id)
service_get_all(ctxt, filters=None)
service_get_by_compute_host(ctxt, cell_name, host_name)
service_update(ctxt, cell_name, host_name, binary, params_to_update)
set_admin_password(ctxt, instance, new_pass)
snapshot_instance(ctxt, instance, image_id)
soft_delete_instance(ctxt, instance)
start_instance(ctxt, instance)
stop_instance(ctxt, instance, do_cast=True, clean_shutdown=True)
suspend_instance(ctxt, instance)
sync_instances(ctxt, project_id, updated_since, deleted)
task_log_get_all(ctxt, cell_name, task_name, period_beginning, period_ending, host=None, state=None)
terminate_instance(ctxt, instance, delete_type='delete')
unpause_instance(ctxt, instance)
validate_console_port(ctxt, cell_name, instance_uuid, console_port, console_type)
"""  # noqa: E501

#: Operations whose name line the seed's text lost (its docstring survived:
#: "Return compute node stats from all child cells."); the signature is
#: behaviour §3.1's.
LOST_FROM_SEED = {"compute_node_stats": "compute_node_stats(ctxt)"}

_SIGNATURE_LINE = re.compile(r"^(\w+)\((ctxt[^)]*)\)$")


def parse_seed_signatures(text: str) -> dict[str, str]:
    """``name -> "name(ctxt, ...)"`` for every signature line of ``text``."""
    found = {}
    for line in text.splitlines():
        match = _SIGNATURE_LINE.match(line.strip())
        if match:
            found[match.group(1)] = line.strip()
    return found


SEED = {**parse_seed_signatures(SEED_SIGNATURES), **LOST_FROM_SEED}


def render_signature(method: Callable[..., Any]) -> str:
    """``name(ctxt, a, b=None)`` as the seed writes it (``self`` left out)."""
    parts = []
    for p in inspect.signature(method).parameters.values():
        if p.name == "self":
            continue
        if p.kind is p.VAR_POSITIONAL:
            parts.append("*" + p.name)
        elif p.kind is p.VAR_KEYWORD:
            parts.append("**" + p.name)
        elif p.default is p.empty:
            parts.append(p.name)
        else:
            parts.append(f"{p.name}={p.default!r}")
    return f"{method.__name__}({', '.join(parts)})"


# --------------------------------------------------------------------------
# Recording


@attrs.frozen
class Call:
    """One operation as the fake received it: every parameter bound, the
    defaults applied, the context apart."""

    method: str
    ctxt: RequestContext
    args: dict[str, Any]


#: An answer: a value (a Response, a list of them, None), an exception to
#: fail with, or a function of the call's arguments returning either.
Answer = Any


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.answers: dict[str, Answer] = {}
        self._waiters: list[tuple[int, Deferred[list[Call]]]] = []

    def _record(self, method: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        bound = inspect.signature(getattr(self, method)).bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        ctxt = values.pop("ctxt")
        self.calls.append(Call(method, ctxt, values))
        for entry in list(self._waiters):
            if len(self.calls) >= entry[0]:
                self._waiters.remove(entry)
                entry[1].callback(list(self.calls))
        answer = self.answers.get(method, self._default(method))
        if callable(answer) and not isinstance(answer, type):
            try:
                answer = answer(**values)
            except Exception:
                return defer.fail()
        if isinstance(answer, BaseException):
            return defer.fail(answer)
        return defer.succeed(answer)

    def _default(self, method: str) -> Answer:
        return None

    def when_called(self, count: int = 1) -> Deferred[list[Call]]:
        """Fires with the calls once there are at least ``count``."""
        if len(self.calls) >= count:
            return defer.succeed(list(self.calls))
        d: Deferred[list[Call]] = Deferred()
        self._waiters.append((count, d))
        return d

    def methods(self) -> list[str]:
        return [c.method for c in self.calls]


# --------------------------------------------------------------------------
# The runner


class FakeRunner(_Recorder):
    """A MessageRunner double: each operation is recorded and answered from
    ``answers[name]`` (default: None for casts; a one-cell Response built
    from ``default_value`` for targeted calls; ``[]`` for broadcasts)."""

    #: The operations whose answer is a list of Responses (broadcasts, and
    #: the two whose targeted form answers a list too).
    LISTS = frozenset(
        {
            "service_get_all",
            "compute_node_get_all",
            "compute_node_stats",
            "task_log_get_all",
            "get_migrations",
            "get_keypair_at_top",
        }
    )
    #: Targeted calls: answered by one Response from the cell asked.
    TARGETED_CALLS = frozenset(
        {
            "run_compute_api_method",
            "service_get_by_compute_host",
            "get_host_uptime",
            "service_update",
            "service_delete",
            "proxy_rpc_to_manager",
            "compute_node_get",
            "actions_get",
            "action_get_by_request_id",
            "action_events_get",
            "validate_console_port",
            "stop_instance",
        }
    )

    def __init__(self, my_name: str = "api-cell") -> None:
        super().__init__()
        self.my_name = my_name

    def _default(self, method: str) -> Answer:
        if method in self.LISTS:
            return []
        if method in self.TARGETED_CALLS:
            return lambda cell_name=None, **_: Response(cell_name or self.my_name, None)
        return None

    # -- the core sends of cellsd.messaging.runner.MessageRunner ----------------

    def send_targeted(
        self,
        ctxt: RequestContext,
        target_cell: str,
        method_name: str,
        method_kwargs: dict[str, Any],
        direction: str = DOWN,
        need_response: bool = False,
        fanout: bool = False,
        timeout: float | None = None,
    ) -> Deferred[Any]:
        return self._record(
            "send_targeted",
            ctxt,
            target_cell,
            method_name,
            method_kwargs,
            direction,
            need_response,
            fanout,
            timeout,
        )

    def send_broadcast(
        self,
        ctxt: RequestContext,
        method_name: str,
        method_kwargs: dict[str, Any],
        direction: str = DOWN,
        need_response: bool = False,
        run_locally: bool = True,
        fanout: bool = False,
        timeout: float | None = None,
    ) -> Deferred[Any]:
        return self._record(
            "send_broadcast",
            ctxt,
            method_name,
            method_kwargs,
            direction,
            need_response,
            run_locally,
            fanout,
            timeout,
        )

    # -- the seed's operations (signatures exactly as the seed's) -----------------

    def action_events_get(self, ctxt, cell_name, action_id):
        return self._record("action_events_get", ctxt, cell_name, action_id)

    def action_get_by_request_id(self, ctxt, cell_name, instance_uuid, request_id):
        return self._record("action_get_by_request_id", ctxt, cell_name, instance_uuid, request_id)

    def actions_get(self, ctxt, cell_name, instance_uuid):
        return self._record("actions_get", ctxt, cell_name, instance_uuid)

    def backup_instance(self, ctxt, instance, image_id, backup_type, rotation):
        return self._record("backup_instance", ctxt, instance, image_id, backup_type, rotation)

    def bdm_destroy_at_top(self, ctxt, instance_uuid, device_name=None, volume_id=None):
        return self._record("bdm_destroy_at_top", ctxt, instance_uuid, device_name, volume_id)

    def bdm_update_or_create_at_top(self, ctxt, bdm, create=None):
        return self._record("bdm_update_or_create_at_top", ctxt, bdm, create)

    def build_instances(self, ctxt, target_cell, build_inst_kwargs):
        return self._record("build_instances", ctxt, target_cell, build_inst_kwargs)

    def bw_usage_update_at_top(self, ctxt, bw_update_info):
        return self._record("bw_usage_update_at_top", ctxt, bw_update_info)

    def compute_node_get(self, ctxt, cell_name, compute_id):
        return self._record("compute_node_get", ctxt, cell_name, compute_id)

    def compute_node_get_all(self, ctxt, hypervisor_match=None):
        return self._record("compute_node_get_all", ctxt, hypervisor_match)

    def compute_node_stats(self, ctxt):
        return self._record("compute_node_stats", ctxt)

    def confirm_resize(self, ctxt, instance):
        return self._record("confirm_resize", ctxt, instance)

    def consoleauth_delete_tokens(self, ctxt, instance_uuid):
        return self._record("consoleauth_delete_tokens", ctxt, instance_uuid)

    def get_host_uptime(self, ctxt, cell_name, host_name):
        return self._record("get_host_uptime", ctxt, cell_name, host_name)

    def get_keypair_at_top(self, ctxt, user_id, name):
        return self._record("get_keypair_at_top", ctxt, user_id, name)

    def get_migrations(self, ctxt, cell_name, run_locally, filters):
        return self._record("get_migrations", ctxt, cell_name, run_locally, filters)

    def inject_network_info(self, ctxt, instance):
        return self._record("inject_network_info", ctxt, instance)

    def instance_delete_everywhere(self, ctxt, instance, delete_type):
        return self._record("instance_delete_everywhere", ctxt, instance, delete_type)

    def instance_destroy_at_top(self, ctxt, instance):
        return self._record("instance_destroy_at_top", ctxt, instance)

    def instance_fault_create_at_top(self, ctxt, instance_fault):
        return self._record("instance_fault_create_at_top", ctxt, instance_fault)

    def instance_update_at_top(self, ctxt, instance):
        return self._record("instance_update_at_top", ctxt, instance)

    def instance_update_from_api(
        self, ctxt, instance, expected_vm_state, expected_task_state, admin_state_reset
    ):
        return self._record(
            "instance_update_from_api",
            ctxt,
            instance,
            expected_vm_state,
            expected_task_state,
            admin_state_reset,
        )

    def live_migrate_instance(self, ctxt, instance, block_migration, disk_over_commit, host_name):
        return self._record(
            "live_migrate_instance", ctxt, instance, block_migration, disk_over_commit, host_name
        )

    def pause_instance(self, ctxt, instance):
        return self._record("pause_instance", ctxt, instance)

    def proxy_rpc_to_manager(self, ctxt, cell_name, host_name, topic, rpc_message, call, timeout):
        return self._record(
            "proxy_rpc_to_manager", ctxt, cell_name, host_name, topic, rpc_message, call, timeout
        )

    def reboot_instance(self, ctxt, instance, reboot_type):
        return self._record("reboot_instance", ctxt, instance, reboot_type)

    def rebuild_instance(
        self,
        ctxt,
        instance,
        image_href,
        admin_password,
        files_to_inject,
        preserve_ephemeral,
        kwargs,
    ):
        return self._record(
            "rebuild_instance",
            ctxt,
            instance,
            image_href,
            admin_password,
            files_to_inject,
            preserve_ephemeral,
            kwargs,
        )

    def reset_network(self, ctxt, instance):
        return self._record("reset_network", ctxt, instance)

    def resize_instance(self, ctxt, instance, flavor, extra_instance_updates, clean_shutdown=True):
        return self._record(
            "resize_instance", ctxt, instance, flavor, extra_instance_updates, clean_shutdown
        )

    def resume_instance(self, ctxt, instance):
        return self._record("resume_instance", ctxt, instance)

    def revert_resize(self, ctxt, instance):
        return self._record("revert_resize", ctxt, instance)

    def run_compute_api_method(self, ctxt, cell_name, method_info, call):
        return self._record("run_compute_api_method", ctxt, cell_name, method_info, call)

    def service_delete(self, ctxt, cell_name, service_id):
        return self._record("service_delete", ctxt, cell_name, service_id)

    def service_get_all(self, ctxt, filters=None):
        return self._record("service_get_all", ctxt, filters)

    def service_get_by_compute_host(self, ctxt, cell_name, host_name):
        return self._record("service_get_by_compute_host", ctxt, cell_name, host_name)

    def service_update(self, ctxt, cell_name, host_name, binary, params_to_update):
        return self._record("service_update", ctxt, cell_name, host_name, binary, params_to_update)

    def set_admin_password(self, ctxt, instance, new_pass):
        return self._record("set_admin_password", ctxt, instance, new_pass)

    def snapshot_instance(self, ctxt, instance, image_id):
        return self._record("snapshot_instance", ctxt, instance, image_id)

    def soft_delete_instance(self, ctxt, instance):
        return self._record("soft_delete_instance", ctxt, instance)

    def start_instance(self, ctxt, instance):
        return self._record("start_instance", ctxt, instance)

    def stop_instance(self, ctxt, instance, do_cast=True, clean_shutdown=True):
        return self._record("stop_instance", ctxt, instance, do_cast, clean_shutdown)

    def suspend_instance(self, ctxt, instance):
        return self._record("suspend_instance", ctxt, instance)

    def sync_instances(self, ctxt, project_id, updated_since, deleted):
        return self._record("sync_instances", ctxt, project_id, updated_since, deleted)

    def task_log_get_all(
        self, ctxt, cell_name, task_name, period_beginning, period_ending, host=None, state=None
    ):
        return self._record(
            "task_log_get_all",
            ctxt,
            cell_name,
            task_name,
            period_beginning,
            period_ending,
            host,
            state,
        )

    def terminate_instance(self, ctxt, instance, delete_type="delete"):
        return self._record("terminate_instance", ctxt, instance, delete_type)

    def unpause_instance(self, ctxt, instance):
        return self._record("unpause_instance", ctxt, instance)

    def validate_console_port(self, ctxt, cell_name, instance_uuid, console_port, console_type):
        return self._record(
            "validate_console_port", ctxt, cell_name, instance_uuid, console_port, console_type
        )


#: The fake's operations that stand for seed operations.
FAKE_SEED_METHODS = sorted(
    name
    for name, _ in inspect.getmembers(FakeRunner, inspect.isfunction)
    if not name.startswith("_")
    and name not in ("send_targeted", "send_broadcast", "when_called", "methods")
)


# --------------------------------------------------------------------------
# The store


class FakeStore(_Recorder):
    """The part of ICellStore the manager reads: instances by uuid and the
    cells table. ``instances`` and ``cells`` are plain dicts to fill."""

    def __init__(self) -> None:
        super().__init__()
        self.instances: dict[str, Instance] = {}
        self.cells: dict[str, Cell] = {}

    def _record(self, method: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        # Store methods take no context: the call records None for it.
        bound = inspect.signature(getattr(self, method)).bind(*args, **kwargs)
        bound.apply_defaults()
        self.calls.append(Call(method, None, dict(bound.arguments)))  # type: ignore[arg-type]
        answer = self.answers.get(method, self._default(method))
        if callable(answer):
            try:
                answer = answer(**bound.arguments)
            except Exception:
                return defer.fail()
        if isinstance(answer, BaseException):
            return defer.fail(answer)
        return defer.succeed(answer)

    def _default(self, method: str) -> Answer:
        return getattr(self, "_" + method)

    def instance_get_by_uuid(self, instance_uuid: str, read_deleted: str = "no") -> Any:
        return self._record("instance_get_by_uuid", instance_uuid, read_deleted)

    def _instance_get_by_uuid(self, instance_uuid: str, read_deleted: str) -> Instance:
        if instance_uuid not in self.instances:
            raise InstanceNotFound(instance_id=instance_uuid)
        return self.instances[instance_uuid]

    def cell_create(self, values: Any) -> Any:
        return self._record("cell_create", values)

    def _cell_create(self, values: Any) -> Cell:
        cell = Cell.from_dict(values) if not isinstance(values, CellsObject) else values
        assert isinstance(cell, Cell)
        cell.id = len(self.cells) + 1
        self.cells[str(cell.name)] = cell
        return cell

    def cell_update(self, name: str, values: Any) -> Any:
        return self._record("cell_update", name, values)

    def _cell_update(self, name: str, values: Any) -> Cell:
        if name not in self.cells:
            raise CellNotFound(cell_name=name)
        cell = self.cells[name]
        for key, value in values.items():
            setattr(cell, key, value)
        return cell

    def cell_delete(self, name: str) -> Any:
        return self._record("cell_delete", name)

    def _cell_delete(self, name: str) -> int:
        return 1 if self.cells.pop(name, None) is not None else 0

    def cell_get(self, name: str) -> Any:
        return self._record("cell_get", name)

    def _cell_get(self, name: str) -> Cell:
        if name not in self.cells:
            raise CellNotFound(cell_name=name)
        return self.cells[name]


FAKE_STORE_METHODS = (
    "instance_get_by_uuid",
    "cell_create",
    "cell_update",
    "cell_delete",
    "cell_get",
)


# --------------------------------------------------------------------------
# Comparing what arrived


def normalize(value: Any, changes: bool = True) -> Any:
    """A comparable form: objects as (class, plain fields, changed fields
    unless ``changes`` is false); dicts, lists and tuples recursed;
    contexts by their identity fields."""
    if isinstance(value, CellsObject):
        changed = sorted(value.obj_what_changed()) if changes else None
        return (type(value).__name__, normalize(value.to_dict(), changes), changed)
    if isinstance(value, RequestContext):
        return ("ctxt", value.user_id, value.project_id, value.request_id)
    if isinstance(value, Response):
        return ("Response", value.cell_name, normalize(value.value, changes), value.failure)
    if isinstance(value, dict):
        return {k: normalize(v, changes) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalize(v, changes) for v in value]
    return value


def calls_of(recorder: _Recorder) -> list[list[Any]]:
    return [[c.method, normalize(c.args)] for c in recorder.calls]
