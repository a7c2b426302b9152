"""The [manhole], [metrics] and [log] trace_messages settings: defaults,
what they accept and what they refuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cellsd.config import DEFAULT_METRICS_LISTEN, Settings, parse_settings
from cellsd.errors import ConfigError


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A config directory with the TLS files and an authorized_keys file."""
    (tmp_path / "pki").mkdir()
    for name in ("ca.pem", "solo.pem", "solo.key"):
        (tmp_path / "pki" / name).write_text("not checked here\n")
    (tmp_path / "keys").write_text("ssh-ed25519 AAAA not checked here\n")
    return tmp_path


def load(base: Path, **sections: dict[str, Any]) -> Settings:
    data: dict[str, Any] = {
        "cell": {"name": "solo"},
        "tls": {"ca": "pki/ca.pem", "cert": "pki/solo.pem", "key": "pki/solo.key"},
    }
    data.update(sections)
    return parse_settings(data, base)


def refused(base: Path, **sections: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        load(base, **sections)
    return str(caught.value)


def test_operating_defaults(base: Path) -> None:
    """Without the sections the manhole and metrics are off, and message
    tracing (uuid lines at info) is on."""
    s = load(base)
    assert not s.manhole.enabled
    assert not s.metrics.enabled
    assert s.metrics.listen == DEFAULT_METRICS_LISTEN
    assert "interface=127.0.0.1" in DEFAULT_METRICS_LISTEN
    assert s.metrics.failures_kept == 50
    assert s.log.trace_messages is False


def test_metrics_enabled_by_flag_or_by_listen(base: Path) -> None:
    """`enabled = true` uses the loopback default; a listen alone enables;
    `enabled = false` wins over a listen."""
    assert load(base, metrics={"enabled": True}).metrics.listen == DEFAULT_METRICS_LISTEN
    s = load(base, metrics={"listen": "tcp:0:interface=127.0.0.1"})
    assert s.metrics.enabled and s.metrics.listen == "tcp:0:interface=127.0.0.1"
    assert not load(base, metrics={"enabled": False, "listen": "tcp:0"}).metrics.enabled


def test_manhole_defaults_to_a_private_socket_in_state_dir(base: Path) -> None:
    """Enabled without a listen, the manhole is a mode-600 socket in state_dir."""
    s = load(base, manhole={"enabled": True, "authorized_keys": "keys"})
    assert s.manhole.enabled
    assert s.manhole.authorized_keys == base / "keys"
    assert s.manhole.listen == f"unix:{s.cell.state_dir}/manhole.sock:mode=600"


def test_manhole_needs_authorized_keys(base: Path) -> None:
    """There is no password fallback: no key file, no manhole."""
    assert "manhole.authorized_keys: is required" in refused(base, manhole={"enabled": True})
    message = refused(base, manhole={"enabled": True, "authorized_keys": "missing"})
    assert "manhole.authorized_keys: file not found" in message


@pytest.mark.parametrize(
    "listen",
    [
        "tcp:2222:interface=0.0.0.0",
        "tcp:2222",
        "tcp:2222:interface=10.1.2.3",
        "tcp6:2222:interface=\\:\\:",
        "ssl:2222:interface=127.0.0.1",
    ],
)
def test_manhole_refuses_anything_but_loopback(base: Path, listen: str) -> None:
    """A manhole reachable from another machine is refused at start."""
    message = refused(base, manhole={"listen": listen, "authorized_keys": "keys"})
    assert message.startswith("manhole.listen:")


@pytest.mark.parametrize(
    "listen",
    ["tcp:2222:interface=127.0.0.1", "tcp:0:interface=localhost", "tcp6:0:interface=\\:\\:1"],
)
def test_manhole_accepts_loopback_ports(base: Path, listen: str) -> None:
    """127.0.0.0/8, localhost and ::1 are loopback."""
    s = load(base, manhole={"listen": listen, "authorized_keys": "keys"})
    assert s.manhole.enabled and s.manhole.listen == listen


def test_manhole_socket_mode(base: Path) -> None:
    """A unix socket gets mode=600 unless given; a mode letting others in
    is refused."""
    s = load(base, manhole={"listen": "unix:m.sock", "authorized_keys": "keys"})
    assert s.manhole.listen == f"unix:{base}/m.sock:mode=600"
    message = refused(base, manhole={"listen": "unix:m.sock:mode=666", "authorized_keys": "keys"})
    assert "mode=666 lets others in" in message


def test_trace_messages_must_be_a_bool(base: Path) -> None:
    """`trace_messages = "yes"` is refused with the key."""
    assert (
        refused(base, log={"trace_messages": "yes"}) == "log.trace_messages: must be true or false"
    )
    assert load(base, log={"trace_messages": False}).log.trace_messages is False
