"""The ``[scheduler]`` section of a cell's TOML file.

::

    [scheduler]
    # Run in this order on every cell a build reaches (behaviour §8.5 #33:
    # never the directory listing's order). A name, or a dotted path to a
    # class providing ICellFilter.
    filters = ["target_cell", "different_cell", "image_properties"]
    # Names or dotted paths of ICellWeigher classes.
    weighers = ["mute_child", "ram_by_instance_type", "weight_offset"]
    # Per weigher; a weigher not listed keeps its own default multiplier.
    multipliers = { ram_by_instance_type = 10.0, mute_child = -10000.0, weight_offset = 1.0 }
    retries = 10          # attempts after the first, at the cell where the build started
    retry_delay = 2.0     # seconds between attempts
    # Who may use a hint: "admin" (admin contexts only) or "any".
    policy = { target_cell = "admin", different_cell = "any" }
    # hypervisor_version_requires passes a cell when "any" (or "all") of
    # the versions its subtree reports satisfies it.
    image_version_match = "any"

This module checks the section without importing :mod:`cellsd.config`
(which imports it); plugin names are resolved here, so a typo stops the cell
at start with the key that holds it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from cellsd.errors import ConfigError

DEFAULT_FILTERS = ("target_cell", "different_cell", "image_properties")
DEFAULT_WEIGHERS = ("mute_child", "ram_by_instance_type", "weight_offset")
DEFAULT_POLICY: Mapping[str, str] = MappingProxyType(
    {"target_cell": "admin", "different_cell": "any"}
)
POLICIES = ("admin", "any")
VERSION_MATCHES = ("any", "all")
KEYS = (
    "filters",
    "weighers",
    "multipliers",
    "retries",
    "retry_delay",
    "policy",
    "image_version_match",
)


@attrs.frozen
class SchedulerSettings:
    filters: tuple[str, ...] = DEFAULT_FILTERS
    weighers: tuple[str, ...] = DEFAULT_WEIGHERS
    multipliers: Mapping[str, float] = MappingProxyType({})
    retries: int = 10
    retry_delay: float = 2.0
    policy: Mapping[str, str] = DEFAULT_POLICY
    image_version_match: str = "any"

    def policy_for(self, hint: str) -> str:
        return self.policy.get(hint, DEFAULT_POLICY.get(hint, "any"))


def _names(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(key, "must be a list of names or dotted paths")
    if len(set(value)) != len(value):
        raise ConfigError(key, "lists a name twice")
    return tuple(value)


def _table(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a table")
    return value


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(key, "must be a finite number")
    return float(value)


def parse_scheduler(data: Any) -> SchedulerSettings:
    """Check a ``[scheduler]`` table (``{}`` when absent)."""
    from cellsd.scheduler.plugins import resolve_filter, resolve_weigher

    table = _table("scheduler", data)
    for name in table:
        if name not in KEYS:
            raise ConfigError(f"scheduler.{name}", f"unknown key; allowed: {', '.join(KEYS)}")
    defaults = SchedulerSettings()
    filters = _names("scheduler.filters", table.get("filters", list(defaults.filters)))
    for index, name in enumerate(filters):
        resolve_filter(name, f"scheduler.filters[{index}]")
    weighers = _names("scheduler.weighers", table.get("weighers", list(defaults.weighers)))
    for index, name in enumerate(weighers):
        resolve_weigher(name, f"scheduler.weighers[{index}]")
    multipliers = {
        str(k): _number(f"scheduler.multipliers.{k}", v)
        for k, v in _table("scheduler.multipliers", table.get("multipliers", {})).items()
    }
    for name in multipliers:
        if name not in weighers:
            raise ConfigError(f"scheduler.multipliers.{name}", "names no configured weigher")
    retries = table.get("retries", defaults.retries)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError("scheduler.retries", "must be an integer of at least 0")
    delay = _number("scheduler.retry_delay", table.get("retry_delay", defaults.retry_delay))
    if delay < 0:
        raise ConfigError("scheduler.retry_delay", "must be at least 0 (seconds)")
    policy = dict(DEFAULT_POLICY)
    for hint, rule in _table("scheduler.policy", table.get("policy", {})).items():
        if rule not in POLICIES:
            raise ConfigError(f"scheduler.policy.{hint}", f"must be one of: {', '.join(POLICIES)}")
        policy[str(hint)] = rule
    match = table.get("image_version_match", defaults.image_version_match)
    if match not in VERSION_MATCHES:
        raise ConfigError(
            "scheduler.image_version_match", f"must be one of: {', '.join(VERSION_MATCHES)}"
        )
    return SchedulerSettings(
        filters=filters,
        weighers=weighers,
        multipliers=MappingProxyType(multipliers),
        retries=retries,
        retry_delay=delay,
        policy=MappingProxyType(policy),
        image_version_match=str(match),
    )
