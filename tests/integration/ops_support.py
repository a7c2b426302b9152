"""Helpers for the operating tests (manhole, status page, logs) that run
real cellsd processes and real clients (OpenSSH, headless Chromium)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import Cluster


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_program(names: tuple[str, ...], package: str) -> str:
    """The path of the first program found; in CI a missing one fails the
    test, elsewhere it is skipped saying what to install."""
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    message = (
        f"{names[0]} not found: install Debian's {package} package "
        "(scripts/setup-system does it when run as root)"
    )
    if in_ci():
        pytest.fail(f"{message}; CI must have it")
    pytest.skip(message)


@contextmanager
def short_base() -> Iterator[Path]:
    """A fresh directory under /tmp; short, because each cell's UNIX
    socket lives below it and socket paths are limited to ~100 bytes."""
    path = Path(tempfile.mkdtemp(prefix="cdo", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def append_config(cluster: Cluster, name: str, text: str) -> None:
    """Add sections to one cell's config (write_tree gives all the same)."""
    config = cluster.cells[name].config
    config.write_text(config.read_text() + "\n" + text)


def json_records(text: str) -> list[dict[str, Any]]:
    """The events of a JSON log (RFC 7464: each record starts with \\x1e)."""
    out = []
    for chunk in text.split("\x1e"):
        chunk = chunk.strip()
        if chunk:
            out.append(json.loads(chunk))
    return out


def run(argv: list[str], timeout: float = 60.0, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
