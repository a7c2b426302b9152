"""Exceptions, and the form in which they cross the wire.

Every error a cell can report to another cell or to a caller is a
:class:`CellsError` with a message template and keyword arguments, so that it
can be rebuilt on the far side from plain data. Rebuilding is allow-list
only: a class is re-created only when its module is in
:data:`ALLOWED_MODULES` (or registered with :func:`allow_remote_module`) and it
is an :class:`Exception` subclass. Everything else becomes a
:class:`RemoteError`. Nothing from the wire is imported or evaluated: the
class is looked up in modules that are already loaded.
"""

from __future__ import annotations

import builtins
import contextlib
import sys
import traceback
from collections.abc import Mapping
from types import TracebackType
from typing import Any, ClassVar


class CellsError(Exception):
    """Base class of every cellsd error.

    Subclasses set ``msg_fmt`` (a ``str.format`` template over the keyword
    arguments) and ``code`` (an HTTP-like status for API callers).
    """

    msg_fmt: ClassVar[str] = "An unknown cells error occurred."
    code: ClassVar[int] = 500

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        self.kwargs = kwargs
        if message is None:
            try:
                message = self.msg_fmt.format(**kwargs)
            except (KeyError, IndexError, ValueError):
                message = f"{self.msg_fmt} {kwargs!r}"
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message


class ConfigError(CellsError):
    """The configuration is not valid; names the key and the rule."""

    msg_fmt = "{key}: {rule}"

    def __init__(self, key: str, rule: str) -> None:
        super().__init__(key=key, rule=rule)


class CellStillOwnsInstances(CellsError):
    """A reload would remove a child cell that still has live instances
    (here, at or below it); refused unless forced."""

    msg_fmt = (
        "Cannot remove child cell {cell_name}: {count} live instances are still in "
        "its subtree; move or delete them first, or reload with force"
    )
    code = 409


class CellRoutingInconsistency(CellsError):
    msg_fmt = "Inconsistency in cell routing: {reason}"


class CellMaxHopCountReached(CellsError):
    msg_fmt = "Cell message has reached maximum hop count: {hop_count}"


class CellTimeout(CellsError):
    """No answer arrived before the call's deadline.

    Classified 504 (a gateway timeout), not 404 as cells v1 did.
    """

    msg_fmt = "Timeout waiting for response from cell {cell_name}"
    code = 504


class CellUnreachable(CellsError):
    """No link to the neighbour that leads to the cell is up."""

    msg_fmt = "Cell {cell_name} is unreachable: {reason}"
    code = 503


class CellOutcomeUnknown(CellsError):
    """The message was sent to the neighbour that leads to the cell, and the
    link was lost before an answer came back: it may or may not have been
    applied there (a Response's outcome "unknown"). Re-running an
    idempotent request is safe; it applies once."""

    msg_fmt = (
        "Outcome at cell {cell_name} unknown: the message was sent but the link "
        "was lost before the answer ({reason}); it may or may not have been applied"
    )
    code = 504


class CellProtocolTooOld(CellsError):
    """The link to the neighbour speaks an older inter-cell protocol
    version than the message needs (refused before sending)."""

    msg_fmt = (
        "Cannot send {method} to {cell_name}: it needs inter-cell protocol "
        "version {needed}, the link speaks version {have}"
    )
    code = 501


class StoreUnavailable(CellsError):
    """The cell's store cannot take the call: it is not open (the cell is
    stopping, or was never started) or it failed to open."""

    msg_fmt = "The store of this cell is unavailable: {reason}"
    code = 503


class OutboxFull(CellsError):
    """The outbox of must-deliver messages for a neighbour is at its bound
    (``[cells] outbox_limit``): the message was not accepted."""

    msg_fmt = (
        "The outbox of cell {cell_name} holds {count} messages (limit {limit}); "
        "{method} was not accepted. Is the link to {neighbour} down?"
    )
    code = 503


class PendingBuildsFull(OutboxFull):
    """The builds a cell has accepted and not yet placed are at the bound
    (``[cells] outbox_limit``, which bounds them as it bounds the outbox):
    the build was not accepted."""

    msg_fmt = (
        "Cell {cell_name} holds {count} builds not yet placed (limit {limit}, "
        "[cells] outbox_limit); the build of {uuids} was not accepted. "
        "Are its children reachable?"
    )
    code = 503


class MessageTooLarge(CellsError):
    msg_fmt = "Message of {size} bytes exceeds the limit of {limit} bytes"
    code = 413


class MalformedMessage(CellsError):
    msg_fmt = "Malformed cell message: {reason}"
    code = 400


class UnknownMethod(CellsError):
    """A message named a method that the contract does not declare."""

    msg_fmt = "Unknown {kind} message method: {method_name!r}"
    code = 400


class InvalidArguments(CellsError):
    msg_fmt = "Bad arguments for {method_name}: {reason}"
    code = 400


class DuplicateMessage(CellsError):
    msg_fmt = "Message {uuid} was already handled by cell {cell_name}"
    code = 409


