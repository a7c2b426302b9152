"""The cell's TOML file, turned into frozen, typed settings.

Everything is checked here, at start, so that a mistake is reported once with
the key that holds it and the rule it breaks, instead of surfacing later as a
refused TLS handshake or a message routed nowhere. Relative paths are taken
relative to the config file, never the working directory, so a cell starts
the same way from a shell, from twistd or from a test.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import attrs

from cellsd.errors import ConfigError
from cellsd.scheduler.settings import SchedulerSettings, parse_scheduler

DNS_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
DNS_LABEL_RULE = (
    "must be a DNS label: letters, digits and '-', at most 63 characters,"
    " not starting or ending with '-'"
)
ENDPOINT_TYPES = ("tcp", "tcp6", "unix", "ssl", "tls")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warn", "error")
WEIGHTS = ("weight_offset", "weight_scale")
DEFAULT_CAPS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"hypervisor": ("simulated",), "os": ("linux",)}
)

T = TypeVar("T")


def is_dns_label(name: object) -> bool:
    """Cell and host names become certificate DNS names and path segments."""
    return isinstance(name, str) and DNS_LABEL.match(name) is not None


@attrs.frozen
class CellSettings:
    name: str
    state_dir: Path
    capabilities: Mapping[str, tuple[str, ...]]


@attrs.frozen
class TLSSettings:
    ca: Path
    cert: Path
    key: Path


@attrs.frozen
class CellsSettings:
    listen: str | None = None
    max_hop_count: int = 10
    call_timeout: float = 60.0
    max_message_bytes: int = 16 * 1024 * 1024
    dedupe_window: float = 300.0
    reconnect_max_delay: float = 30.0
    #: Connections on ``listen`` not yet authenticated as a child
    #: (cellsd.links.guard): closed after this many seconds; at most this
    #: many at once (a new one closes the oldest).
    handshake_timeout: float = 10.0
    max_pending_handshakes: int = 64
    update_interval: float = 60.0
    mute_child_interval: float = 300.0
    reserve_percent: float = 10.0
    #: Child reports arriving within this many seconds cause one push of
    #: our own aggregate to our parents (cellsd.scheduler.propagation).
    coalesce_window: float = 0.5
    #: Neighbour health (cellsd.links.health): seconds without a live link,
    #: or consecutive failed attempts, before a neighbour is down; seconds a
    #: link must stay up before a neighbour that was down is up again.
    health_down_after: float = 30.0
    health_down_failures: int = 3
    health_up_after: float = 10.0
    #: Must-deliver messages (``*_at_top``) waiting in the store for a
    #: parent's confirmation (cellsd.messaging.outbox): at most this many,
    #: sent at most ``outbox_window`` at a time; received uuids are kept
    #: ``received_retention`` seconds to drop resends. The builds a cell
    #: accepted and has not placed yet (cellsd.scheduler.journal) are
    #: bounded by ``outbox_limit`` too.
    outbox_limit: int = 100_000
    outbox_window: int = 32
    received_retention: float = 7 * 24 * 3600.0


@attrs.frozen
class Neighbour:
    """A parent (we dial its endpoint) or a child (it dials us; no endpoint)."""

    name: str
    endpoint: str | None
    is_parent: bool
    weight_offset: float = 0.0
    weight_scale: float = 1.0
    #: False: configured but not used (no calls, not scheduled); a reload
    #: toggles it without touching the link (cellsd.ops.reload).
    enabled: bool = True


@attrs.frozen
class APISettings:
    listen: str
    amqp: str | None = None
    call_timeout: float = 60.0
    #: The AMQP 0-9-1 spec XML for txamqp; None: Debian's amqp-specs location.
    amqp_spec: Path | None = None


@attrs.frozen
class StoreSettings:
    """``url`` is always complete, so the store never guesses a default."""

    url: str


@attrs.frozen
class HostSettings:
    name: str
    vcpus: int
    memory_mb: int
    disk_gb: int


@attrs.frozen
class ComputeSettings:
    hosts: tuple[HostSettings, ...] = ()


@attrs.frozen
class LogSettings:
    format: str = "text"
    file: Path | None = None
    level: str = "info"
    #: Log each message's arrival, forwarding and execution (with uuid=) at
    #: info level, so one grep follows a message; false: at debug level.
    trace_messages: bool = False


#: Where the metrics and status page listen when enabled without a listen.
DEFAULT_METRICS_LISTEN = "tcp:9188:interface=127.0.0.1"


@attrs.frozen
class ManholeSettings:
    """The SSH debugging console (cellsd.ops.manhole); off unless enabled."""

    enabled: bool = False
    #: Default: ``unix:STATE_DIR/manhole.sock:mode=600``.
    listen: str | None = None
    authorized_keys: Path | None = None


@attrs.frozen
class MetricsSettings:
    """Prometheus metrics and the status page (cellsd.ops.web)."""

    enabled: bool = False
    listen: str = DEFAULT_METRICS_LISTEN
    #: How many failed messages the status page keeps.
    failures_kept: int = 50


@attrs.frozen
class Settings:
    """Everything a cell needs to start, already checked."""

    cell: CellSettings
    tls: TLSSettings
    cells: CellsSettings
    parents: tuple[Neighbour, ...]
    children: tuple[Neighbour, ...]
    api: APISettings
    store: StoreSettings
    compute: ComputeSettings
    log: LogSettings
    config_path: Path | None = None
    manhole: ManholeSettings = ManholeSettings()
    metrics: MetricsSettings = MetricsSettings()
    scheduler: SchedulerSettings = attrs.field(factory=SchedulerSettings)

    @property
    def neighbours(self) -> tuple[Neighbour, ...]:
        return self.parents + self.children


SECTIONS = tuple(f.name for f in attrs.fields(Settings) if f.name != "config_path")


# -- reading -----------------------------------------------------------------

_REQUIRED: Any = object()


class _Table:
    """One TOML table, read key by key so each error carries its dotted key."""

    def __init__(self, data: object, key: str, allowed: Sequence[str]) -> None:
        self.key = key
        if not isinstance(data, dict):
            raise ConfigError(key, "must be a table")
        self.data: dict[str, Any] = data
        for name in data:
            if name not in allowed:
                raise ConfigError(self.sub(name), f"unknown key; allowed: {', '.join(allowed)}")

    def sub(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def get(
        self,
        name: str,
        check: Callable[[str, Any], T],
        default: T = _REQUIRED,
    ) -> T:
        if name not in self.data:
            if default is _REQUIRED:
                raise ConfigError(self.sub(name), "is required")
            return default
        return check(self.sub(name), self.data[name])


Check = Callable[[str, Any], Any]


def _str(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, "must be a non-empty string")
    return value


def _label(key: str, value: Any) -> str:
    if not is_dns_label(_str(key, value)):
        raise ConfigError(key, DNS_LABEL_RULE)
    return str(value)


def _num(integer: bool, ok: Callable[[float], bool] | None = None, rule: str = "") -> Check:
    """TOML has no unsigned or positive types; we check ranges here."""
    kind = "an integer" if integer else "a number"

    def check(key: str, value: Any) -> int | float:
        types = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, types):
            raise ConfigError(key, f"must be {kind}")
        if not math.isfinite(value) or (ok is not None and not ok(value)):
            raise ConfigError(key, f"must be {kind} {rule}".strip())
        return value if integer else float(value)

    return check


_number = _num(False, None, "(finite)")
_count = _num(True, lambda v: v >= 1, "of at least 1")
_positive = _num(False, lambda v: v > 0, "greater than 0 (seconds)")
_percent = _num(False, lambda v: 0 <= v <= 100, "between 0 and 100")


def _one_of(choices: Sequence[str]) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if value not in choices:
            raise ConfigError(key, f"must be one of: {', '.join(choices)}")
        return str(value)

    return check


def _tables(key: str, value: Any) -> list[Any]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(key, f"must be an array of tables ([[{key}]])")
    return value


def _any(key: str, value: Any) -> Any:
    return value


def _resolve(base_dir: Path, value: str | os.PathLike[str]) -> Path:
    return Path(os.path.normpath(base_dir / Path(value).expanduser()))


def _path(base_dir: Path) -> Callable[[str, Any], Path]:
    return lambda key, value: _resolve(base_dir, _str(key, value))


def _existing_file(base_dir: Path) -> Callable[[str, Any], Path]:
    def check(key: str, value: Any) -> Path:
        path = _resolve(base_dir, _str(key, value))
        if not path.is_file():
            raise ConfigError(key, f"file not found: {path}")
        return path

    return check


# -- endpoints and URLs -------------------------------------------------------


def escape_endpoint(text: str) -> str:
    """Quote a value for a Twisted endpoint string, where ':' and '=' split."""
    return re.sub(r"([\\:=])", r"\\\1", text)


def _split_endpoint(text: str) -> list[str]:
    """Split on unescaped colons, keeping the escapes in each part."""
    parts, current, chars = [], [], iter(text)
    for char in chars:
        if char == "\\":
            current += [char, next(chars, "")]
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _endpoint(base_dir: Path) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        parts = _split_endpoint(_str(key, value))
        if len(parts) < 2 or parts[0] not in ENDPOINT_TYPES or not parts[1]:
            raise ConfigError(
                key,
                "must be a Twisted endpoint string starting with one of: "
                + ", ".join(f"{kind}:" for kind in ENDPOINT_TYPES),
            )
        if parts[0] != "unix":
            return str(value)
        # The socket path is the first positional argument, or path=/address=.
        for index, part in enumerate(parts[1:], 1):
            name, sep, rest = part.partition("=")
            if sep and name not in ("path", "address"):
                continue
            path = _unescape(rest if sep else part)
            if not os.path.isabs(path):
                resolved = escape_endpoint(str(_resolve(base_dir, path)))
                parts[index] = f"{name}={resolved}" if sep else resolved
            return ":".join(parts)
        raise ConfigError(key, "a unix: endpoint needs a socket path")

    return check


def _amqp_url(key: str, value: Any) -> str:
    if not re.match(r"^amqps?://", _str(key, value)):
        raise ConfigError(key, "must be an amqp:// or amqps:// URL")
    return str(value)


def _store_url(base_dir: Path) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        url = _str(key, value)
        if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url):
            raise ConfigError(key, "must be a URL such as sqlite:///path or postgresql://…")
        scheme, _, rest = url.partition("://")
        if scheme.split("+")[0] == "sqlite" and rest.startswith("/"):
            path, sep, query = rest[1:].partition("?")
            if path and path != ":memory:":
                return f"{scheme}:///{_resolve(base_dir, path)}{sep}{query}"
        return url

    return check


# -- the sections -------------------------------------------------------------


def _capabilities(key: str, value: Any) -> Mapping[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a table of name = [strings]")
    for name, items in value.items():
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{key}.{name}", "must be a list of strings")
    return MappingProxyType({k: tuple(v) for k, v in value.items()})


def _neighbours(root: _Table, base: Path, is_parent: bool) -> tuple[Neighbour, ...]:
    section = "parents" if is_parent else "children"
    allowed = ("name", "endpoint")[: 2 if is_parent else 1]
    found = []
    items: list[Any] = root.get(section, _tables, [])
    for index, item in enumerate(items):
        table = _Table(item, f"{section}[{index}]", (*allowed, *WEIGHTS, "enabled"))
        found.append(
            Neighbour(
                name=table.get("name", _label),
                endpoint=table.get("endpoint", _endpoint(base)) if is_parent else None,
                is_parent=is_parent,
                weight_offset=table.get("weight_offset", _number, 0.0),
                weight_scale=table.get("weight_scale", _number, 1.0),
                enabled=table.get("enabled", _bool, True),
            )
        )
    return tuple(found)


def _check_names(name: str, parents: Sequence[Neighbour], children: Sequence[Neighbour]) -> None:
    """Routing is by name: a name listed twice would make next hops ambiguous."""
    seen: dict[str, str] = {}
    for section, group in (("parents", parents), ("children", children)):
        for index, n in enumerate(group):
            key = f"{section}[{index}].name"
            if n.name == name:
                raise ConfigError(key, f"{n.name!r} is this cell's own name")
            if n.name in seen:
                raise ConfigError(key, f"{n.name!r} is already listed as {seen[n.name]}")
            seen[n.name] = key


def _hosts(compute: _Table) -> tuple[HostSettings, ...]:
    hosts: list[HostSettings] = []
    keys = ("name", "vcpus", "memory_mb", "disk_gb")
    items: list[Any] = compute.get("hosts", _tables, [])
    for index, item in enumerate(items):
        table = _Table(item, f"compute.hosts[{index}]", keys)
        values = [table.get(k, _label if k == "name" else _count) for k in keys]
        host = HostSettings(*values)
        if any(h.name == host.name for h in hosts):
            raise ConfigError(table.sub("name"), f"host {host.name!r} is listed twice")
        hosts.append(host)
    return tuple(hosts)


# -- operating: manhole and metrics (cellsd.ops) ------------------------------

LOOPBACK_HOSTS = ("localhost", "::1")


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, "must be true or false")
    return value


def _is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or re.fullmatch(r"127(\.\d{1,3}){3}", host) is not None


def _loopback_endpoint(base_dir: Path) -> Callable[[str, Any], str]:
    """A ``unix:`` socket only its owner can use (``mode=600`` is added when
    no mode is given) or a ``tcp:``/``tcp6:`` port bound to loopback."""
    check_endpoint = _endpoint(base_dir)

    def check(key: str, value: Any) -> str:
        text = check_endpoint(key, value)
        kind, *parts = _split_endpoint(text)
        named = dict(p.split("=", 1) for p in parts if "=" in p)
        if kind == "unix":
            mode = named.get("mode")
            if mode is None:
                return f"{text}:mode=600"
            if not re.fullmatch(r"0?[0-7]00", mode):
                raise ConfigError(key, f"mode={mode} lets others in; use mode=600")
            return text
        if kind in ("tcp", "tcp6"):
            host = _unescape(named.get("interface", ""))
            if not _is_loopback(host):
                raise ConfigError(
                    key,
                    f"must listen on loopback only (interface=127.0.0.1 or ::1), not "
                    f"{host or 'every interface'}; reach it from elsewhere through SSH",
                )
            return text
        raise ConfigError(key, "must be a unix: socket or a tcp: port on loopback")

    return check


def _manhole(table: _Table, base: Path, state_dir: Path) -> ManholeSettings:
    enabled = table.get("enabled", _bool, "listen" in table.data)
    sock = escape_endpoint(str(state_dir / "manhole.sock"))
    listen = table.get("listen", _loopback_endpoint(base), f"unix:{sock}:mode=600")
    keys = table.get("authorized_keys", _existing_file(base), None)
    if enabled and keys is None:
        raise ConfigError(table.sub("authorized_keys"), "is required when the manhole is enabled")
    return ManholeSettings(enabled, listen, keys)


def _metrics(table: _Table, base: Path) -> MetricsSettings:
    return MetricsSettings(
        enabled=table.get("enabled", _bool, "listen" in table.data),
        listen=table.get("listen", _endpoint(base), DEFAULT_METRICS_LISTEN),
        failures_kept=table.get("failures_kept", _count, 50),
    )


def parse_settings(
    data: Mapping[str, Any], base_dir: Path, *, config_path: Path | None = None
) -> Settings:
    """Check an already-parsed TOML document; tests use it without files."""
    base = Path(os.path.abspath(base_dir))
    root = _Table(dict(data), "", SECTIONS)

    def section(name: str, keys: Sequence[str], default: Any = _REQUIRED) -> _Table:
        return _Table(root.get(name, _any, default), name, keys)

    cell = section("cell", ("name", "state_dir", "capabilities"))
    name = cell.get("name", _label)
    state_dir = cell.get("state_dir", _path(base), _resolve(base, f"var/{name}"))
    caps = cell.get("capabilities", _capabilities, DEFAULT_CAPS)

    tls = section("tls", ("ca", "cert", "key"))
    tls_files = [tls.get(k, _existing_file(base)) for k in ("ca", "cert", "key")]

    fields = attrs.fields(CellsSettings)
    cells = section("cells", [f.name for f in fields], {})
    checks = {"listen": _endpoint(base), "max_hop_count": _count}
    checks |= {"max_message_bytes": _count, "reserve_percent": _percent}
    checks |= {"max_pending_handshakes": _count}
    checks |= {"health_down_failures": _count, "outbox_limit": _count, "outbox_window": _count}
    cells_values: dict[str, Any] = {
        f.name: cells.get(f.name, checks.get(f.name, _positive), f.default) for f in fields
    }

    parents = _neighbours(root, base, is_parent=True)
    children = _neighbours(root, base, is_parent=False)
    _check_names(name, parents, children)

    api = section("api", ("listen", "amqp", "call_timeout", "amqp_spec"), {})
    sock = escape_endpoint(str(state_dir / "cellsd.sock"))
    store = section("store", ("url",), {})
    sqlite = f"sqlite:///{state_dir / 'cell.sqlite'}"
    log = section("log", ("format", "file", "level", "trace_messages"), {})
    return Settings(
        cell=CellSettings(name, state_dir, caps),
        tls=TLSSettings(*tls_files),
        cells=CellsSettings(**cells_values),
        parents=parents,
        children=children,
        api=APISettings(
            listen=api.get("listen", _endpoint(base), f"unix:{sock}:mode=600"),
            amqp=api.get("amqp", _amqp_url, None),
            call_timeout=api.get("call_timeout", _positive, 60.0),
            amqp_spec=api.get("amqp_spec", _existing_file(base), None),
        ),
        store=StoreSettings(store.get("url", _store_url(base), sqlite)),
        compute=ComputeSettings(_hosts(section("compute", ("hosts",), {}))),
        log=LogSettings(
            format=log.get("format", _one_of(LOG_FORMATS), "text"),
            file=log.get("file", _path(base), None),
            level=log.get("level", _one_of(LOG_LEVELS), "info"),
            trace_messages=log.get("trace_messages", _bool, False),
        ),
        config_path=config_path,
        manhole=_manhole(
            section("manhole", ("enabled", "listen", "authorized_keys"), {}), base, state_dir
        ),
        metrics=_metrics(section("metrics", ("enabled", "listen", "failures_kept"), {}), base),
        scheduler=parse_scheduler(root.get("scheduler", _any, {})),
    )


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Read and check the file; a cell refuses to start on any ConfigError."""
    config_path = Path(os.path.abspath(path))
    try:
        data = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(config_path), "config file not found") from None
    except OSError as e:
        raise ConfigError(str(config_path), f"cannot be read: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(str(config_path), f"not valid TOML: {e}") from None
    return parse_settings(data, config_path.parent, config_path=config_path)
