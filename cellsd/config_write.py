"""Writing cell configs: TOML for the shape :mod:`cellsd.config` reads.

Hand-written so that the daemon needs no TOML writer; used by ``cellsd
demo``, the tests and the benchmarks to make configs that
:func:`cellsd.config.load_settings` accepts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from cellsd.config import HostSettings


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | os.PathLike):
        return '"' + re.sub(r'["\\\x00-\x1f\x7f]', _escape_char, str(value)) + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    return "\\" + char if char in '"\\' else f"\\u{ord(char):04x}"


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml(key)


def render_config(data: Mapping[str, Any]) -> str:
    """TOML for our shape: sections, arrays of tables (also one level down).

    Hand-written so that the daemon needs no TOML writer; None values are
    left out, which is how "use the default" is said.
    """
    lines: list[str] = []

    def table(header: str, body: Mapping[str, Any]) -> None:
        lines.append(header)
        nested = {k: v for k, v in body.items() if _is_tables(v)}
        for key, value in body.items():
            if key not in nested and value is not None:
                lines.append(f"{_key(key)} = {_toml(value)}")
        lines.append("")
        for key, items in nested.items():
            for item in items:
                table(f"[[{header.strip('[]')}.{_key(key)}]]", item)

    for name, body in data.items():
        if isinstance(body, Mapping):
            table(f"[{_key(name)}]", body)
        else:  # an array of tables; an empty one is simply absent
            for item in body:
                table(f"[[{_key(name)}]]", item)
    return "\n".join(lines)


def _is_tables(value: Any) -> bool:
    seq = isinstance(value, list | tuple)
    return seq and bool(value) and all(isinstance(v, Mapping) for v in value)


def write_cell_config(
    path: str | os.PathLike[str],
    *,
    name: str,
    state_dir: str | os.PathLike[str],
    tls_dir: str | os.PathLike[str],
    listen: str | None = None,
    parents: Iterable[tuple[str, str]] = (),
    children: Iterable[str] = (),
    api_listen: str | None = None,
    hosts: Iterable[HostSettings | Mapping[str, Any]] = (),
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write a config that load_settings accepts, for the demo and tests.

    ``tls_dir`` is laid out as ``cellsd pki`` leaves it (ca.pem, NAME.pem,
    NAME.key). Relative paths are written as given, so they are read relative
    to the config file. ``parents`` are (name, endpoint) pairs; ``extra`` adds
    keys to sections, e.g. ``{"cells": {"call_timeout": 5}}``.
    """
    tls = Path(tls_dir)
    data: dict[str, Any] = {
        "cell": {"name": name, "state_dir": str(state_dir)},
        "tls": {
            "ca": str(tls / "ca.pem"),
            "cert": str(tls / f"{name}.pem"),
            "key": str(tls / f"{name}.key"),
        },
        "cells": {"listen": listen},
        "api": {"listen": api_listen},
        "parents": [{"name": n, "endpoint": e} for n, e in parents],
        "children": [{"name": n} for n in children],
        "compute": {
            "hosts": [attrs.asdict(h) if isinstance(h, HostSettings) else dict(h) for h in hosts]
        },
    }
    for section, values in (extra or {}).items():
        data.setdefault(section, {}).update(values)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_config(data), encoding="utf-8")
    return out
