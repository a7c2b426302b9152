"""Nova's instance states, and which of them each compute action accepts.

``vm_state`` is where an instance is at rest; ``task_state`` is what it is
doing (None when idle); ``power_state`` is what the hypervisor reports.
:data:`ACTIONS` is the state machine: for each action, the states it may
start from, the task it sets while it runs, and the name Nova records for
it in the instance actions.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

# -- vm_state ------------------------------------------------------------------

ACTIVE = "active"
BUILDING = "building"
PAUSED = "paused"
SUSPENDED = "suspended"
STOPPED = "stopped"
RESCUED = "rescued"
RESIZED = "resized"
SOFT_DELETED = "soft-delete"
DELETED = "deleted"
ERROR = "error"

# -- task_state ----------------------------------------------------------------

SCHEDULING = "scheduling"
NETWORKING = "networking"
BLOCK_DEVICE_MAPPING = "block_device_mapping"
SPAWNING = "spawning"
IMAGE_SNAPSHOT = "image_snapshot"
IMAGE_SNAPSHOT_PENDING = "image_snapshot_pending"
IMAGE_PENDING_UPLOAD = "image_pending_upload"
IMAGE_UPLOADING = "image_uploading"
IMAGE_BACKUP = "image_backup"
UPDATING_PASSWORD = "updating_password"
RESIZE_PREP = "resize_prep"
RESIZE_MIGRATING = "resize_migrating"
RESIZE_MIGRATED = "resize_migrated"
RESIZE_FINISH = "resize_finish"
RESIZE_REVERTING = "resize_reverting"
RESIZE_CONFIRMING = "resize_confirming"
REBOOTING = "rebooting"
REBOOT_PENDING = "reboot_pending"
REBOOT_STARTED = "reboot_started"
REBOOTING_HARD = "rebooting_hard"
REBOOT_STARTED_HARD = "reboot_started_hard"
PAUSING = "pausing"
UNPAUSING = "unpausing"
SUSPENDING = "suspending"
RESUMING = "resuming"
POWERING_OFF = "powering-off"
POWERING_ON = "powering-on"
REBUILDING = "rebuilding"
REBUILD_BLOCK_DEVICE_MAPPING = "rebuild_block_device_mapping"
REBUILD_SPAWNING = "rebuild_spawning"
MIGRATING = "migrating"
DELETING = "deleting"
SOFT_DELETING = "soft-deleting"

# -- power_state -----------------------------------------------------------------

NOSTATE = 0
RUNNING = 1
POWER_PAUSED = 3
SHUTDOWN = 4
POWER_SUSPENDED = 7

#: Any state: no check.
ANY = None


@attrs.frozen
class Action:
    """One compute action: where it may start, the task it runs as, the
    states it passes through, and Nova's instance-action name."""

    method: str
    record_as: str
    vm_states: Sequence[str] | None
    task_states: Sequence[str | None] | None
    task_state: str | None
    #: task_states after the first, one per step of the simulated work.
    steps: Sequence[str] = ()


_IDLE: Sequence[str | None] = (None,)

#: Soft reboots start from active only; hard ones also from these, and may
#: interrupt a soft reboot in progress.
HARD_REBOOT_FROM = (ACTIVE, STOPPED, PAUSED, SUSPENDED, ERROR)

ACTIONS: dict[str, Action] = {
    a.method: a
    for a in (
        # A build has no state check: it creates the instance (building).
        Action("build", "create", None, None, None),
        Action("start", "start", (STOPPED,), _IDLE, POWERING_ON),
        Action("stop", "stop", (ACTIVE, RESCUED, ERROR), _IDLE, POWERING_OFF),
        Action("reboot_soft", "reboot", (ACTIVE,), _IDLE, REBOOTING, (REBOOT_STARTED,)),
        Action(
            "reboot_hard",
            "reboot",
            HARD_REBOOT_FROM,
            (None, REBOOTING, REBOOT_PENDING, REBOOT_STARTED),
            REBOOTING_HARD,
            (REBOOT_STARTED_HARD,),
        ),
        Action("pause", "pause", (ACTIVE,), _IDLE, PAUSING),
        Action("unpause", "unpause", (PAUSED,), _IDLE, UNPAUSING),
        Action("suspend", "suspend", (ACTIVE,), _IDLE, SUSPENDING),
        Action("resume", "resume", (SUSPENDED,), _IDLE, RESUMING),
        Action(
            "resize",
            "resize",
            (ACTIVE, STOPPED),
            _IDLE,
            RESIZE_PREP,
            (RESIZE_MIGRATING, RESIZE_MIGRATED, RESIZE_FINISH),
        ),
        Action("confirm_resize", "confirmResize", (RESIZED,), _IDLE, RESIZE_CONFIRMING),
        Action("revert_resize", "revertResize", (RESIZED,), _IDLE, RESIZE_REVERTING),
        Action("live_migrate", "live-migration", (ACTIVE, PAUSED), _IDLE, MIGRATING),
        Action(
            "rebuild",
            "rebuild",
            (ACTIVE, STOPPED, ERROR),
            _IDLE,
            REBUILDING,
            (REBUILD_BLOCK_DEVICE_MAPPING, REBUILD_SPAWNING),
        ),
        Action(
            "snapshot",
            "createImage",
            (ACTIVE, STOPPED, PAUSED, SUSPENDED),
            _IDLE,
            IMAGE_SNAPSHOT_PENDING,
            (IMAGE_SNAPSHOT, IMAGE_PENDING_UPLOAD, IMAGE_UPLOADING),
        ),
        Action(
            "backup",
            "createBackup",
            (ACTIVE, STOPPED, PAUSED, SUSPENDED),
            _IDLE,
            IMAGE_BACKUP,
            (IMAGE_PENDING_UPLOAD, IMAGE_UPLOADING),
        ),
        Action("set_admin_password", "changePassword", (ACTIVE,), _IDLE, UPDATING_PASSWORD),
        Action(
            "soft_delete",
            "softDelete",
            (ACTIVE, STOPPED, PAUSED, SUSPENDED, RESCUED, RESIZED, ERROR),
            None,
            SOFT_DELETING,
        ),
        # A delete is accepted in any state, even while another task runs
        # (a stuck build must be deletable), but not twice at once.
        Action("delete", "delete", None, None, DELETING),
        Action("force_delete", "forceDelete", None, None, DELETING),
        # Network actions change no state; they need the instance on a host.
        Action(
            "reset_network",
            "resetNetwork",
            (ACTIVE, STOPPED, PAUSED, SUSPENDED, RESCUED, RESIZED, ERROR),
            None,
            None,
        ),
        Action(
            "inject_network_info",
            "injectNetworkInfo",
            (ACTIVE, STOPPED, PAUSED, SUSPENDED, RESCUED, RESIZED, ERROR),
            None,
            None,
        ),
    )
}

#: Where a stop or a hard reboot leaves the hypervisor, by vm_state.
POWER_OF: dict[str, int] = {
    ACTIVE: RUNNING,
    PAUSED: POWER_PAUSED,
    SUSPENDED: POWER_SUSPENDED,
    STOPPED: SHUTDOWN,
    SOFT_DELETED: SHUTDOWN,
    RESIZED: RUNNING,
    RESCUED: RUNNING,
    ERROR: NOSTATE,
    BUILDING: NOSTATE,
    DELETED: NOSTATE,
}
