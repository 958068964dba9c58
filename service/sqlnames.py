"""SQL identifiers spliced into statement text, quoted: shared by the sources and init-db."""

from __future__ import annotations


def quote_identifier(name: str) -> str:
    """Quote an SQL identifier (names are validated by the config as well)."""
    return '"' + name.replace('"', '""') + '"'
