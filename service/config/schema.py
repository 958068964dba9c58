"""The configuration's schema: every key once, with its type, default, bounds and meaning.

A key is a dataclass field of :class:`Config` or :class:`SourceConfig` whose metadata is a
:class:`Rule`; the loader walks these fields, so adding a key means adding one field here
(its name, type, default, bounds and doc string) and nothing elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from service.config.secrets import dsn_secrets, redact_dsn
from service.core import IdRanges
from service.core.breaker import DEFAULT_COOLDOWN, DEFAULT_FAILURE_THRESHOLD, BreakerSettings
from service.core.coalesce import DEFAULT_LINGER, MAX_WAIT
from service.core.replicas import DEFAULT_HEDGE_BUDGET, HedgeSettings

#: Seconds a source may take before it counts as missing (the product's contract).
DEFAULT_TIMEOUT = 2.0
#: Upper bound for ``timeout``: a deadline longer than this is a misconfiguration.
MAX_TIMEOUT = 600.0
#: Connections kept per source unless ``pool_size`` says otherwise.
DEFAULT_POOL_SIZE = 10
MAX_POOL_SIZE = 100
#: Connections the service opens to one database server at most, all its databases
#: and workers together: a stock PostgreSQL allows 100, 3 of them for superusers,
#: which leaves a third of the server to everyone else.
DEFAULT_SERVER_CONNECTIONS = 64
MAX_SERVER_CONNECTIONS = 100_000
#: Seconds an unused connection stays open before it is closed.
DEFAULT_IDLE_CONNECTION_TIMEOUT = 60.0
#: Longest breaker cool-down accepted, in seconds.
MAX_COOLDOWN = 3600.0
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
#: Seconds between background probes of a server whose breaker is open (0: no probes).
DEFAULT_PROBE_INTERVAL = 1.0
MAX_PROBE_INTERVAL = 3600.0
#: Servers a source may list beside its ``dsn``.
MAX_REPLICAS = 16


class ConfigError(Exception):
    """A config file that cannot be used; the message is one line for the operator."""


class Kind(StrEnum):
    """The TOML type a key takes, and so how it is checked."""

    SECONDS = "a number of seconds"
    NUMBER = "a number"
    WHOLE = "a whole number"
    FLAG = "true or false"
    TEXT = "a string"


@dataclass(frozen=True, slots=True)
class Rule:
    """What one key accepts: its kind, bounds (``low`` excluded when ``open_low``), doc."""

    kind: Kind
    doc: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False

    def check(self, key: str, value: Any) -> Any:
        """The value as the key's Python type, or ConfigError naming the key and bounds."""
        if not self._typed(value) or not self._within(value):
            raise ConfigError(f"{key} must be {self.kind.value}{self._bounds()}")
        if self.kind in (Kind.SECONDS, Kind.NUMBER):
            return float(value)
        return value

    def _typed(self, value: object) -> bool:
        whole = isinstance(value, int) and not isinstance(value, bool)
        if self.kind in (Kind.SECONDS, Kind.NUMBER):
            return whole or (isinstance(value, float) and math.isfinite(value))
        if self.kind is Kind.WHOLE:
            return whole
        return isinstance(value, bool if self.kind is Kind.FLAG else str)

    def _within(self, value: Any) -> bool:
        measure = len(value) if self.kind is Kind.TEXT else value
        if self.low is not None and (measure <= self.low if self.open_low else measure < self.low):
            return False
        return self.high is None or measure <= self.high

    def _bounds(self) -> str:
        if self.kind is Kind.TEXT:
            return f" of at least {self.low:g} characters" if self.low else ""
        if self.low is None:
            return ""
        if self.high is None:
            return f" >= {self.low:g}"
        if self.open_low:
            return f" > {self.low:g} and <= {self.high:g}"
        return f" from {self.low:g} to {self.high:g}"


def setting(default: object, rule: Rule, *, secret: bool = False) -> Any:
    """A dataclass field that is a config key: its default and the rule it must meet."""
    return field(default=default, repr=not secret, metadata={"rule": rule})


def rules(cls: type) -> Iterator[tuple[str, Rule, object]]:
    """Each config key of a schema dataclass: its name, rule and default."""
    for each in fields(cls):
        rule = each.metadata.get("rule")
        if isinstance(rule, Rule):
            yield each.name, rule, each.default