class CellNotFound(CellsError):
    msg_fmt = "Cell {cell_name} doesn't exist."
    code = 404


class CellExists(CellsError):
    msg_fmt = "Cell with name {name} already exists."


class RemoteError(CellsError):
    """An error raised in another cell whose class is not rebuilt here."""

    msg_fmt = "Remote error: {exc_type} {value}\n{traceback}"

    def __init__(
        self,
        exc_type: str = "Unknown",
        value: str = "",
        traceback: str = "",
        message: str | None = None,
    ) -> None:
        self.exc_type = exc_type
        self.value = value
        self.traceback = traceback
        super().__init__(message, exc_type=exc_type, value=value, traceback=traceback)


#: Modules whose exception classes are rebuilt from the wire.
ALLOWED_MODULES: set[str] = {"builtins", __name__}


def allow_remote_module(module: str) -> None:
    """Let exceptions from ``module`` be rebuilt when they arrive from a cell."""
    ALLOWED_MODULES.add(module)


def serialize_remote_exception(
    exc: BaseException, tb: TracebackType | None = None
) -> dict[str, Any]:
    """The wire form of an exception: class, module, message, traceback."""
    cls = type(exc)
    name = cls.__name__
    module = cls.__module__
    # An exception rebuilt from another cell keeps its original identity.
    remote_of = getattr(cls, "_remote_of", None)
    if remote_of is not None:
        name, module = remote_of.__name__, remote_of.__module__
    if tb is None:
        tb = exc.__traceback__
    tb_lines = traceback.format_exception(type(exc), exc, tb) if tb else []
    remote_tb = getattr(exc, "remote_traceback", None)
    if remote_tb:
        tb_lines = list(remote_tb) + tb_lines
    if isinstance(exc, CellsError):
        args: list[Any] = []
        kwargs = _jsonable(exc.kwargs)
        kwargs.setdefault("code", exc.code)
        message = exc.message
    else:
        args = [_jsonable(a) for a in exc.args]
        kwargs = {}
        message = str(exc)
    return {
        "class": name,
        "module": module,
        "message": message,
        "tb": tb_lines,
        "args": args,
        "kwargs": kwargs,
    }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return str(value)


_remote_classes: dict[type[BaseException], type[BaseException]] = {}


def _remote_class(cls: type[BaseException]) -> type[BaseException]:
    """A subclass of ``cls`` whose str() adds the remote traceback."""
    try:
        return _remote_classes[cls]
    except KeyError:
        pass

    def __str__(self: BaseException) -> str:
        base = cls.__str__(self)
        tb = getattr(self, "remote_traceback", None)
        return base + ("\n" + "".join(tb) if tb else "")

    remote = type(
        cls.__name__ + "_Remote",
        (cls,),
        {
            "__str__": __str__,
            "_remote_of": cls,
            "__module__": cls.__module__ + "_Remote",
        },
    )
    _remote_classes[cls] = remote
    return remote


def deserialize_remote_exception(data: Mapping[str, Any]) -> BaseException:
    """Rebuild an exception from its wire form, allow-listed modules only.

    The result is an instance of the original class (through a ``_Remote``
    subclass carrying ``remote_traceback``), or :class:`RemoteError`.
    """
    name = str(data.get("class", "Unknown"))
    module = str(data.get("module", ""))
    message = str(data.get("message", ""))
    tb = data.get("tb") or []
    if not isinstance(tb, list):
        tb = [str(tb)]
    tb = [str(line) for line in tb]
    args = data.get("args") or []
    kwargs = data.get("kwargs") or {}
    cls: Any = None
    if module in ALLOWED_MODULES:
        mod = builtins if module == "builtins" else sys.modules.get(module)
        cls = getattr(mod, name, None) if mod is not None else None
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        return RemoteError(name, message, "".join(tb))
    exc: BaseException
    try:
        if issubclass(cls, CellsError) and isinstance(kwargs, Mapping):
            init_kwargs = {k: v for k, v in kwargs.items() if k != "code"}
            if cls is RemoteError:
                exc = RemoteError(**init_kwargs)
            else:
                exc = cls.__new__(cls)
                CellsError.__init__(exc, message, **init_kwargs)
        else:
            exc = cls(*args) if isinstance(args, list) else cls(message)
    except Exception:
        return RemoteError(name, message, "".join(tb))
    # Some builtins refuse a class swap; they keep their class and message.
    with contextlib.suppress(TypeError):
        exc.__class__ = _remote_class(cls)  # type: ignore[assignment]  # a subclass
    exc.remote_traceback = tb  # type: ignore[attr-defined]
    return exc


class CallTimeout(CellsError):
    """The local cellsd did not answer a call in time."""

    msg_fmt = "No answer from cellsd to {method} within {timeout} seconds"
    code = 504


class NotConnected(CellsError):
    """The client has no connection to cellsd."""

    msg_fmt = "Not connected to cellsd: {reason}"
    code = 503


# --------------------------------------------------------------------------
# Objects and the cell store. Appended here so that they are rebuilt from the
# wire like every other CellsError (this module is in ALLOWED_MODULES).


