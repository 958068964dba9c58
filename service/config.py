"""Configuration: the TOML file format, its validation, and the units it speaks in.

A config file is a public contract, so it is validated strictly: unknown keys are
rejected (a typo such as ``timout`` must not silently fall back to a default) and
every problem is reported as one line naming the file and the offending key.

```toml
timeout = 2.0                 # seconds each source may take; missing = 2.0
coalesce = true               # share a fan-out among identical requests arriving together
coalesce_linger = 0.005       # seconds a group gathers after an earlier fan-out ends (0-0.02)
api_token = "..."             # optional: data endpoints then need "Authorization: Bearer ..."
max_concurrent_requests = 256 # data requests served at once per worker; more get 503
stream_idle_timeout = 30.0    # seconds a client may accept nothing before it is disconnected
response_timeout = 60.0       # seconds a non-streamed answer may take to send
probe_timeout = 0.5           # seconds each source may take to answer a /readyz ping
ids_check_interval = 60.0     # seconds between checks of each source's rows against its ids
[[sources]]
name = "source_1"
dsn = "postgresql://user@127.0.0.1:5432/source_1"
table = "data_1"
access = "raw"                # "raw" (asyncpg + SQL) or "orm" (SQLAlchemy)
pool_size = 10                # optional: connections kept for this source
ids = [[1, 10], [31, 40]]     # optional: the id ranges this source holds
breaker_failures = 5          # optional: failures in a row that open its breaker (0: never)
breaker_cooldown = 10.0       # optional: seconds before an open breaker lets a trial through
```
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeGuard

from service.core import IdRanges
from service.core.breaker import BreakerSettings
from service.core.coalesce import DEFAULT_LINGER, MAX_WAIT
from service.dsn import DsnError, check_dsn, dsn_secrets, redact_dsn

#: Seconds a source may take before it counts as missing (the product's contract).
DEFAULT_TIMEOUT = 2.0
#: Upper bound for ``timeout``: a deadline longer than this is a misconfiguration.
MAX_TIMEOUT = 600.0
#: Connections kept per source unless ``pool_size`` says otherwise.
DEFAULT_POOL_SIZE = 10
MAX_POOL_SIZE = 100
#: Longest breaker cool-down accepted, in seconds.
MAX_COOLDOWN = 3600.0
#: Environment variable that may name the config file instead of ``--config``.
CONFIG_ENV = "COLLECTOR_CONFIG"
#: Environment variable holding the API token; it overrides ``api_token``.
TOKEN_ENV = "COLLECTOR_API_TOKEN"
#: Data requests one worker serves at once before it answers 503: enough for
#: bursts (each costs a fan-out at most), small enough to bound memory and pools.
DEFAULT_MAX_CONCURRENT_REQUESTS = 256
MIN_TOKEN_LENGTH = 16
#: Seconds a client may accept no data of an answer being written before it is
#: disconnected (a stalled reader must not hold a connection, a stream and its
#: database cursors for ever).
DEFAULT_STREAM_IDLE_TIMEOUT = 30.0
#: Seconds a non-streamed answer may take to be sent (Quart's own default);
#: NDJSON streams are exempt and run as long as the client keeps reading.
DEFAULT_RESPONSE_TIMEOUT = 60.0
MAX_IO_TIMEOUT = 3600.0
#: Seconds a readiness ping may take: well under the 1 s a typical probe allows.
DEFAULT_PROBE_TIMEOUT = 0.5
#: Seconds between checks of each source's rows against its declared ids.
DEFAULT_IDS_CHECK_INTERVAL = 60.0
MAX_IDS_CHECK_INTERVAL = 86400.0

# Source names appear in HTTP headers (Server-Timing metric names are RFC 9110
# tokens), so they are restricted to characters that never need quoting.
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Table names are spliced into SQL as quoted identifiers; the pattern keeps them to
# plain PostgreSQL identifiers (63 bytes) so quoting can never be escaped.
_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_TOP_KEYS = frozenset(
    {
        "timeout",
        "sources",
        "coalesce",
        "coalesce_linger",
        "api_token",
        "max_concurrent_requests",
        "stream_idle_timeout",
        "response_timeout",
        "probe_timeout",
        "ids_check_interval",
    }
)
_SOURCE_KEYS = frozenset(
    {"name", "dsn", "table", "access", "pool_size", "ids", "breaker_failures", "breaker_cooldown"}
)
_REQUIRED_SOURCE_KEYS = ("name", "dsn", "table", "access")


class ConfigError(Exception):
    """A config file that cannot be used; the message is one line for the operator."""


class Access(StrEnum):
    """How a source is read: hand-written SQL over asyncpg, or the SQLAlchemy ORM."""

    RAW = "raw"
    ORM = "orm"


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """One data source: where it is, which table holds its rows, how to read it."""

    name: str
    dsn: str = field(repr=False)
    table: str
    access: Access
    pool_size: int = DEFAULT_POOL_SIZE
    ids: IdRanges | None = None
    """The id ranges the source holds, inclusive, sorted; None when undeclared."""
    breaker: BreakerSettings = field(default_factory=BreakerSettings)

    @property
    def safe_dsn(self) -> str:
        """The DSN with any password masked, for logs and messages."""
        return redact_dsn(self.dsn)

    @property
    def secrets(self) -> tuple[str, ...]:
        """The DSN's passwords, to be masked wherever a message might quote them."""
        return dsn_secrets(self.dsn)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole service configuration."""

    sources: tuple[SourceConfig, ...]
    timeout: float = DEFAULT_TIMEOUT
    coalesce: bool = True
    """Share one fan-out among identical requests that arrive before it starts."""
    coalesce_linger: float = DEFAULT_LINGER
    """Seconds a coalescing group keeps gathering after an earlier fan-out ends."""
    api_token: str | None = field(default=None, repr=False)
    """When set, data endpoints require ``Authorization: Bearer <token>``."""
    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS
    stream_idle_timeout: float = DEFAULT_STREAM_IDLE_TIMEOUT
    """Seconds a client may accept nothing of an answer before it is disconnected."""
    response_timeout: float = DEFAULT_RESPONSE_TIMEOUT
    """Seconds a non-streamed answer may take to send."""
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT
    """Seconds each source may take to answer a readiness ping."""
    ids_check_interval: float = DEFAULT_IDS_CHECK_INTERVAL
    """Seconds between checks of the sources' rows against their declared ids."""


