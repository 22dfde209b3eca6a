"""Errors the exporter reports to the user as one clear line (and a non-zero exit)."""


class ExportError(Exception):
    """A problem the user can act on: bad flag, unknown model, failed verification, no memory or disk."""
