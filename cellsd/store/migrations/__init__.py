"""Alembic migrations of the cell store; applied by cellsd.store.engine."""
