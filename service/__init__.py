"""collector: every row from all sources, sorted by id, within a deadline.

Layout::

    web/          HTTP layer (Quart-Trio): routes, parameters, wire formats, OpenAPI, metrics
    core/         fan-out and merge: the Source protocol, the per-source guard, outcomes,
                  pages, streams, circuit breakers, coalescing (no HTTP, no SQL)
    sources/      Source implementations (postgres/: raw SQL, ORM), the factory, the asyncio bridge
    config/       the TOML config file: every key once, loading, DSN checks and redaction
    runtime/      Hypercorn wiring, worker processes, write guard, memory release, stop signals
    logs.py       JSON log lines carrying the request id
    dbinit.py     schema.sql / seed.sql / roles.sql applied to each source
    embedded.py   the zero-config PostgreSQL server
    watchdog.py   stops that server once the process using it is gone, however it went
    sqlnames.py   SQL identifier quoting shared by the sources and init-db
    cli.py        the ``collector`` command
"""
