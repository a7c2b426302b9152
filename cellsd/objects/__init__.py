"""Versioned objects and their primitive (wire) form."""
