"""Source DSNs: checked once when the config is loaded, and never printed with secrets.

A DSN is handed to the driver as text (asyncpg parses it for raw and ORM sources
alike), so a DSN the driver would choke on must be refused here, at start-up, as a
one-line config error, rather than surface later as a traceback or a failing source.

Only the libpq parameters below are accepted, with libpq's meaning. asyncpg would
take others (any unknown one becomes a server setting), and a misspelt ``sslmode``
must not silently connect without TLS.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SCHEMES = ("postgresql", "postgres")
#: MariaDB and MySQL sources (``service/sources/mysql``); their DSNs carry no parameters.
MYSQL_SCHEMES = ("mysql", "mariadb")
#: The query parameters a DSN may carry.
PARAMETERS = (
    "host",
    "port",
    "dbname",
    "user",
    "password",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
)
#: libpq's ``sslmode`` values, weakest first.
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class DsnError(ValueError):
    """A DSN that cannot be used; the message is one line and quotes no secret."""


def check_dsn(dsn: str) -> None:
    """Raise DsnError unless ``dsn`` is a ``postgresql://`` URL the driver can parse."""
    try:
        parts = urlsplit(dsn)
    except ValueError as exc:
        raise DsnError(f"is not a valid URL ({exc})") from None
    if parts.scheme in MYSQL_SCHEMES:
        _check_mysql(parts.netloc, parts.path, parts.query)
        return
    if parts.scheme not in SCHEMES:
        raise DsnError("must start with postgresql://, mysql:// or mariadb://")
    for host in parts.netloc.rpartition("@")[2].split(","):
        _check_host(host)
    for key, value in _query(parts.query):
        _check_parameter(key, value)


def is_mysql(dsn: str) -> bool:
    """Whether ``dsn`` names a MariaDB or MySQL server (else PostgreSQL)."""
    return dsn.partition("://")[0] in MYSQL_SCHEMES


def _check_mysql(netloc: str, path: str, query: str) -> None:
    """``mysql://user[:password]@host[:port]/database``: one host, a database, no parameters.

    The driver takes keyword arguments, not a URL, so anything beyond these parts
    would be silently dropped; it is refused instead.
    """
    host = netloc.rpartition("@")[2]
    if not host or "," in host:
        raise DsnError("must name one host (mysql://user@host:3306/database)")
    _check_host(host)
    if not path.strip("/") or "/" in path.strip("/"):
        raise DsnError("must name a database (mysql://user@host:3306/database)")
    if query:
        raise DsnError("takes no query parameters for mysql:// and mariadb://")


def _check_host(host: str) -> None:
    """One ``host[:port]`` of the host list (IPv6 addresses in brackets)."""
    try:
        port = urlsplit(f"//{host}").port
    except ValueError as exc:
        raise DsnError(f"has a bad host or port {_quoted(host)} ({exc})") from None
    if port == 0:
        raise DsnError(f"has a bad port in {_quoted(host)}")


def _query(query: str) -> list[tuple[str, str]]:
    """The query's parameters; each may appear once."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise DsnError("has a malformed query string (want name=value&...)") from None
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise DsnError(f"gives parameter {key!r} twice")
        seen.add(key)
    return pairs


def _check_parameter(key: str, value: str) -> None:
    if key not in PARAMETERS:
        raise DsnError(f"has unsupported parameter {key!r} (supported: {', '.join(PARAMETERS)})")
    if key == "sslmode" and value not in SSL_MODES:
        raise DsnError(f"has sslmode {value!r} (use one of: {', '.join(SSL_MODES)})")
    if key == "port" and not all(p.isdigit() and 0 < int(p) < 65536 for p in value.split(",")):
        raise DsnError(f"has a bad port parameter {value!r}")


def _quoted(host: str) -> str:
    return repr(host) if len(host) <= 80 else repr(host[:77] + "...")


def redact_dsn(dsn: str) -> str:
    """Mask the password of a DSN (in the userinfo or a ``password=`` parameter)."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return _redact_unparsable(dsn)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        if ":" in userinfo:
            netloc = f"{userinfo.partition(':')[0]}:***@{hostinfo}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if "password" in k.lower() else v) for k, v in pairs], safe="/*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redact_unparsable(dsn: str) -> str:
    """The userinfo's password masked by hand, where the URL parser gives up."""
    if "password" in dsn.lower():
        return "<unparsable dsn>"
    scheme, sep, rest = dsn.partition("://")
    userinfo, at, hostinfo = rest.rpartition("@")
    if not sep:
        return "<unparsable dsn>"
    if not at or ":" not in userinfo:
        return dsn
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{hostinfo}"


def dsn_secrets(dsn: str) -> tuple[str, ...]:
    """The passwords a DSN carries, in the userinfo or as a ``password=`` parameter."""
    try:
        parts = urlsplit(dsn)
        found = [parts.password or ""]
        found += [v for k, v in parse_qsl(parts.query) if "password" in k.lower()]
    except ValueError:
        return ()
    return tuple(secret for secret in found if secret)
