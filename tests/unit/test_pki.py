"""The deployment's CA and the cells' certificates, and `cellsd pki`."""

from __future__ import annotations

import argparse
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet import ssl

from cellsd import pki
from cellsd.cli import pki_cmd


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    """A directory holding a fresh CA."""
    pki.init_ca(tmp_path)
    return tmp_path


def test_init_ca_writes_a_ca(tmp_path: Path) -> None:
    """init_ca writes ca.pem and a private ca.key; the cert is a signing CA."""
    path = pki.init_ca(tmp_path / "new", common_name="test CA", days=10)
    assert path == tmp_path / "new" / "ca.pem"
    assert (tmp_path / "new" / "ca.key").is_file()
    assert mode(tmp_path / "new" / "ca.key") == 0o600
    cert = load(path)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == ("test CA")
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    cert.verify_directly_issued_by(cert)  # self-signed
    assert cert.not_valid_after_utc - datetime.now(UTC) < timedelta(days=10)
    assert cert.not_valid_after_utc - datetime.now(UTC) > timedelta(days=9)


def test_init_ca_refuses_to_overwrite(ca_dir: Path) -> None:
    """A second init would orphan every cert issued; it needs force=True."""
    before = (ca_dir / "ca.pem").read_bytes()
    with pytest.raises(pki.PKIError, match=r"already exists.*--force"):
        pki.init_ca(ca_dir)
    assert (ca_dir / "ca.pem").read_bytes() == before
    pki.init_ca(ca_dir, force=True)
    assert (ca_dir / "ca.pem").read_bytes() != before


def test_init_ca_refuses_when_only_the_key_is_left(tmp_path: Path) -> None:
    """A lone ca.key is still a CA's secret; it is not silently replaced."""
    (tmp_path / "ca.key").write_text("secret")
    with pytest.raises(pki.PKIError, match=r"ca\.key"):
        pki.init_ca(tmp_path)
    assert (tmp_path / "ca.key").read_text() == "secret"


def test_pki_error_is_a_cells_error() -> None:
    """PKI failures are CellsErrors, so callers can catch the whole family."""
    from cellsd.errors import CellsError

    assert issubclass(pki.PKIError, CellsError)
    assert str(pki.PKIError("plain words")) == "plain words"


def test_issue_writes_a_cell_certificate(ca_dir: Path) -> None:
    """issue writes NAME.pem and a private NAME.key naming the cell."""
    cert_path, key_path = pki.issue(ca_dir, "child-cell1")
    assert cert_path == ca_dir / "child-cell1.pem"
    assert key_path == ca_dir / "child-cell1.key"
    assert mode(key_path) == 0o600
    cert = load(cert_path)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["child-cell1"]
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "child-cell1"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    cert.verify_directly_issued_by(load(ca_dir / "ca.pem"))
    now = datetime.now(UTC)
    assert cert.not_valid_before_utc <= now
    assert cert.not_valid_after_utc - now > timedelta(days=824)


def test_certificate_names_the_cell_for_service_identity(ca_dir: Path) -> None:
    """Peers check the cell name with service_identity; it must match exactly."""
    cert = load(pki.issue(ca_dir, "api")[0])
    verify_certificate_hostname(cert, "api")
    with pytest.raises(VerificationError):
        verify_certificate_hostname(cert, "child-cell1")


def test_files_load_in_twisted(ca_dir: Path) -> None:
    """The files load as Twisted TLS material, cert and key together."""
    cert_path, key_path = pki.issue(ca_dir, "child-cell1")
    ca = ssl.Certificate.loadPEM((ca_dir / "ca.pem").read_bytes())
    own = ssl.PrivateCertificate.loadPEM(cert_path.read_bytes() + key_path.read_bytes())
    assert own.original.to_cryptography() == load(cert_path)
    assert ca.original.to_cryptography() == load(ca_dir / "ca.pem")
    own.options(ca)  # a usable client/server context factory


def test_issue_elsewhere(tmp_path: Path, ca_dir: Path) -> None:
    """ca_dir and out_dir let the CA key stay apart from the cells' files."""
    out = tmp_path / "cells"
    cert_path, key_path = pki.issue(tmp_path / "unused", "c2", ca_dir=ca_dir, out_dir=out)
    assert (cert_path.parent, key_path.parent) == (out, out)
    load(cert_path).verify_directly_issued_by(load(ca_dir / "ca.pem"))
    assert not (tmp_path / "unused").exists()


def test_reissue_replaces(ca_dir: Path) -> None:
    """Issuing again renews the cell's certificate and key."""
    first = pki.issue(ca_dir, "c1")[0].read_bytes()
    cert_path, key_path = pki.issue(ca_dir, "c1")
    assert cert_path.read_bytes() != first
    assert mode(key_path) == 0o600


