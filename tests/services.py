"""Guards for tests that need a real external service.

Each ``require_*`` function returns how to reach the service, or stops the
test: in CI (``CI=true``) a missing service is a failure, since CI promises
to provide it; elsewhere the test is skipped with a message that says what to
start. Add a new service as a ``require_x()`` built on :func:`_require`.
"""

from __future__ import annotations

import os
import secrets
import socket
import unittest
from collections.abc import Callable

POSTGRES_HOST = os.environ.get("CELLSD_TEST_PG_HOST", "127.0.0.1")
POSTGRES_PORT = int(os.environ.get("CELLSD_TEST_PG_PORT", "5432"))
POSTGRES_USER = os.environ.get("CELLSD_TEST_PG_USER", "postgres")
POSTGRES_START = (
    "start PostgreSQL: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
)


class ServiceMissing(AssertionError):
    """A service CI must provide is not there: the test fails."""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _require(name: str, probe: Callable[[], str | None], how_to_start: str) -> None:
    """Fail (in CI) or skip unless ``probe()`` returns None (else a reason)."""
    problem = probe()
    if problem is None:
        return
    if in_ci():
        raise ServiceMissing(f"{name} is required in CI but unreachable ({problem})")
    raise unittest.SkipTest(how_to_start)


def _tcp_probe(host: str, port: int) -> Callable[[], str | None]:
    def probe() -> str | None:
        try:
            with socket.create_connection((host, port), timeout=2):
                return None
        except OSError as err:
            return f"{host}:{port}: {err}"

    return probe


def postgres_url(database: str = "postgres") -> str:
    return f"postgresql://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/{database}"


def require_postgres() -> str:
    """The URL of the PostgreSQL server's maintenance database (trust auth).

    Use :func:`create_postgres_database` for a database of your own.
    """

    def probe() -> str | None:
        problem = _tcp_probe(POSTGRES_HOST, POSTGRES_PORT)()
        if problem is not None:
            return problem
        import psycopg

        try:
            psycopg.connect(postgres_url(), connect_timeout=3).close()
        except psycopg.Error as err:
            return str(err).strip()
        return None

    _require("PostgreSQL", probe, POSTGRES_START)
    return postgres_url()


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(require_postgres(), autocommit=True) as conn:
        conn.execute(sql)


def create_postgres_database(prefix: str = "cellsd_test") -> tuple[str, Callable[[], None]]:
    """A fresh, empty database ``<prefix>_<random>``: its URL, and a function
    that drops it (closing any connection left to it)."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    _admin(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return postgres_url(name), drop


RABBITMQ_HOST = os.environ.get("CELLSD_TEST_RABBITMQ_HOST", "127.0.0.1")
RABBITMQ_PORT = int(os.environ.get("CELLSD_TEST_RABBITMQ_PORT", "5672"))
RABBITMQ_START = "start RabbitMQ: rabbitmq-server -detached"


def rabbitmq_url() -> str:
    return f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/"


def require_rabbitmq() -> str:
    """The URL of the RabbitMQ broker (guest/guest, vhost ``/``)."""
    _require("RabbitMQ", _tcp_probe(RABBITMQ_HOST, RABBITMQ_PORT), RABBITMQ_START)
    return rabbitmq_url()