def checked(cls: type, table: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """The keys of ``cls`` found in ``table``, each checked against its rule."""
    return {
        name: rule.check(f"{where}: {name}" if where else repr(name), table[name])
        for name, rule, _ in rules(cls)
        if name in table
    }


class Access(StrEnum):
    """How a source is read: hand-written SQL over asyncpg, or the SQLAlchemy ORM."""

    RAW = "raw"
    ORM = "orm"


#: The breaker's keys sit flat in a source's table but build one BreakerSettings.
BREAKER_RULES = {
    "breaker_failures": Rule(Kind.WHOLE, "failures in a row that open its breaker (0: never)", 0),
    "breaker_cooldown": Rule(
        Kind.SECONDS, "seconds before an open breaker lets a trial through", 0, MAX_COOLDOWN
    ),
}
BREAKER_DEFAULTS = {
    "breaker_failures": DEFAULT_FAILURE_THRESHOLD,
    "breaker_cooldown": DEFAULT_COOLDOWN,
}


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """One data source: where it is, which table holds its rows, how to read it."""

    name: str
    dsn: str = field(repr=False)
    table: str
    access: Access
    pool_size: int = setting(
        DEFAULT_POOL_SIZE, Rule(Kind.WHOLE, "connections kept for this source", 1, MAX_POOL_SIZE)
    )
    pgbouncer: bool = setting(
        False,
        Rule(Kind.FLAG, "the DSN is a PgBouncer in transaction mode: no prepared statements"),
    )
    ids: IdRanges | None = None
    """The id ranges the source holds, inclusive, sorted; None when undeclared."""
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    replicas: tuple[str, ...] = field(default=(), repr=False)
    """More servers holding the same rows, beside ``dsn`` (the key ``replicas``)."""
    hedge_delay: float | None = None
    """Seconds before a fetch is hedged to the next replica; None (``"auto"``): the
    95th percentile of the source's recent answers."""
    hedge_budget: float = setting(
        DEFAULT_HEDGE_BUDGET,
        Rule(Kind.NUMBER, "share of fetches that may be hedged (0: never)", 0, 1),
    )

    @property
    def safe_dsn(self) -> str:
        """The DSN with any password masked, for logs and messages."""
        return redact_dsn(self.dsn)

    @property
    def secrets(self) -> tuple[str, ...]:
        """The DSNs' passwords, to be masked wherever a message might quote them."""
        return tuple(s for dsn in (self.dsn, *self.replicas) for s in dsn_secrets(dsn))

    @property
    def hedge(self) -> HedgeSettings:
        """The hedging settings of a source with replicas."""
        return HedgeSettings(delay=self.hedge_delay, budget=self.hedge_budget)


def _seconds(
    default: float, doc: str, high: float, low: float = 0.0, *, closed: bool = False
) -> Any:
    return setting(default, Rule(Kind.SECONDS, doc, low, high, open_low=not closed))


@dataclass(frozen=True, slots=True)
class Config:
    """The whole service configuration; each field with a rule is a top-level key."""

    sources: tuple[SourceConfig, ...]
    timeout: float = _seconds(DEFAULT_TIMEOUT, "seconds each source may take", MAX_TIMEOUT)
    coalesce: bool = setting(
        True, Rule(Kind.FLAG, "share a fan-out among identical requests arriving together")
    )
    coalesce_linger: float = _seconds(
        DEFAULT_LINGER,
        "seconds a group gathers after an earlier fan-out ends",
        MAX_WAIT,
        closed=True,
    )
    api_token: str | None = setting(
        None,
        Rule(Kind.TEXT, 'data endpoints then need "Authorization: Bearer ..."', MIN_TOKEN_LENGTH),
        secret=True,
    )
    max_concurrent_requests: int = setting(
        DEFAULT_MAX_CONCURRENT_REQUESTS,
        Rule(Kind.WHOLE, "data requests served at once per worker; more get 503", 1, 100_000),
    )
    stream_idle_timeout: float = _seconds(
        DEFAULT_STREAM_IDLE_TIMEOUT,
        "seconds a client may accept nothing before it is disconnected",
        MAX_IO_TIMEOUT,
    )
    response_timeout: float = _seconds(
        DEFAULT_RESPONSE_TIMEOUT, "seconds a non-streamed answer may take to send", MAX_IO_TIMEOUT
    )
    probe_timeout: float = _seconds(
        DEFAULT_PROBE_TIMEOUT, "seconds each source may take to answer /readyz", MAX_TIMEOUT
    )
    server_connections: int = setting(
        DEFAULT_SERVER_CONNECTIONS,
        Rule(
            Kind.WHOLE,
            "connections open to one database server at most (host:port; all workers)",
            1,
            MAX_SERVER_CONNECTIONS,
        ),
    )
    idle_connection_timeout: float = _seconds(
        DEFAULT_IDLE_CONNECTION_TIMEOUT,
        "seconds an unused connection stays open before it is closed",
        MAX_IO_TIMEOUT,
    )
    ids_check_interval: float = _seconds(
        DEFAULT_IDS_CHECK_INTERVAL,
        "seconds between checks of each source's rows against its ids",
        MAX_IDS_CHECK_INTERVAL,
    )
    probe_interval: float = _seconds(
        DEFAULT_PROBE_INTERVAL,
        "seconds between probes of a server whose breaker is open (0: no probes)",
        MAX_PROBE_INTERVAL,
        closed=True,
    )