def test_extra_dns_names(ca_dir: Path) -> None:
    """Extra DNS names (e.g. wildcards for tests) follow the cell name."""
    cert = load(pki.issue(ca_dir, "c1", extra_dns=["*.cells.test", "alias"])[0])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == [
        "c1",
        "*.cells.test",
        "alias",
    ]


def test_expired_certificate(ca_dir: Path) -> None:
    """Tests can make a certificate that has already expired."""
    now = datetime.now(UTC)
    cert_path, _ = pki.issue(
        ca_dir, "old", not_before=now - timedelta(days=10), not_after=now - timedelta(days=1)
    )
    cert = load(cert_path)
    assert cert.not_valid_after_utc < now
    cert.verify_directly_issued_by(load(ca_dir / "ca.pem"))


def test_not_yet_valid_certificate(ca_dir: Path) -> None:
    """Tests can make a certificate that is valid only from tomorrow."""
    now = datetime.now(UTC)
    cert = load(pki.issue(ca_dir, "early", not_before=now + timedelta(days=1))[0])
    assert cert.not_valid_before_utc > now
    assert cert.not_valid_after_utc > cert.not_valid_before_utc


def test_naive_datetimes_are_utc(ca_dir: Path) -> None:
    """A naive datetime is taken as UTC, as X.509 validity is."""
    start = datetime(2020, 1, 1, 12, 0, 0)
    cert = load(pki.issue(ca_dir, "c1", not_before=start, not_after=start.replace(year=2021))[0])
    assert cert.not_valid_before_utc == start.replace(tzinfo=UTC)


def test_validity_must_be_positive(ca_dir: Path) -> None:
    """A certificate that would end before it starts is refused."""
    now = datetime.now(UTC)
    with pytest.raises(pki.PKIError, match="expire"):
        pki.issue(ca_dir, "c1", not_before=now, not_after=now - timedelta(seconds=1))
    with pytest.raises(pki.PKIError, match="days"):
        pki.issue(ca_dir, "c1", days=0)
    assert not (ca_dir / "c1.pem").exists()


@pytest.mark.parametrize("name", ["bad_name", "-x", "x-", "a" * 64, "api!c1", ""])
def test_bad_cell_name_refused(ca_dir: Path, name: str) -> None:
    """A certificate is only made for a valid cell name (a DNS label)."""
    with pytest.raises(pki.PKIError, match="must be a DNS label"):
        pki.issue(ca_dir, name)
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca.key", "ca.pem"]


def test_bad_extra_dns_refused(ca_dir: Path) -> None:
    """A non-ASCII extra name is refused as a PKIError, not a crash."""
    with pytest.raises(pki.PKIError, match="bad DNS name"):
        pki.issue(ca_dir, "c1", extra_dns=["café"])


def test_issue_without_ca(tmp_path: Path) -> None:
    """Without a CA, issue says how to make one."""
    with pytest.raises(pki.PKIError, match="cellsd pki init --dir"):
        pki.issue(tmp_path, "c1")


# -- cellsd pki ---------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="cellsd")
    pki_cmd.register(top.add_subparsers(dest="command"))
    return top


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    result: int = args.func(args)
    return result


def test_cli_init_and_issue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`cellsd pki init` then `issue` make a CA and a verifiable cell cert."""
    d = tmp_path / "pki"
    assert run(["pki", "init", "--dir", str(d)]) == 0
    out = capsys.readouterr().out
    assert str(d / "ca.pem") in out and str(d / "ca.key") in out
    assert run(["pki", "issue", "--dir", str(d), "api", "--days", "30"]) == 0
    out = capsys.readouterr().out
    assert str(d / "api.pem") in out and str(d / "api.key") in out
    cert = load(d / "api.pem")
    cert.verify_directly_issued_by(load(d / "ca.pem"))
    assert cert.not_valid_after_utc - datetime.now(UTC) < timedelta(days=30)
    assert mode(d / "api.key") == 0o600


def test_cli_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Refusals print 'cellsd pki: ...' to stderr and exit with status 2."""
    assert run(["pki", "issue", "--dir", str(tmp_path), "api"]) == 2
    assert capsys.readouterr().err.startswith("cellsd pki: no CA in")
    assert run(["pki", "init", "--dir", str(tmp_path)]) == 0
    assert run(["pki", "init", "--dir", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert run(["pki", "init", "--dir", str(tmp_path), "--force"]) == 0
    assert run(["pki", "issue", "--dir", str(tmp_path), "bad_name"]) == 2
    assert capsys.readouterr().err.startswith("cellsd pki: cell name 'bad_name'")


def test_cli_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    """Each pki parser's help shows an example command."""
    for argv in (["pki"], ["pki", "init"], ["pki", "issue"]):
        with pytest.raises(SystemExit):
            parser().parse_args([*argv, "--help"])
        assert "example:\n  cellsd pki" in capsys.readouterr().out


def test_cli_requires_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    """`cellsd pki` alone is a usage error, not a silent no-op."""
    with pytest.raises(SystemExit) as info:
        parser().parse_args(["pki"])
    assert info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err
