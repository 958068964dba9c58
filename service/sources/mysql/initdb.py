"""``collector init-db`` on a MariaDB/MySQL source: database, table, reference rows, reader.

The same ``schema.sql`` and ``seed.sql`` as PostgreSQL's (they are written in SQL the
engines share), then ``roles_mysql.sql``; the session runs with ``ANSI_QUOTES`` so the
files' double-quoted identifiers mean what they mean in PostgreSQL. Idempotent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

import asyncmy
from asyncmy.errors import MySQLError

from service.config import SourceConfig
from service.sources.mysql.dsn import connect_kwargs
from service.sources.mysql.raw import quote_identifier

#: Server errors that mean "this account may not" (database, table, command, privilege).
_DENIED = frozenset({1044, 1142, 1227, 1410})
_STATEMENT_END = re.compile(r";\s*$", re.MULTILINE)
_COMMENT = re.compile(r"^\s*--.*$", re.MULTILINE)


class DeniedError(Exception):
    """The account may not create what init-db must (the caller asks for an admin DSN)."""


def statements(sql: str) -> list[str]:
    """The statements of a rendered SQL file (each ends with ``;`` at the end of a line)."""
    pieces = (_COMMENT.sub("", piece).strip() for piece in _STATEMENT_END.split(sql))
    return [piece for piece in pieces if piece]


async def init_mysql(
    source: SourceConfig, files: list[str], connect_timeout: float
) -> tuple[bool, int]:
    """Create the database if missing, then run ``files`` in it (schema, seed, roles).

    Returns whether the database was created and how many rows the seed inserted
    (the second file). Raises DeniedError for a missing privilege, MySQLError or
    OSError for anything else.
    """
    kwargs = connect_kwargs(source.dsn)
    database = kwargs.pop("database")
    connection = await asyncmy.connect(**kwargs, connect_timeout=connect_timeout, autocommit=True)
    try:
        with _quiet_driver():
            return await _run(connection, database, files)
    except MySQLError as exc:
        if exc.args and exc.args[0] in _DENIED:
            raise DeniedError(str(exc.args[-1])) from None
        raise
    finally:
        connection.close()


@contextmanager
def _quiet_driver() -> Iterator[None]:
    """Hush asyncmy's log of server warnings: "already exists" is the idempotent case here."""
    driver = logging.getLogger("asyncmy")
    level = driver.level
    driver.setLevel(logging.ERROR)
    try:
        yield
    finally:
        driver.setLevel(level)


async def _run(connection: asyncmy.Connection, database: str, files: list[str]) -> tuple[bool, int]:
    """The statements, in order, in ``database`` (created first if missing)."""
    async with connection.cursor() as cursor:
        await cursor.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')")
        created = await cursor.execute(
            f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}"
        )
        await connection.select_db(database)
        inserted = 0
        for index, sql in enumerate(files):
            for statement in statements(sql):
                affected = await cursor.execute(statement)
                if index == 1:
                    inserted += affected
    return bool(created), inserted
