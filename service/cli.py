"""The ``collector`` command: ``serve`` and ``init-db``.

Operator mistakes (a bad config file, a taken port, an unreachable database during
init-db) end with one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path

from service.config import (
    CONFIG_ENV,
    Config,
    ConfigError,
    config_path,
    load_config,
    with_environment,
)
from service.logs import setup_logging

EXIT_FAILURE = 1
EXIT_USAGE = 2
#: Environment variable naming init-db's administrative DSN (keeps it out of argv).
ADMIN_DSN_ENV = "COLLECTOR_ADMIN_DSN"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = _parser().parse_args(argv)
    setup_logging(logging.INFO)
    try:
        config = _load(args.config)
    except ConfigError as exc:
        print(f"collector: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from service.embedded import EmbeddedError

    try:
        if args.command == "serve":
            return _serve(config, args.host, args.port, args.workers)
        return _init_db(config, args.admin_dsn or os.environ.get(ADMIN_DSN_ENV) or None)
    except EmbeddedError as exc:
        print(f"collector: embedded PostgreSQL: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="collector",
        description="Serve every row of several PostgreSQL sources, sorted by id, "
        "within a deadline.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = (
        f"TOML config file (default: ${CONFIG_ENV}, else an embedded PostgreSQL "
        "with the reference data)"
    )
    serve = commands.add_parser("serve", help="serve GET /collect-data over HTTP")
    serve.add_argument("--config", type=Path, metavar="PATH", help=config_help)
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    serve.add_argument(
        "--port",
        type=_bounded_int("port number", 0, 65535),
        default=8000,
        help="TCP port (default: %(default)s)",
    )
    serve.add_argument(
        "--workers",
        type=_bounded_int("number of workers", 1, 64),
        default=1,
        help="worker processes, each with its own pools (default: %(default)s)",
    )
    init = commands.add_parser("init-db", help="create each source's database, table and seed rows")
    init.add_argument("--config", type=Path, metavar="PATH", help=config_help)
    init.add_argument(
        "--admin-dsn",
        metavar="DSN",
        help=f"connect as this administrative role instead of each source's DSN (the "
        f"source's database is kept); default ${ADMIN_DSN_ENV}",
    )
    return parser


def _bounded_int(what: str, low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number of ``what`` in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {what}: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be between {low} and {high}")
        return value

    return parse


def _load(given: Path | None) -> Config | None:
    """The config named on the command line or in the environment; None = embedded."""
    path = config_path(given)
    return None if path is None else load_config(path)


def _serve(config: Config | None, host: str, port: int, workers: int = 1) -> int:
    import trio

    from service.dbinit import READER_ROLE
    from service.embedded import data_dir, embedded_server, reference_config
    from service.runtime import stopping
    from service.runtime.server import ServeError, find_exception, seed_sources, serve
    from service.runtime.workers import serve_workers

    stopping.install()
    with ExitStack() as stack:
        if config is None:
            directory = data_dir()
            print(f"collector: no config given; embedded PostgreSQL in {directory}", flush=True)
            server = stack.enter_context(embedded_server(directory))
            if not stopping.requested():
                trio.run(seed_sources, reference_config(server))  # as the superuser
            config = reference_config(server, user=READER_ROLE)  # serve read-only
        if stopping.requested():
            return 0  # stopped while starting: the ExitStack stops the embedded server
        try:
            config = with_environment(config)
        except ConfigError as exc:
            print(f"collector: config error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        try:
            if workers > 1:
                return serve_workers(config, host, port, workers)
            trio.run(partial(serve, config, host, port))
        except BaseException as exc:
            if (error := find_exception(exc, ServeError)) is None:
                raise
            print(f"collector: {error}", file=sys.stderr)
            return EXIT_FAILURE
    return 0


def _init_db(config: Config | None, admin_dsn: str | None = None) -> int:
    from service.dbinit import InitError, NeedsAdminError, init_source
    from service.embedded import data_dir, embedded_server, reference_config

    async def init_all(config: Config) -> None:
        for source in config.sources:
            report = await init_source(source, admin_dsn)
            created = ", database created" if report.created_database else ""
            print(f"collector: {report.source}: {report.inserted_rows} rows added{created}")

    with ExitStack() as stack:
        if config is None:
            config = reference_config(stack.enter_context(embedded_server(data_dir())))
        try:
            asyncio.run(init_all(config))
        except ConfigError as exc:
            print(f"collector: config error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except NeedsAdminError as exc:
            print(f"collector: init-db failed: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except InitError as exc:
            print(f"collector: init-db failed: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
