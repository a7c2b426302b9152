"""A real parent refuses links it should refuse, and survives bad messages.

One ``cellsd run`` process, api-cell, listens on loopback with one
configured child, child-cell1 (whose process is not started: the tests play
the child). :mod:`tests.integration.link_client` dials it in a subprocess
with a fresh reactor, presenting whatever certificate a test chooses, and
speaks AMP ``Deliver`` (and ``Hello``) directly.

* Certificates: only child-cell1's certificate from this tree's CA gets an
  answer. A sibling's certificate, one from another CA, an expired one, one
  not yet valid, none at all, and plaintext each lose the connection before
  any AMP answer, and the parent's log says why, naming the connection's
  address (the whole matrix, in memory: tests/unit/test_links_certificates.py).
* Messages: over child-cell1's link, a malformed header, an unknown method
  and an oversized message each get a clear error, and a ping over the same
  connection still works afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from cellsd import pki
from tests.integration.cluster import Cluster, run_link_client, short_tempdir

pytestmark = pytest.mark.integration

PARENT, CHILD, SIBLING = "api-cell", "child-cell1", "child-cell2"
MAX_MESSAGE_BYTES = 200_000


@attrs.frozen
class Parent:
    """The running parent and the certificates the tests present to it."""

    cluster: Cluster
    base: Path

    @property
    def pki(self) -> Path:
        return self.base / "pki"

    def cert(self, kind: str) -> tuple[Path | None, Path | None]:
        """(certificate, key) of ``kind``; (None, None) for no certificate."""
        if kind in ("none", "plaintext"):
            return None, None
        directory = self.pki if kind == "child" else self.base / kind
        name = SIBLING if kind == "sibling" else CHILD
        return directory / f"{name}.pem", directory / f"{name}.key"

    def dial(self, kind: str, *steps: str) -> dict[str, Any]:
        """Connect presenting ``kind``'s certificate, do ``steps`` over one
        connection; link_client's report."""
        cert, key = self.cert(kind)
        return run_link_client(
            {
                "host": "127.0.0.1",
                "port": self.cluster.listen_port(PARENT),
                "tls": kind != "plaintext",
                "ca": str(self.pki / "ca.pem"),
                "server_name": PARENT,
                "cert": None if cert is None else str(cert),
                "key": None if key is None else str(key),
                "me": CHILD,
                "parent": PARENT,
                "steps": list(steps),
                "timeout": 5.0,
                "max_message_bytes": MAX_MESSAGE_BYTES,
            }
        )

    def log_mark(self) -> int:
        return len(self.cluster.log_text(PARENT))


@pytest.fixture(scope="module")
def parent() -> Iterator[Parent]:
    extra = {"cells": {"call_timeout": 5, "max_message_bytes": MAX_MESSAGE_BYTES}}
    with short_tempdir() as base, Cluster(base, {PARENT: [CHILD]}, extra) as cluster:
        tls = base / "pki"
        # Same CA, a name the parent does not list as a child.
        pki.issue(tls, SIBLING, out_dir=base / "sibling")
        # The configured child's name, signed by a CA the parent does not trust.
        pki.init_ca(base / "other-ca", common_name="some other CA")
        pki.issue(base / "other-ca", CHILD)
        # The configured child's name and our CA, but no longer valid.
        now = datetime.now(UTC)
        pki.issue(
            tls,
            CHILD,
            not_before=now - timedelta(days=30),
            not_after=now - timedelta(days=1),
            out_dir=base / "expired",
        )
        # ... and valid only from tomorrow (a child whose clock runs ahead).
        pki.issue(
            tls,
            CHILD,
            not_before=now + timedelta(days=1),
            not_after=now + timedelta(days=30),
            out_dir=base / "not-yet-valid",
        )
        cluster.start(PARENT)
        cluster.wait_until_listening(PARENT)
        yield Parent(cluster, base)
        assert cluster.procs[PARENT].poll() is None, "the parent died\n" + cluster.logs()


def _ping_ok(row: dict[str, Any]) -> None:
    """A Deliver ping up to the parent answered with the parent's ping."""
    assert row["outcome"] == "answer", row
    (response,) = row["responses"]
    assert response["failure"] is False, response
    assert response["cell_name"] == f"{CHILD}!{PARENT}"
    assert response["value"]["name"] == PARENT
    assert response["value"]["cell"] == f"{CHILD}!{PARENT}"


def test_the_configured_child_certificate_gets_answers(parent: Parent) -> None:
    """Positive control: child-cell1's own certificate from the tree's CA
    gets Hello answered by api-cell and a Deliver ping answered."""
    report = parent.dial("child", "hello", "ping")
    assert report["lost"] is None, report
    hello, ping = report["steps"]
    assert hello["outcome"] == "answer", hello
    assert hello["answer"]["cell"] == PARENT
    _ping_ok(ping)


