"""Create each configured source's database, table, reference rows and reader role.

``schema.sql``, ``seed.sql`` and ``roles.sql`` (the read-only role the service
uses) at the top of the repository are the single source of truth. They are
written for psql (``psql -v table=data_1 -f schema.sql``) and this module applies
them the same way, substituting psql's ``:"var"`` (identifier) and ``:'var'``
(literal) references. Everything here is idempotent.

The functions are asyncio-flavoured: ``collector init-db`` runs them with
``asyncio.run``, the server through its trio-asyncio bridge.
"""

from __future__ import annotations

import dataclasses
import functools
import getpass
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import asyncpg

from service.config import ConfigError, SourceConfig
from service.config.secrets import MYSQL_SCHEMES, SCHEMES, is_mysql, redact_dsn
from service.core import describe_error
from service.sqlnames import quote_identifier

#: Seconds to wait for each connection made while initialising.
CONNECT_TIMEOUT = 10.0
#: The read-only role roles.sql creates; the embedded default serves through it.
READER_ROLE = "collector_reader"
#: The database to connect to when the source's own database must be created.
MAINTENANCE_DATABASE = "postgres"

_PSQL_VARIABLE = re.compile(r""":(?P<quote>["'])(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P=quote)""")


class InitError(Exception):
    """A source could not be initialised; the message names it (without secrets)."""


@dataclass(frozen=True, slots=True)
class InitReport:
    """What ``init-db`` did for one source."""

    source: str
    created_database: bool
    inserted_rows: int


@functools.cache
def sql_file(name: str) -> str:
    """The text of one of the SQL files (``schema.sql``, ...), installed or in a checkout."""
    packaged = resources.files("service").joinpath("sql", name)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parent.parent / name).read_text(encoding="utf-8")


def render_psql(sql: str, variables: Mapping[str, str]) -> str:
    """Substitute psql variable references the way ``psql -v`` does."""

    def substitute(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in variables:
            raise KeyError(f"SQL refers to undefined variable {name!r}")
        value = variables[name]
        if match["quote"] == '"':
            return quote_identifier(value)
        return "'" + value.replace("'", "''") + "'"

    return _PSQL_VARIABLE.sub(substitute, sql)


class NeedsAdminError(InitError):
    """The DSN init-db used may not create what it must (typically the read-only role's)."""


def admin_target(admin_dsn: str, source_dsn: str) -> str:
    """The administrative DSN, pointed at the database ``source_dsn`` names.

    ``serve`` connects as the read-only role, which may neither create databases
    nor tables; ``init-db --admin-dsn`` keeps the source's database but takes the
    server, user and password from the administrative DSN.
    """
    try:
        parts = urlsplit(admin_dsn)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("dbname", "database")]
    except ValueError:
        raise ConfigError(f"admin DSN {redact_dsn(admin_dsn)} cannot be parsed") from None
    schemes = MYSQL_SCHEMES if is_mysql(source_dsn) else SCHEMES
    if parts.scheme not in schemes:
        raise ConfigError(
            f"admin DSN {redact_dsn(admin_dsn)} must start with {schemes[0]}:// "
            "(the source's engine)"
        )
    path = "/" + quote(_database_name(source_dsn))
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), ""))


async def init_source(source: SourceConfig, admin_dsn: str | None = None) -> InitReport:
    """Create the source's database if missing, then its table, seed rows and reader role.

    With ``admin_dsn`` everything is done as that role (see ``admin_target``);
    without it, as the source's own DSN.
    """
    if admin_dsn is not None:
        source = dataclasses.replace(source, dsn=admin_target(admin_dsn, source.dsn))
    if is_mysql(source.dsn):
        return await _init_mysql(source)
    try:
        return await _init(source)
    except asyncpg.InsufficientPrivilegeError as exc:
        raise NeedsAdminError(
            f"source {source.name!r}: {exc}; run init-db as a role that may create "
            "databases, tables and roles (--admin-dsn)"
        ) from None


async def _init(source: SourceConfig) -> InitReport:
    created = await _ensure_database(source)
    variables = {"table": source.table}
    schema = render_psql(sql_file("schema.sql"), variables)
    seed = render_psql(sql_file("seed.sql"), variables)
    roles = render_psql(sql_file("roles.sql"), variables)
    try:
        connection = await asyncpg.connect(source.dsn, timeout=CONNECT_TIMEOUT)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise InitError(f"source {source.name!r}: cannot connect: {exc}") from None
    try:
        async with connection.transaction():
            await connection.execute(schema)
            status = await connection.execute(seed)
            await connection.execute(roles)
    except asyncpg.InsufficientPrivilegeError:
        raise
    except asyncpg.PostgresError as exc:
        raise InitError(f"source {source.name!r}: {exc}") from None
    finally:
        await connection.close()
    # The status of an INSERT is "INSERT 0 <rows>".
    return InitReport(source.name, created, int(status.rsplit(" ", 1)[-1]))


async def _init_mysql(source: SourceConfig) -> InitReport:
    """The same files on MariaDB/MySQL, with ``roles_mysql.sql`` for the reader account."""
    from asyncmy.errors import MySQLError

    from service.sources.mysql.initdb import DeniedError, init_mysql

    variables = {"table": source.table}
    names = ("schema.sql", "seed.sql", "roles_mysql.sql")
    files = [render_psql(sql_file(name), variables) for name in names]
    try:
        created, inserted = await init_mysql(source, files, CONNECT_TIMEOUT)
    except DeniedError as exc:
        raise NeedsAdminError(
            f"source {source.name!r}: {exc}; run init-db as an account that may create "
            "databases, tables and users (--admin-dsn)"
        ) from None
    except (OSError, TimeoutError, MySQLError) as exc:
        raise InitError(f"source {source.name!r}: {describe_error(exc)}") from None
    return InitReport(source.name, created, inserted)


async def _ensure_database(source: SourceConfig) -> bool:
    try:
        connection = await asyncpg.connect(source.dsn, timeout=CONNECT_TIMEOUT)
    except asyncpg.InvalidCatalogNameError:
        pass
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise InitError(f"source {source.name!r}: cannot connect: {exc}") from None
    else:
        await connection.close()
        return False
    try:
        admin = await asyncpg.connect(
            source.dsn, database=MAINTENANCE_DATABASE, timeout=CONNECT_TIMEOUT
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise InitError(
            f"source {source.name!r}: database missing and cannot connect to "
            f"{MAINTENANCE_DATABASE!r} to create it: {exc}"
        ) from None
    try:
        database = _database_name(source.dsn)
        await admin.execute(f"CREATE DATABASE {quote_identifier(database)}")
    except asyncpg.DuplicateDatabaseError:
        return False  # created concurrently by someone else: fine
    except asyncpg.InsufficientPrivilegeError:
        raise
    except asyncpg.PostgresError as exc:
        raise InitError(f"source {source.name!r}: cannot create database: {exc}") from None
    finally:
        await admin.close()
    return True


def _database_name(dsn: str) -> str:
    """The database a DSN names, with libpq's defaults (the user name, then the OS user)."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    return (
        query.get("dbname")
        or query.get("database")
        or unquote(parts.path.lstrip("/"))
        or os.environ.get("PGDATABASE")
        or query.get("user")
        or unquote(parts.username or "")
        or os.environ.get("PGUSER")
        or getpass.getuser()
    )