def load_config(path: Path) -> Config:
    """Read and validate a TOML config file; raise ConfigError with a one-line reason."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_config(data: Mapping[str, Any]) -> Config:
    """Validate an already-decoded config mapping."""
    _reject_unknown(data, _TOP_KEYS, "")
    timeout = _parse_timeout(data.get("timeout", DEFAULT_TIMEOUT))
    raw_sources = data.get("sources")
    if raw_sources is None:
        raise ConfigError("missing key 'sources' (at least one [[sources]] table)")
    if not isinstance(raw_sources, list) or not raw_sources:
        raise ConfigError("'sources' must be a non-empty array of tables ([[sources]])")
    sources = tuple(_parse_source(item, index) for index, item in enumerate(raw_sources))
    seen: set[str] = set()
    for source in sources:
        if source.name in seen:
            raise ConfigError(f"duplicate source name {source.name!r}")
        seen.add(source.name)
    coalesce = data.get("coalesce", True)
    if not isinstance(coalesce, bool):
        raise ConfigError(f"'coalesce' must be true or false, got {coalesce!r}")
    linger = data.get("coalesce_linger", DEFAULT_LINGER)
    if not _is_number(linger) or not 0 <= linger <= MAX_WAIT:
        raise ConfigError(f"'coalesce_linger' must be a number of seconds from 0 to {MAX_WAIT:g}")
    token = data.get("api_token")
    if token is not None and (not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH):
        raise ConfigError(f"'api_token' must be a string of at least {MIN_TOKEN_LENGTH} characters")
    limit = data.get("max_concurrent_requests", DEFAULT_MAX_CONCURRENT_REQUESTS)
    if not _is_int(limit) or not 1 <= limit <= 100_000:
        raise ConfigError("'max_concurrent_requests' must be a whole number from 1 to 100000")
    return Config(
        sources=sources,
        timeout=timeout,
        coalesce=coalesce,
        coalesce_linger=float(linger),
        api_token=token,
        max_concurrent_requests=limit,
        stream_idle_timeout=_parse_seconds(
            data, "stream_idle_timeout", DEFAULT_STREAM_IDLE_TIMEOUT, MAX_IO_TIMEOUT
        ),
        response_timeout=_parse_seconds(
            data, "response_timeout", DEFAULT_RESPONSE_TIMEOUT, MAX_IO_TIMEOUT
        ),
        probe_timeout=_parse_seconds(data, "probe_timeout", DEFAULT_PROBE_TIMEOUT, MAX_TIMEOUT),
        ids_check_interval=_parse_seconds(
            data, "ids_check_interval", DEFAULT_IDS_CHECK_INTERVAL, MAX_IDS_CHECK_INTERVAL
        ),
    )


def _parse_seconds(data: Mapping[str, Any], key: str, default: float, most: float) -> float:
    """A positive, finite number of seconds, at most ``most``."""
    value = data.get(key, default)
    if not _is_number(value) or not math.isfinite(value) or not 0 < value <= most:
        raise ConfigError(f"'{key}' must be a number of seconds > 0 and <= {most:g}")
    return float(value)


def _parse_timeout(value: object) -> float:
    if not _is_number(value):
        raise ConfigError(f"'timeout' must be a number of seconds, got {value!r}")
    timeout = float(value)
    if not math.isfinite(timeout) or not 0 < timeout <= MAX_TIMEOUT:
        raise ConfigError(f"'timeout' must be > 0 and <= {MAX_TIMEOUT:g} seconds, got {value!r}")
    return timeout


def _parse_source(item: object, index: int) -> SourceConfig:
    where = f"sources[{index}]"
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: must be a table with keys {', '.join(_REQUIRED_SOURCE_KEYS)}")
    _reject_unknown(item, _SOURCE_KEYS, where + ": ")
    for key in _REQUIRED_SOURCE_KEYS:
        if key not in item:
            raise ConfigError(f"{where}: missing key {key!r}")
        if not isinstance(item[key], str):
            raise ConfigError(f"{where}.{key}: must be a string")
    name, dsn, table, access = (item[key] for key in _REQUIRED_SOURCE_KEYS)
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{where}.name: {name!r} must be 1-64 characters of letters, digits, '_', '.', '-'"
        )
    where = f"source {name!r}"
    try:
        check_dsn(dsn)
    except DsnError as exc:
        raise ConfigError(f"{where}: dsn {exc} (got {redact_dsn(dsn)!r})") from None
    if not _TABLE_RE.fullmatch(table):
        raise ConfigError(
            f"{where}: table {table!r} is not a plain identifier "
            "(a letter or '_', then letters, digits or '_', at most 63)"
        )
    try:
        mode = Access(access)
    except ValueError:
        modes = " or ".join(repr(m.value) for m in Access)
        raise ConfigError(f"{where}: unknown access mode {access!r} (use {modes})") from None
    pool_size = item.get("pool_size", DEFAULT_POOL_SIZE)
    if not _is_int(pool_size):
        raise ConfigError(f"{where}: pool_size must be an integer")
    if not 1 <= pool_size <= MAX_POOL_SIZE:
        raise ConfigError(f"{where}: pool_size must be between 1 and {MAX_POOL_SIZE}")
    ids = _parse_ids(item["ids"], where) if "ids" in item else None
    return SourceConfig(
        name=name,
        dsn=dsn,
        table=table,
        access=mode,
        pool_size=pool_size,
        ids=ids,
        breaker=_parse_breaker(item, where),
    )


def _parse_ids(value: object, where: str) -> IdRanges:
    problem = f"{where}: ids must be a list of [first, last] integer pairs, e.g. [[1, 10]]"
    if not isinstance(value, list) or not value:
        raise ConfigError(problem)
    ranges: list[tuple[int, int]] = []
    for pair in value:
        if not isinstance(pair, list) or len(pair) != 2 or not all(_is_int(v) for v in pair):
            raise ConfigError(problem)
        first, last = pair
        if first > last:
            raise ConfigError(f"{where}: ids range [{first}, {last}] ends before it starts")
        ranges.append((first, last))
    ranges.sort()
    for (_, last), (first, _) in itertools.pairwise(ranges):
        if first <= last:
            raise ConfigError(f"{where}: ids ranges overlap at {first}")
    return tuple(ranges)


def _parse_breaker(item: Mapping[str, Any], where: str) -> BreakerSettings:
    defaults = BreakerSettings()
    failures = item.get("breaker_failures", defaults.failures)
    if not _is_int(failures) or failures < 0:
        raise ConfigError(f"{where}: breaker_failures must be a whole number >= 0")
    cooldown = item.get("breaker_cooldown", defaults.cooldown)
    if not _is_number(cooldown):
        raise ConfigError(f"{where}: breaker_cooldown must be a number of seconds")
    if not math.isfinite(cooldown) or not 0 <= cooldown <= MAX_COOLDOWN:
        raise ConfigError(
            f"{where}: breaker_cooldown must be between 0 and {MAX_COOLDOWN:g} seconds"
        )
    return BreakerSettings(failures=failures, cooldown=float(cooldown))


def _is_int(value: object) -> TypeGuard[int]:
    """A TOML integer (TOML booleans are Python ints too, and are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    """A TOML integer or float, not a boolean."""
    return _is_int(value) or isinstance(value, float)


def _reject_unknown(table: Mapping[str, Any], allowed: frozenset[str], prefix: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"{prefix}unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )
