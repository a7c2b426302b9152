"""Packaging for cellsd.

The package and the Twisted plugin folder sit at the top level.
``twisted/plugins`` has no ``__init__.py`` on purpose: it is a namespace that
Twisted's plugin loader scans, and it carries only ``cellsd_plugin.py``.
"""

from setuptools import find_packages, setup

setup(
    name="cellsd",
    version="0.1.0",
    description="Nova cells v1 re-created as a Twisted daemon",
    python_requires=">=3.11",
    packages=[*find_packages(include=["cellsd", "cellsd.*"]), "twisted.plugins"],
    package_data={"cellsd": ["py.typed"]},
    install_requires=[
        # 26.4: wrapServerTLS and honoured TLS version bounds
        "twisted[tls,conch]>=26.4",
        # 6.0: the @implementer/verifyObject API we use
        "zope.interface>=6.0",
        # 0.20: CollectorRegistry per cell, custom collectors, generate_latest
        "prometheus_client>=0.20",
        # 24.1: verify_certificate_hostname on cryptography certs
        "service-identity>=24.1",
        # 24.0: to_cryptography() on peer certificates
        "pyopenssl>=24.0",
        # 42: the x509 builder API with timezone-aware validity
        "cryptography>=42",
        # 23.1: attrs.define/frozen with field validators
        "attrs>=23.1",
        # 3.9: OPT_SORT_KEYS and bytes output; JSON on the hot path
        "orjson>=3.9",
        # 0.8: the release the AMQP transport is written and tested against (Python 3)
        "txamqp>=0.8",
        # 2.0: the unified Core API (Connection.execute with select(),
        # insert().returning on SQLite, typed Row) the cell store is written in
        "sqlalchemy>=2.0",
        # 1.13: programmatic Config without an ini file and SQLAlchemy 2 typing
        "alembic>=1.13",
        # 3.1: the psycopg 3 driver behind SQLAlchemy's postgresql+psycopg://
        "psycopg[binary]>=3.1",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "mypy>=1.10",
            "mypy-zope>=1.0.5",
            "ruff>=0.5",
        ],
    },
    entry_points={
        "console_scripts": [
            "cellsd = cellsd.cli.cellsd:main",
            "cellsctl = cellsd.cli.cellsctl:main",
        ],
    },
)
