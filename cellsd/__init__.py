"""cellsd: Nova cells v1 re-created as a Twisted daemon."""

__version__ = "0.1.0"