#: kind of certificate -> what the parent's log says about the refusal
#: ("{address}" is the client's address as the parent saw it).
REFUSALS = {
    "sibling": f"refused a link from {{address}}: its certificate names ['{SIBLING}']",
    "other-ca": f"child link with {{address}} failed to set up: the certificate of '{CHILD}'"
    " was not issued by our CA (issuer: CN=some other CA)",
    "expired": f"child link with {{address}} failed to set up: the certificate of '{CHILD}'"
    " expired",
    "not-yet-valid": f"child link with {{address}} failed to set up: the certificate of '{CHILD}'"
    " is not yet valid (valid from ",
    "none": "child link with {address} failed to set up: the peer presented no client certificate",
    "plaintext": "child link with {address} failed to set up: TLS failed",
}


@pytest.mark.parametrize("kind", list(REFUSALS))
def test_a_bad_certificate_gets_no_answer_and_is_logged(parent: Parent, kind: str) -> None:
    """Presenting a sibling's certificate, one from another CA, an expired
    one, one not valid until tomorrow, none, or speaking plaintext: a valid
    Deliver ping gets no AMP answer (not even an error box) because the
    parent drops the connection, and the parent's log names the refusal and
    the reason (for the one not yet valid: what the parent's clock says and
    to check the clocks of both cells)."""
    mark = parent.log_mark()
    report = parent.dial(kind, "ping")
    (ping,) = report["steps"]
    assert ping["outcome"] == "lost", ping
    assert report["lost"] is not None, report
    address = f"127.0.0.1:{ping['local_port']}"
    log = parent.cluster.wait_for_log(PARENT, REFUSALS[kind].format(address=address), since=mark)
    if kind == "not-yet-valid":
        assert "this cell's clock says" in log and "check the clocks of both cells" in log, log


def test_a_refused_sibling_never_becomes_a_link(parent: Parent) -> None:
    """After a sibling's attempt the parent's log shows no link to it coming
    up, and the configured child still gets answers."""
    mark = parent.log_mark()
    report = parent.dial("sibling", "hello")
    assert report["steps"][0]["outcome"] == "lost", report
    parent.cluster.wait_for_log(PARENT, "refused a link", since=mark)
    assert f"link to child {SIBLING} is up" not in parent.cluster.log_text(PARENT)
    _ping_ok(parent.dial("child", "ping")["steps"][0])


def _malformed(row: dict[str, Any]) -> None:
    assert row["outcome"] == "error", row
    assert row["type"] == "MalformedMessage"
    assert "the header is not JSON" in row["message"]


def _unknown_method(row: dict[str, Any]) -> None:
    assert row["outcome"] == "answer", row
    (response,) = row["responses"]
    assert response["failure"] is True
    assert response["cell_name"] == f"{CHILD}!{PARENT}"
    assert response["value"]["class"] == "UnknownMethod"
    assert "no_such_method" in response["value"]["message"]


def _too_large(row: dict[str, Any]) -> None:
    assert row["outcome"] == "error", row
    assert row["type"] == "MessageTooLarge"
    assert f"exceeds the limit of {MAX_MESSAGE_BYTES} bytes" in row["message"]


BAD_MESSAGES = {
    "malformed": _malformed,
    "unknown_method": _unknown_method,
    "oversized": _too_large,
    "oversized_huge": _too_large,
}


@pytest.mark.parametrize("step", list(BAD_MESSAGES))
def test_a_bad_message_gets_a_clear_error_and_the_link_stays_up(parent: Parent, step: str) -> None:
    """Over child-cell1's link: a ping works, then a malformed header JSON
    (MalformedMessage), an unknown method with need_response (a failure
    Response carrying UnknownMethod), or a message over max_message_bytes,
    just over or eight times over (MessageTooLarge) gets its clear error,
    and a ping over the SAME connection still works. The parent logs no
    traceback for it."""
    mark = parent.log_mark()
    report = parent.dial("child", "ping", step, "ping")
    assert report["lost"] is None, report
    before, bad, after = report["steps"]
    assert before["local_port"] == bad["local_port"] == after["local_port"]
    _ping_ok(before)
    BAD_MESSAGES[step](bad)
    _ping_ok(after)
    log = parent.cluster.log_text(PARENT)[mark:]
    assert "Traceback" not in log, log


def test_every_bad_message_in_a_row_over_one_connection(parent: Parent) -> None:
    """All the bad messages, one after another on one connection, each get
    their error; the link carries a working ping at the end."""
    steps = list(BAD_MESSAGES)
    report = parent.dial("child", *steps, "ping")
    assert report["lost"] is None, report
    assert len({row["local_port"] for row in report["steps"]}) == 1
    for step, row in zip(steps, report["steps"], strict=False):
        BAD_MESSAGES[step](row)
    _ping_ok(report["steps"][-1])
