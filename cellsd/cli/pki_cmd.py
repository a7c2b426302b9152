"""``cellsd pki``: make the CA and the cell certificates from the shell.

Kept apart from the daemon's own command so that the argparse wiring can be
tested without starting anything.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cellsd import pki

_INIT_EPILOG = """\
example:
  cellsd pki init --dir pki
writes pki/ca.pem and pki/ca.key (0600). Every cell's [tls] ca points at
ca.pem; keep ca.key away from the cells.
"""

_ISSUE_EPILOG = """\
example:
  cellsd pki issue --dir pki child-cell1
writes pki/child-cell1.pem and pki/child-cell1.key (0600), signed by the CA
in pki/. The certificate's DNS name is the cell name, which is how the
cell's neighbours recognise it.
"""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``pki init`` and ``pki issue`` to the ``cellsd`` command."""
    formatter = argparse.RawDescriptionHelpFormatter
    pki_parser = subparsers.add_parser(
        "pki",
        help="make the CA and the certificates of cells",
        description="Make the certificate authority and the cells' certificates"
        " for mutual TLS between neighbouring cells.",
        epilog="example:\n  cellsd pki init --dir pki\n  cellsd pki issue --dir pki api",
        formatter_class=formatter,
    )
    commands = pki_parser.add_subparsers(dest="pki_command", metavar="COMMAND")
    commands.required = True

    init = commands.add_parser(
        "init",
        help="make a new CA (ca.pem, ca.key)",
        description="Make a new certificate authority in DIR.",
        epilog=_INIT_EPILOG,
        formatter_class=formatter,
    )
    init.add_argument("--dir", required=True, type=Path, help="where to write")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")
    init.set_defaults(func=run_init)

    issue = commands.add_parser(
        "issue",
        help="make the certificate and key of cell NAME",
        description="Make the certificate and key of cell NAME, signed by the CA in DIR.",
        epilog=_ISSUE_EPILOG,
        formatter_class=formatter,
    )
    issue.add_argument("--dir", required=True, type=Path, help="the CA's directory")
    issue.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    issue.add_argument("name", metavar="NAME", help="the cell name (a DNS label)")
    issue.set_defaults(func=run_issue)


def run_init(args: argparse.Namespace) -> int:
    """``cellsd pki init``: 0 on success, 2 when the CA cannot be made."""
    try:
        cert = pki.init_ca(args.dir, days=args.days, force=args.force)
    except pki.PKIError as e:
        return _fail(e)
    print(f"wrote {cert}")
    print(f"wrote {cert.parent / pki.CA_KEY} (private, mode 0600)")
    return 0


def run_issue(args: argparse.Namespace) -> int:
    """``cellsd pki issue``: 0 on success, 2 when the cert cannot be made."""
    try:
        cert, key = pki.issue(args.dir, args.name, days=args.days)
    except pki.PKIError as e:
        return _fail(e)
    print(f"wrote {cert}")
    print(f"wrote {key} (private, mode 0600)")
    return 0


def _fail(error: pki.PKIError) -> int:
    print(f"cellsd pki: {error}", file=sys.stderr)
    return 2
