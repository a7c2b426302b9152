"""Filters and weighers by name: the built-in ones, or any class a user
names by dotted path (``mypackage.cells.RackFilter`` or
``mypackage.cells:RackFilter``) that provides ICellFilter / ICellWeigher.

A plugin class is built with the ``[scheduler]`` settings when its
constructor takes an argument, else with none; the object is checked with
zope.interface's ``verifyObject`` before it is used.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from zope.interface.exceptions import Invalid
from zope.interface.interface import InterfaceClass
from zope.interface.verify import verifyObject

from cellsd.errors import ConfigError
from cellsd.interfaces import ICellFilter, ICellWeigher
from cellsd.scheduler.filters import BUILTIN_FILTERS
from cellsd.scheduler.settings import SchedulerSettings
from cellsd.scheduler.weights import BUILTIN_WEIGHERS


def _import(path: str, key: str) -> Any:
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(key, f"{path!r} is neither a known name nor a dotted path")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(key, f"cannot import {module_name}: {e}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(key, f"{module_name} has no {attr}") from None


def _resolve(name: str, key: str, builtins: dict[str, type[Any]], iface: InterfaceClass) -> Any:
    cls = builtins.get(name) or _import(name, key)
    if not iface.implementedBy(cls):
        raise ConfigError(key, f"{name} does not implement {iface.__name__}")
    return cls


def resolve_filter(name: str, key: str = "scheduler.filters") -> Any:
    """The filter class ``name`` stands for; ConfigError naming ``key``."""
    return _resolve(name, key, BUILTIN_FILTERS, ICellFilter)


def resolve_weigher(name: str, key: str = "scheduler.weighers") -> Any:
    """The weigher class ``name`` stands for; ConfigError naming ``key``."""
    return _resolve(name, key, BUILTIN_WEIGHERS, ICellWeigher)


def _build(cls: Any, settings: SchedulerSettings, iface: InterfaceClass, key: str) -> Any:
    try:
        takes_settings = len(inspect.signature(cls).parameters) > 0
    except (TypeError, ValueError):
        takes_settings = False
    plugin = cls(settings) if takes_settings else cls()
    try:
        verifyObject(iface, plugin)
    except Invalid as e:
        raise ConfigError(key, f"{cls.__name__} does not provide {iface.__name__}: {e}") from None
    return plugin


def make_filters(settings: SchedulerSettings) -> list[Any]:
    """The configured filters, in the configured order."""
    return [
        _build(resolve_filter(name), settings, ICellFilter, f"scheduler.filters[{i}]")
        for i, name in enumerate(settings.filters)
    ]


def make_weighers(settings: SchedulerSettings) -> list[tuple[Any, float]]:
    """The configured weighers, each with its multiplier (configured under
    the name it is listed by, else its own default)."""
    out = []
    for i, name in enumerate(settings.weighers):
        weigher = _build(resolve_weigher(name), settings, ICellWeigher, f"scheduler.weighers[{i}]")
        multiplier = settings.multipliers.get(name, float(weigher.multiplier))
        out.append((weigher, multiplier))
    return out
