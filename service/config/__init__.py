"""The service's configuration: schema (keys and defaults), loading (file + environment), secrets.

Everything other modules need is re-exported here, so ``from service.config import X`` is
the one import path.
"""

from service.config.loading import (
    CONFIG_ENV,
    TOKEN_ENV,
    config_path,
    load_config,
    parse_config,
    with_environment,
)
from service.config.schema import (
    DEFAULT_IDS_CHECK_INTERVAL,
    DEFAULT_MAX_CONCURRENT_REQUESTS,
    DEFAULT_POOL_SIZE,
    DEFAULT_PROBE_TIMEOUT,
    DEFAULT_RESPONSE_TIMEOUT,
    DEFAULT_SERVER_CONNECTIONS,
    DEFAULT_STREAM_IDLE_TIMEOUT,
    DEFAULT_TIMEOUT,
    MAX_POOL_SIZE,
    MAX_TIMEOUT,
    MIN_TOKEN_LENGTH,
    Access,
    Config,
    ConfigError,
    SourceConfig,
)
from service.config.secrets import DsnError, check_dsn, dsn_secrets, redact_dsn

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_IDS_CHECK_INTERVAL",
    "DEFAULT_MAX_CONCURRENT_REQUESTS",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_PROBE_TIMEOUT",
    "DEFAULT_RESPONSE_TIMEOUT",
    "DEFAULT_SERVER_CONNECTIONS",
    "DEFAULT_STREAM_IDLE_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "MAX_POOL_SIZE",
    "MAX_TIMEOUT",
    "MIN_TOKEN_LENGTH",
    "TOKEN_ENV",
    "Access",
    "Config",
    "ConfigError",
    "DsnError",
    "SourceConfig",
    "check_dsn",
    "config_path",
    "dsn_secrets",
    "load_config",
    "parse_config",
    "redact_dsn",
    "with_environment",
]
