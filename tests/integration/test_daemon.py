"""The three ways to start a cell, as an operator would: real processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellsd.cli.demo import write_tree

pytestmark = pytest.mark.integration

PYTHON = sys.executable
BIN = Path(PYTHON).parent


@pytest.fixture
def one_cell() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="cd"))
    try:
        cells = write_tree(base, {"solo-cell": []})
        yield cells["solo-cell"].config
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _wait_answering(config: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the daemon exited with {proc.returncode}")
        r = subprocess.run(
            [PYTHON, "-m", "cellsd.cli.cellsctl", "-c", str(config), "ping", "--all", "--json"],
            capture_output=True,
            text=True,
        )
        if r.returncode == 0:
            rows = json.loads(r.stdout)
            assert rows[0]["cell"] == "solo-cell" and rows[0]["ok"]
            return
        time.sleep(0.3)
    raise AssertionError("the daemon never answered")


def _wait_for_output(log: Path, text: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} (exit {proc.poll()}):\n{log.read_text()}")
        time.sleep(0.1)


def _run_until_answering(argv: list[str], config: Path, **kw: object) -> str:
    """Start a daemon, see it answer, SIGHUP it (it reloads its config and
    carries on), SIGTERM it; its output.

    A clean stop exits 0, or (twistd) re-raises SIGTERM to report it."""
    log = config.parent / "daemon.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **kw)  # type: ignore[call-overload]  # kw are Popen's
        try:
            _wait_answering(config, proc)
            proc.send_signal(signal.SIGHUP)
            _wait_for_output(log, "configuration reloaded", proc)
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) in (0, -signal.SIGTERM), log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return log.read_text()


def test_twistd_lists_the_plugin() -> None:
    """`twistd --help` lists cellsd among its commands."""
    r = subprocess.run([str(BIN / "twistd"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    assert "cellsd" in r.stdout


def test_cellsd_run_json_logs_and_clean_sigterm(one_cell: Path) -> None:
    """`cellsd run` serves requests, logs JSON lines on request, and stops
    cleanly (exit 0) on SIGTERM."""
    out = _run_until_answering(
        [PYTHON, "-m", "cellsd.cli.cellsd", "run", "-c", str(one_cell), "--log-format", "json"],
        one_cell,
    )
    records = [json.loads(line.lstrip("\x1e")) for line in out.splitlines() if line.strip()]
    assert any(r.get("cell") == "solo-cell" for r in records)


def test_cellsd_run_stops_once_on_two_signals(one_cell: Path) -> None:
    """Injected: SIGTERM then SIGINT at once (Ctrl-C in a terminal reaches
    the whole process group while `cellsd demo` forwards a TERM). The cell
    stops cleanly, exit 0, and logs no traceback."""
    log = one_cell.parent / "daemon.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [PYTHON, "-m", "cellsd.cli.cellsd", "run", "-c", str(one_cell)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_answering(one_cell, proc)
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=15) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert "Traceback" not in text and "ReactorNotRunning" not in text, text
    assert "SIGTERM: stopping" in text


def test_twistd_plugin_runs_a_cell(one_cell: Path) -> None:
    """`twistd -n cellsd -c FILE` runs the same service tree."""
    _run_until_answering(
        [str(BIN / "twistd"), "-n", "--pidfile=", "cellsd", "-c", str(one_cell)],
        one_cell,
        cwd=one_cell.parent,
    )


def test_tac_runs_a_cell(one_cell: Path) -> None:
    """`twistd -ny cellsd.tac` with CELLSD_CONFIG runs the same service tree."""
    tac = Path(__file__).resolve().parents[2] / "cellsd.tac"
    _run_until_answering(
        [str(BIN / "twistd"), "-ny", str(tac), "--pidfile="],
        one_cell,
        cwd=one_cell.parent,
        env={**os.environ, "CELLSD_CONFIG": str(one_cell)},
    )


def test_bad_config_is_refused_naming_the_key(one_cell: Path) -> None:
    """A config breaking a rule stops start-up with the key and the rule."""
    text = one_cell.read_text().replace('name = "solo-cell"', 'name = "bad_name!"', 1)
    one_cell.write_text(text)
    r = subprocess.run(
        [PYTHON, "-m", "cellsd.cli.cellsd", "run", "-c", str(one_cell)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "cell.name" in r.stderr
    assert "DNS label" in r.stderr


def test_cellsctl_exit_code_when_cellsd_is_not_running(one_cell: Path) -> None:
    """cellsctl says it cannot reach cellsd and exits 3."""
    r = subprocess.run(
        [PYTHON, "-m", "cellsd.cli.cellsctl", "-c", str(one_cell), "ping", "--all"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 3
    assert "cannot reach cellsd" in r.stderr


def test_pki_commands(tmp_path: Path) -> None:
    """`cellsd pki init` and `cellsd pki issue` write the CA and a cell's
    certificate and key."""
    run = [PYTHON, "-m", "cellsd.cli.cellsd", "pki"]
    assert subprocess.run([*run, "init", "--dir", str(tmp_path)], timeout=30).returncode == 0
    r = subprocess.run([*run, "issue", "--dir", str(tmp_path), "api-cell"], timeout=30)
    assert r.returncode == 0
    assert (tmp_path / "api-cell.pem").exists()
    assert (tmp_path / "api-cell.key").stat().st_mode & 0o777 == 0o600