class IncompatibleObjectVersion(CellsError):
    """A versioned object arrived in a major version this cell does not know."""

    msg_fmt = "Version {objver} of {objname} is not supported (we have {supported})"
    code = 400


class ObjectActionError(CellsError):
    msg_fmt = "Object action {action} failed because: {reason}"


class InstanceNotFound(CellsError):
    msg_fmt = "Instance {instance_id} could not be found."
    code = 404


class InstanceExists(CellsError):
    msg_fmt = "Instance {name} already exists."
    code = 409


class InstanceInfoCacheNotFound(CellsError):
    msg_fmt = "Info cache for instance {instance_uuid} could not be found."
    code = 404


class InstanceInvalidState(CellsError):
    msg_fmt = (
        "Instance {instance_uuid} in {attr} {state}. Cannot {method} while the "
        "instance is in this state."
    )
    code = 409


class InstanceUpdateConflict(CellsError):
    msg_fmt = "Conflict updating instance {instance_uuid}."
    code = 409


class UnexpectedTaskStateError(InstanceUpdateConflict):
    msg_fmt = "Conflict updating instance {instance_uuid}. Expected: {expected}. Actual: {actual}"


class UnexpectedVMStateError(UnexpectedTaskStateError):
    """A vm_state guard failed; a kind of UnexpectedTaskStateError so that a
    caller that guards both states catches one class."""

    msg_fmt = (
        "Unexpected vm_state updating instance {instance_uuid}. "
        "Expected: {expected}. Actual: {actual}"
    )


class ComputeHostNotFound(CellsError):
    msg_fmt = "Compute host {host} could not be found."
    code = 404


class HostBinaryNotFound(CellsError):
    msg_fmt = "Could not find binary {binary} on host {host}."
    code = 404


class ServiceNotFound(CellsError):
    msg_fmt = "Service {service_id} could not be found."
    code = 404


class ServiceBinaryExists(CellsError):
    msg_fmt = "Service with host {host} binary {binary} exists."
    code = 409


class ServiceTopicExists(CellsError):
    msg_fmt = "Service with host {host} topic {topic} exists."
    code = 409


class KeypairNotFound(CellsError):
    msg_fmt = "Keypair {name} not found for user {user_id}"
    code = 404


class KeyPairExists(CellsError):
    msg_fmt = "Key pair '{key_name}' already exists."
    code = 409


class MigrationNotFound(CellsError):
    msg_fmt = "Migration {migration_id} could not be found."
    code = 404


class TaskAlreadyRunning(CellsError):
    msg_fmt = "Task {task_name} is already running on host {host}"
    code = 409


class InstanceActionNotFound(CellsError):
    msg_fmt = "Action for request_id {request_id} on instance {instance_uuid} not found"
    code = 404


class InstanceActionEventNotFound(CellsError):
    msg_fmt = "Event {event} not found for action id {action_id}"
    code = 404


class BlockDeviceMappingNotFound(CellsError):
    msg_fmt = "Block device mapping {uuid} could not be found."
    code = 404


class TaskNotRunning(CellsError):
    msg_fmt = "Task {task_name} is not running on host {host}"
    code = 404


# --------------------------------------------------------------------------
# Message methods and the compute layer (behaviour §2.5, §3.2). Appended
# here for the same reason as above: rebuilt from the wire like the rest.


class CellServiceAPIMethodNotFound(CellsError):
    """run_compute_api_method named a method outside the allow-list."""

    msg_fmt = "Service API method not found: {detail}"
    code = 404


class ComputeServiceUnavailable(CellsError):
    msg_fmt = "Compute service of {host} is unavailable at this time."
    code = 503


class NoValidHost(CellsError):
    msg_fmt = "No valid host was found. {reason}"


class NoCellsAvailable(CellsError):
    msg_fmt = "No cells available matching scheduling criteria."


class UnableToMigrateToSelf(CellsError):
    msg_fmt = "Unable to migrate instance ({instance_id}) to current host ({host})."
    code = 400


class CannotResizeToSameFlavor(CellsError):
    msg_fmt = "When resizing, instances must change flavor!"
    code = 400


class ConsoleTypeInvalid(CellsError):
    msg_fmt = "Invalid console type {console_type}"
    code = 400


class NotAvailableHere(CellsError):
    """A message needs a part this cell was not built with (a store or a
    compute layer), e.g. an instance action sent to a cell without hosts."""

    msg_fmt = "Cell {cell_name} has no {what}"
    code = 501


class InvalidSchedulerHint(CellsError):
    """A build's scheduler hint cannot be followed (e.g. a ``target_cell``
    that names no cell below the one scheduling). Not retried."""

    msg_fmt = "Scheduler hint {hint}={value!r} is invalid: {reason}"
    code = 400


class SchedulerHintForbidden(CellsError):
    """The request's context may not use this scheduler hint (policy in
    ``[scheduler] policy``). Not retried."""

    msg_fmt = "Scheduler hint {hint} is not allowed for this request: {reason}"
    code = 403
