"""Loading the configuration: the TOML file, then the environment, checked against the schema.

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
server_connections = 64       # connections open to one database server at most (all workers)
idle_connection_timeout = 60.0  # seconds an unused connection stays open
probe_interval = 1.0          # seconds between probes of a server whose breaker is open (0: none)
[[sources]]
name = "source_1"
dsn = "postgresql://user@127.0.0.1:5432/source_1"
table = "data_1"
access = "raw"                # "raw" (asyncpg + SQL) or "orm" (SQLAlchemy)
pool_size = 10                # optional: connections its database may hold
pgbouncer = false             # optional: the DSN is a PgBouncer in transaction mode
ids = [[1, 10], [31, 40]]     # optional: the id ranges this source holds
breaker_failures = 5          # optional: failures in a row that open its breaker (0: never)
breaker_cooldown = 10.0       # optional: seconds before an open breaker lets a trial through
replicas = ["postgresql://user@10.0.0.2:5432/source_1"]  # optional: more servers, same rows
hedge_delay = "auto"          # optional: seconds before a hedge, or "auto" (recent p95)
hedge_budget = 0.1            # optional: share of fetches that may be hedged (0: never)
```

Defaults, bounds and the meaning of each key live in :mod:`service.config.schema`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.config.schema import (
    BREAKER_DEFAULTS,
    BREAKER_RULES,
    MAX_REPLICAS,
    MAX_TIMEOUT,
    MIN_TOKEN_LENGTH,
    Access,
    Config,
    ConfigError,
    SourceConfig,
    checked,
    rules,
)
from service.config.secrets import DsnError, check_dsn, is_mysql, redact_dsn
from service.core import IdRanges
from service.core.breaker import BreakerSettings

#: Environment variable that may name the config file instead of ``--config``.
CONFIG_ENV = "COLLECTOR_CONFIG"
#: Environment variable holding the API token; it overrides ``api_token``.
TOKEN_ENV = "COLLECTOR_API_TOKEN"

# Source names appear in HTTP headers (Server-Timing metric names are RFC 9110
# tokens), so they are restricted to characters that never need quoting.
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Table names are spliced into SQL as quoted identifiers; the pattern keeps them to
# plain PostgreSQL identifiers (63 bytes) so quoting can never be escaped.
_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_REQUIRED_SOURCE_KEYS = ("name", "dsn", "table", "access")
_TOP_KEYS = frozenset({"sources", *(name for name, _, _ in rules(Config))})
_SOURCE_KEYS = frozenset(
    {
        *_REQUIRED_SOURCE_KEYS,
        "ids",
        "replicas",
        "hedge_delay",
        *BREAKER_RULES,
        *(name for name, _, _ in rules(SourceConfig)),
    }
)


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


def config_path(given: Path | None) -> Path | None:
    """The config named on the command line, else in ``$COLLECTOR_CONFIG``; None if neither."""
    if given is None and os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return given


def with_environment(config: Config) -> Config:
    """``$COLLECTOR_API_TOKEN`` overrides the file's ``api_token`` (keeps it out of files)."""
    token = os.environ.get(TOKEN_ENV)
    if not token:
        return config
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"${TOKEN_ENV} must be at least {MIN_TOKEN_LENGTH} characters")
    return dataclasses.replace(config, api_token=token)


def parse_config(data: Mapping[str, Any]) -> Config:
    """Validate an already-decoded config mapping."""
    _reject_unknown(data, _TOP_KEYS, "")
    settings = checked(Config, data)
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
    return Config(sources=sources, **settings)


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
    _check_where(dsn, table, where)
    return SourceConfig(
        name=name,
        dsn=dsn,
        table=table,
        access=_access(access, where),
        ids=_parse_ids(item["ids"], where) if "ids" in item else None,
        breaker=_parse_breaker(item, where),
        replicas=_parse_replicas(item.get("replicas", []), dsn, where),
        hedge_delay=_parse_hedge_delay(item.get("hedge_delay", "auto"), where),
        **checked(SourceConfig, item, where),
    )


def _check_where(dsn: str, table: str, where: str) -> None:
    """The DSN is one the driver accepts and the table a plain identifier."""
    try:
        check_dsn(dsn)
    except DsnError as exc:
        raise ConfigError(f"{where}: dsn {exc} (got {redact_dsn(dsn)!r})") from None
    if not _TABLE_RE.fullmatch(table):
        raise ConfigError(
            f"{where}: table {table!r} is not a plain identifier "
            "(a letter or '_', then letters, digits or '_', at most 63)"
        )


def _access(access: str, where: str) -> Access:
    try:
        return Access(access)
    except ValueError:
        modes = " or ".join(repr(m.value) for m in Access)
        raise ConfigError(f"{where}: unknown access mode {access!r} (use {modes})") from None


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


def _parse_replicas(value: object, dsn: str, where: str) -> tuple[str, ...]:
    """More DSNs of servers holding the same rows; each checked as ``dsn`` is."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: replicas must be a list of DSN strings")
    if len(value) > MAX_REPLICAS:
        raise ConfigError(f"{where}: replicas lists more than {MAX_REPLICAS} servers")
    for index, replica in enumerate(value):
        try:
            check_dsn(replica)
        except DsnError as exc:
            raise ConfigError(
                f"{where}: replicas[{index}] {exc} (got {redact_dsn(replica)!r})"
            ) from None
        if replica == dsn or replica in value[:index]:
            raise ConfigError(f"{where}: replicas[{index}] repeats a server already listed")
        if is_mysql(replica) != is_mysql(dsn):
            raise ConfigError(
                f"{where}: replicas[{index}] is on another engine than dsn"
                f" (got {redact_dsn(replica)!r})"
            )
    return tuple(value)


def _parse_hedge_delay(value: object, where: str) -> float | None:
    """``"auto"`` (None: the recent p95) or seconds, more than 0."""
    if value == "auto":
        return None
    number = _is_int(value) or (isinstance(value, float) and math.isfinite(value))
    if not number or not 0 < value <= MAX_TIMEOUT:  # type: ignore[operator]
        raise ConfigError(
            f'{where}: hedge_delay must be "auto" or a number of seconds > 0 and <= {MAX_TIMEOUT:g}'
        )
    return float(value)  # type: ignore[arg-type]


def _parse_breaker(item: Mapping[str, Any], where: str) -> BreakerSettings:
    values = {
        key: rule.check(f"{where}: {key}", item.get(key, BREAKER_DEFAULTS[key]))
        for key, rule in BREAKER_RULES.items()
    }
    return BreakerSettings(failures=values["breaker_failures"], cooldown=values["breaker_cooldown"])


def _is_int(value: object) -> bool:
    """A TOML integer (TOML booleans are Python ints too, and are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _reject_unknown(table: Mapping[str, Any], allowed: frozenset[str], prefix: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"{prefix}unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )
