"""The cell's config file: what it accepts, what it refuses and why."""

from __future__ import annotations

import copy
import math
import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest

from cellsd.config import (
    DNS_LABEL_RULE,
    HostSettings,
    Neighbour,
    load_settings,
    parse_settings,
)
from cellsd.config_write import render_config, write_cell_config
from cellsd.errors import ConfigError

DESIGN_EXAMPLE = """\
[cell]
name = "child-cell1"
state_dir = "var/child-cell1"

[tls]
ca = "pki/ca.pem"
cert = "pki/child-cell1.pem"
key = "pki/child-cell1.key"

[cells]
listen = "tcp:7102:interface=127.0.0.1"
max_hop_count = 10
call_timeout = 60

[[parents]]
name = "api"
endpoint = "tcp:127.0.0.1:7101"

[[children]]
name = "grandchild-cell1"

[api]
listen = "unix:var/child-cell1/cellsd.sock"

[store]

[[compute.hosts]]
name = "host1"
vcpus = 32
memory_mb = 131072
disk_gb = 2000
"""


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A config directory holding the TLS files a config must point at."""
    pki = tmp_path / "pki"
    pki.mkdir()
    for name in ("ca.pem", "child-cell1.pem", "child-cell1.key"):
        (pki / name).write_text("not checked here\n")
    return tmp_path


def minimal() -> dict[str, Any]:
    return {
        "cell": {"name": "child-cell1"},
        "tls": {
            "ca": "pki/ca.pem",
            "cert": "pki/child-cell1.pem",
            "key": "pki/child-cell1.key",
        },
    }


def with_(change: dict[str, Any]) -> dict[str, Any]:
    """The minimal config with sections replaced or added."""
    data = copy.deepcopy(minimal())
    for section, value in change.items():
        if isinstance(value, dict) and isinstance(data.get(section), dict):
            data[section].update(value)
        else:
            data[section] = value
    return data


def test_design_example_loads(base: Path) -> None:
    """The example in DESIGN.md is a valid config and reads as it says."""
    path = base / "cell.toml"
    path.write_text(DESIGN_EXAMPLE)
    s = load_settings(path)
    assert s.config_path == path
    assert s.cell.name == "child-cell1"
    assert s.cell.state_dir == base / "var/child-cell1"
    assert s.cells.listen == "tcp:7102:interface=127.0.0.1"
    assert s.cells.call_timeout == 60.0
    assert isinstance(s.cells.call_timeout, float)
    assert s.parents == (Neighbour("api", "tcp:127.0.0.1:7101", is_parent=True),)
    assert s.children == (Neighbour("grandchild-cell1", None, is_parent=False),)
    assert s.neighbours == s.parents + s.children
    assert s.api.listen == f"unix:{base}/var/child-cell1/cellsd.sock"
    assert s.compute.hosts == (HostSettings("host1", 32, 131072, 2000),)


def test_defaults(base: Path) -> None:
    """A config with only [cell] name and [tls] gets the documented defaults."""
    s = parse_settings(minimal(), base)
    state = base / "var" / "child-cell1"
    assert s.cell.state_dir == state
    assert dict(s.cell.capabilities) == {
        "hypervisor": ("simulated",),
        "os": ("linux",),
    }
    c = s.cells
    assert c.listen is None
    assert c.max_hop_count == 10
    assert c.call_timeout == 60.0
    assert c.max_message_bytes == 16 * 1024 * 1024
    assert c.dedupe_window == 300.0
    assert c.reconnect_max_delay == 30.0
    assert c.update_interval == 60.0
    assert c.mute_child_interval == 300.0
    assert c.reserve_percent == 10.0
    assert s.parents == () and s.children == ()
    assert s.api.listen == f"unix:{state}/cellsd.sock:mode=600"
    assert s.api.amqp is None
    assert s.api.call_timeout == 60.0
    assert s.store.url == f"sqlite:///{state}/cell.sqlite"
    assert s.store.url.startswith("sqlite:////")
    assert s.compute.hosts == ()
    assert (s.log.format, s.log.file, s.log.level) == ("text", None, "info")
    assert s.config_path is None


def test_settings_are_frozen(base: Path) -> None:
    """Settings are shared by every service; nobody may change them."""
    s = parse_settings(minimal(), base)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        s.cell.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.cell.capabilities["os"] = ("bsd",)  # type: ignore[index]


def test_relative_paths_follow_the_config_file(
    base: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative paths are read against the config's directory, not the cwd."""
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    path = base / "cell.toml"
    path.write_text(
        render_config(
            with_(
                {
                    "cell": {"state_dir": "state/../run"},
                    "store": {"url": "sqlite:///db/cell.sqlite"},
                    "log": {"file": "logs/cell.log"},
                }
            )
        )
    )
    s = load_settings(path)
    assert s.cell.state_dir == base / "run"
    assert s.tls.ca == base / "pki" / "ca.pem"
    assert s.tls.cert == base / "pki" / "child-cell1.pem"
    assert s.tls.key == base / "pki" / "child-cell1.key"
    assert s.store.url == f"sqlite:///{base}/db/cell.sqlite"
    assert s.log.file == base / "logs" / "cell.log"


def test_relative_config_path(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A config named relative to the cwd is recorded with its absolute path."""
    (base / "cell.toml").write_text(render_config(minimal()))
    monkeypatch.chdir(base.parent)
    s = load_settings(Path(base.name) / "cell.toml")
    assert s.config_path == base / "cell.toml"
    assert s.cell.state_dir == base / "var" / "child-cell1"


def test_absolute_paths_are_kept(base: Path) -> None:
    """An absolute state_dir or TLS path is used as written."""
    data = with_({"cell": {"state_dir": "/srv/cell"}})
    data["tls"] = {k: str(base / v) for k, v in data["tls"].items()}
    s = parse_settings(data, Path("/nowhere"))
    assert s.cell.state_dir == Path("/srv/cell")
    assert s.tls.ca == base / "pki" / "ca.pem"
    assert s.store.url == "sqlite:////srv/cell/cell.sqlite"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@127.0.0.1:5432/cells", "postgresql://u:p@127.0.0.1:5432/cells"),
        ("sqlite:////abs/cell.sqlite", "sqlite:////abs/cell.sqlite"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("sqlite://", "sqlite://"),
        ("sqlite:///rel/x.db?timeout=5", "sqlite:///{base}/rel/x.db?timeout=5"),
    ],
)
def test_store_urls(base: Path, url: str, expected: str) -> None:
    """Only a relative SQLite file path is rewritten; other URLs pass as is."""
    s = parse_settings(with_({"store": {"url": url}}), base)
    assert s.store.url == expected.format(base=base)


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("unix:var/x.sock:mode=600", "unix:{base}/var/x.sock:mode=600"),
        ("unix:x.sock", "unix:{base}/x.sock"),
        ("unix:/run/x.sock:mode=600", "unix:/run/x.sock:mode=600"),
        ("unix:path=var/x.sock:timeout=3", "unix:path={base}/var/x.sock:timeout=3"),
        ("unix:mode=660:address=x.sock", "unix:mode=660:address={base}/x.sock"),
        ("tcp:7101:interface=127.0.0.1", "tcp:7101:interface=127.0.0.1"),
    ],
)
def test_unix_endpoints_are_made_absolute(base: Path, endpoint: str, expected: str) -> None:
    """A relative unix socket path is rewritten; the rest of the string stays."""
    s = parse_settings(with_({"api": {"listen": endpoint}}), base)
    assert s.api.listen == expected.format(base=base)


def test_unix_endpoint_escapes_colons(tmp_path: Path) -> None:
    """A config directory with ':' in its name still gives a parsable endpoint."""
    from twisted.internet.endpoints import _parseServer  # the string grammar

    odd = tmp_path / "a:b"
    (odd / "pki").mkdir(parents=True)
    for name in ("ca.pem", "child-cell1.pem", "child-cell1.key"):
        (odd / "pki" / name).write_text("x")
    s = parse_settings(with_({"cells": {"listen": "unix:s.sock:mode=600"}}), odd)
    assert s.cells.listen == f"unix:{tmp_path}/a\\:b/s.sock:mode=600"
    kind, args, kwargs = _parseServer(s.cells.listen, None)
    assert (kind, args[0], kwargs["mode"]) == ("UNIX", f"{odd}/s.sock", 0o600)
    kind, args, kwargs = _parseServer(s.api.listen, None)
    assert args[0] == f"{odd}/var/child-cell1/cellsd.sock"


def test_capabilities_and_weights(base: Path) -> None:
    """Capabilities and neighbour weights are read as given."""
    s = parse_settings(
        with_(
            {
                "cell": {"capabilities": {"hypervisor": ["kvm", "qemu"]}},
                "parents": [
                    {
                        "name": "api",
                        "endpoint": "tls:api.example:7101",
                        "weight_offset": -5,
                        "weight_scale": 0.5,
                    }
                ],
            }
        ),
        base,
    )
    assert dict(s.cell.capabilities) == {"hypervisor": ("kvm", "qemu")}
    assert s.parents[0].weight_offset == -5.0
    assert s.parents[0].weight_scale == 0.5


REFUSALS: list[tuple[str, dict[str, Any], str, str]] = [
    # (case id, change, key named, fragment of the rule)
    ("unknown section", {"cellz": {}}, "cellz", "unknown key; allowed: cell, tls"),
    ("unknown cell key", {"cell": {"nmae": "x"}}, "cell.nmae", "allowed: name"),
    ("unknown cells key", {"cells": {"hops": 3}}, "cells.hops", "max_hop_count"),
    ("unknown api key", {"api": {"port": 1}}, "api.port", "unknown key"),
    ("unknown store key", {"store": {"path": "x"}}, "store.path", "allowed: url"),
    ("unknown log key", {"log": {"colour": True}}, "log.colour", "unknown key"),
    ("unknown tls key", {"tls": {"crl": "x"}}, "tls.crl", "allowed: ca, cert, key"),
    (
        "unknown parent key",
        {"parents": [{"name": "api", "endpoint": "tcp:h:1", "port": 1}]},
        "parents[0].port",
        "allowed: name, endpoint, weight_offset, weight_scale",
    ),
    (
        "child with endpoint",
        {"children": [{"name": "c1", "endpoint": "tcp:h:1"}]},
        "children[0].endpoint",
        "allowed: name, weight_offset, weight_scale",
    ),
    (
        "unknown host key",
        {
            "compute": {
                "hosts": [{"name": "h1", "vcpus": 1, "memory_mb": 1, "disk_gb": 1, "gpus": 2}]
            }
        },
        "compute.hosts[0].gpus",
        "unknown key",
    ),
    ("cell not a table", {"cell": "child-cell1"}, "cell", "must be a table"),
    ("no cell", {"cell": None}, "cell", "is required"),
    ("no name", {"cell": {"name": None}}, "cell.name", "is required"),
    ("no tls", {"tls": None}, "tls", "is required"),
    ("no cert", {"tls": {"cert": None}}, "tls.cert", "is required"),
    ("name underscore", {"cell": {"name": "child_cell1"}}, "cell.name", DNS_LABEL_RULE),
    ("name leading dash", {"cell": {"name": "-cell"}}, "cell.name", DNS_LABEL_RULE),
    ("name trailing dash", {"cell": {"name": "cell-"}}, "cell.name", DNS_LABEL_RULE),
    ("name too long", {"cell": {"name": "a" * 64}}, "cell.name", DNS_LABEL_RULE),
    ("name with path", {"cell": {"name": "api!c1"}}, "cell.name", DNS_LABEL_RULE),
    ("name empty", {"cell": {"name": ""}}, "cell.name", "non-empty string"),
    ("name a number", {"cell": {"name": 7}}, "cell.name", "non-empty string"),
    (
        "parent name",
        {"parents": [{"name": "api@h", "endpoint": "tcp:h:1"}]},
        "parents[0].name",
        DNS_LABEL_RULE,
    ),
    (
        "second parent name",
        {"parents": [{"name": "a", "endpoint": "tcp:h:1"}, {"name": "b.c", "endpoint": "tcp:h:2"}]},
        "parents[1].name",
        DNS_LABEL_RULE,
    ),
    (
        "parent and child alike",
        {"parents": [{"name": "api", "endpoint": "tcp:h:1"}], "children": [{"name": "api"}]},
        "children[0].name",
        "'api' is already listed as parents[0].name",
    ),
    (
        "child twice",
        {"children": [{"name": "c1"}, {"name": "c1"}]},
        "children[1].name",
        "already listed as children[0].name",
    ),
    (
        "ourselves as parent",
        {"parents": [{"name": "child-cell1", "endpoint": "tcp:h:1"}]},
        "parents[0].name",
        "this cell's own name",
    ),
    (
        "ourselves as child",
        {"children": [{"name": "child-cell1"}]},
        "children[0].name",
        "this cell's own name",
    ),
    (
        "parent without endpoint",
        {"parents": [{"name": "api"}]},
        "parents[0].endpoint",
        "is required",
    ),
    ("parents a table", {"parents": {"name": "api"}}, "parents", "array of tables"),
    ("children strings", {"children": ["c1"]}, "children", "array of tables"),
    (
        "endpoint without type",
        {"parents": [{"name": "api", "endpoint": "127.0.0.1:7101"}]},
        "parents[0].endpoint",
        "must be a Twisted endpoint string starting with one of: tcp:",
    ),
    (
        "endpoint unknown type",
        {"parents": [{"name": "api", "endpoint": "http://api:80"}]},
        "parents[0].endpoint",
        "Twisted endpoint",
    ),
    ("listen empty type", {"cells": {"listen": "tcp:"}}, "cells.listen", "Twisted endpoint"),
    ("unix without path", {"api": {"listen": "unix:mode=600"}}, "api.listen", "socket path"),
    ("api listen bad", {"api": {"listen": "7000"}}, "api.listen", "endpoint"),
    ("hop count zero", {"cells": {"max_hop_count": 0}}, "cells.max_hop_count", "at least 1"),
    (
        "hop count string",
        {"cells": {"max_hop_count": "10"}},
        "cells.max_hop_count",
        "must be an integer",
    ),
    (
        "hop count float",
        {"cells": {"max_hop_count": 2.5}},
        "cells.max_hop_count",
        "must be an integer",
    ),
    (
        "hop count bool",
        {"cells": {"max_hop_count": True}},
        "cells.max_hop_count",
        "must be an integer",
    ),
    ("timeout zero", {"cells": {"call_timeout": 0}}, "cells.call_timeout", "greater than 0"),
    ("timeout negative", {"cells": {"call_timeout": -1.5}}, "cells.call_timeout", "greater than 0"),
    ("timeout string", {"cells": {"call_timeout": "60"}}, "cells.call_timeout", "must be a number"),
    (
        "timeout nan",
        {"cells": {"call_timeout": math.nan}},
        "cells.call_timeout",
        "must be a number",
    ),
    ("dedupe zero", {"cells": {"dedupe_window": 0}}, "cells.dedupe_window", "greater than 0"),
    (
        "reconnect zero",
        {"cells": {"reconnect_max_delay": 0}},
        "cells.reconnect_max_delay",
        "greater than 0",
    ),
    ("update zero", {"cells": {"update_interval": 0.0}}, "cells.update_interval", "greater than 0"),
    (
        "mute negative",
        {"cells": {"mute_child_interval": -1}},
        "cells.mute_child_interval",
        "greater than 0",
    ),
    ("bytes zero", {"cells": {"max_message_bytes": 0}}, "cells.max_message_bytes", "at least 1"),
    (
        "reserve over",
        {"cells": {"reserve_percent": 100.5}},
        "cells.reserve_percent",
        "between 0 and 100",
    ),
    (
        "reserve under",
        {"cells": {"reserve_percent": -1}},
        "cells.reserve_percent",
        "between 0 and 100",
    ),
    ("api timeout", {"api": {"call_timeout": 0}}, "api.call_timeout", "greater than 0"),
    ("amqp not amqp", {"api": {"amqp": "http://rabbit/"}}, "api.amqp", "amqp://"),
    ("amqp not a string", {"api": {"amqp": 5672}}, "api.amqp", "string"),
    ("store no scheme", {"store": {"url": "cell.sqlite"}}, "store.url", "URL"),
    ("log format", {"log": {"format": "xml"}}, "log.format", "must be one of: text, json"),
    (
        "log level",
        {"log": {"level": "verbose"}},
        "log.level",
        "must be one of: debug, info, warn, error",
    ),
    (
        "capabilities not lists",
        {"cell": {"capabilities": {"os": "linux"}}},
        "cell.capabilities.os",
        "list of strings",
    ),
    (
        "weight not a number",
        {"children": [{"name": "c1", "weight_scale": "2"}]},
        "children[0].weight_scale",
        "must be a number",
    ),
    (
        "host no vcpus",
        {"compute": {"hosts": [{"name": "h1", "memory_mb": 1, "disk_gb": 1}]}},
        "compute.hosts[0].vcpus",
        "is required",
    ),
    (
        "host zero memory",
        {"compute": {"hosts": [{"name": "h1", "vcpus": 1, "memory_mb": 0, "disk_gb": 1}]}},
        "compute.hosts[0].memory_mb",
        "at least 1",
    ),
    (
        "host bad name",
        {"compute": {"hosts": [{"name": "h_1", "vcpus": 1, "memory_mb": 1, "disk_gb": 1}]}},
        "compute.hosts[0].name",
        DNS_LABEL_RULE,
    ),
    (
        "host twice",
        {
            "compute": {
                "hosts": [
                    {"name": "h1", "vcpus": 1, "memory_mb": 1, "disk_gb": 1},
                    {"name": "h1", "vcpus": 2, "memory_mb": 1, "disk_gb": 1},
                ]
            }
        },
        "compute.hosts[1].name",
        "listed twice",
    ),
]


@pytest.mark.parametrize(
    ("change", "key", "rule"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
def test_refusals_name_the_key_and_rule(
    base: Path, change: dict[str, Any], key: str, rule: str
) -> None:
    """Every broken rule is refused with the dotted key first, then the rule."""
    data = with_(change)
    for section, value in change.items():  # None means "leave this out"
        if value is None:
            del data[section]
        elif isinstance(value, dict):
            for k in [k for k, v in value.items() if v is None]:
                del data[section][k]
    with pytest.raises(ConfigError) as info:
        parse_settings(data, base)
    message = str(info.value)
    assert message.startswith(f"{key}: "), message
    assert rule in message, message
    assert info.value.kwargs == {"key": key, "rule": message[len(key) + 2 :]}


def test_missing_tls_file_is_refused(base: Path) -> None:
    """A TLS file that does not exist is named with its resolved path."""
    (base / "pki" / "child-cell1.key").unlink()
    with pytest.raises(ConfigError) as info:
        parse_settings(minimal(), base)
    assert str(info.value) == (f"tls.key: file not found: {base / 'pki' / 'child-cell1.key'}")


def test_tls_directory_is_not_a_file(base: Path) -> None:
    """A directory where a certificate should be is refused too."""
    data = with_({"tls": {"ca": "pki"}})
    with pytest.raises(ConfigError, match=r"^tls\.ca: file not found"):
        parse_settings(data, base)


def test_missing_config_file(tmp_path: Path) -> None:
    """A missing config file is refused naming the file."""
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value) == f"{path}: config file not found"


def test_toml_syntax_error(tmp_path: Path) -> None:
    """A file that is not TOML is refused naming the file and the line."""
    path = tmp_path / "cell.toml"
    path.write_text('[cell]\nname = "a\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value).startswith(f"{path}: not valid TOML")
    assert "line 2" in str(info.value)


def test_write_cell_config_round_trips(base: Path) -> None:
    """What write_cell_config writes, load_settings reads back unchanged."""
    path = write_cell_config(
        base / "conf" / "cell.toml",
        name="child-cell1",
        state_dir=base / "state",
        tls_dir=base / "pki",
        listen="tcp:0:interface=127.0.0.1",
        parents=[("api", "tcp:127.0.0.1:7101")],
        children=["grandchild-cell1", "grandchild-cell2"],
        api_listen="unix:api.sock:mode=600",
        hosts=[
            HostSettings("host1", 32, 131072, 2000),
            {"name": "host2", "vcpus": 8, "memory_mb": 16384, "disk_gb": 100},
        ],
        extra={"cells": {"call_timeout": 5.5}, "log": {"format": "json"}},
    )
    s = load_settings(path)
    assert s.config_path == path
    assert s.cell.name == "child-cell1"
    assert s.cell.state_dir == base / "state"
    assert (s.tls.ca, s.tls.cert, s.tls.key) == (
        base / "pki" / "ca.pem",
        base / "pki" / "child-cell1.pem",
        base / "pki" / "child-cell1.key",
    )
    assert s.cells.listen == "tcp:0:interface=127.0.0.1"
    assert s.cells.call_timeout == 5.5
    assert s.parents == (Neighbour("api", "tcp:127.0.0.1:7101", True),)
    assert [c.name for c in s.children] == ["grandchild-cell1", "grandchild-cell2"]
    assert s.api.listen == f"unix:{base}/conf/api.sock:mode=600"
    assert s.compute.hosts == (
        HostSettings("host1", 32, 131072, 2000),
        HostSettings("host2", 8, 16384, 100),
    )
    assert s.log.format == "json"


def test_write_cell_config_relative_paths(base: Path) -> None:
    """Relative paths given to write_cell_config are relative to the file."""
    path = write_cell_config(
        base / "cell.toml", name="child-cell1", state_dir="var/c1", tls_dir="pki"
    )
    s = load_settings(path)
    assert s.cell.state_dir == base / "var" / "c1"
    assert s.tls.cert == base / "pki" / "child-cell1.pem"
    assert s.parents == () and s.children == () and s.compute.hosts == ()
    assert s.cells.listen is None


def test_render_config_escapes_strings() -> None:
    """Strings with quotes, backslashes and control characters survive."""
    nasty = 'a "quoted" \\ back\nslash\ttab\x7f é'
    data = {
        "cell": {"name": nasty, "n": 3, "f": 1.5, "b": True, "l": ["x", "y"]},
        "odd key": {"k": {"inner": 1}},
        "parents": [{"name": "p1"}, {"name": "p2"}],
    }
    assert tomllib.loads(render_config(data)) == data
