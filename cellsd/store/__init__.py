"""The cell store: SQLAlchemy Core in Twisted's thread pool, Alembic
migrations applied at start."""

from cellsd.store.engine import migrate, normalize_url
from cellsd.store.store import CellStore

__all__ = ["CellStore", "migrate", "normalize_url"]
