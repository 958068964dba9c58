"""collector: every row from all sources, sorted by id, within a deadline.

Layout::

    web/          HTTP layer (Quart-Trio): routes, parameters, wire formats, OpenAPI, metrics
    core/         fan-out and merge: the Source protocol, the per-source guard, outcomes,
                  pages, streams, circuit breakers, coalescing (no HTTP, no SQL)
    sources/      Source implementations (raw SQL, ORM) and the asyncio bridge
    config.py     the TOML config file and its validation
    logs.py       JSON log lines carrying the request id
    server.py     wiring: asyncio loop, sources, Hypercorn (one or several workers)
    dbinit.py     schema.sql / seed.sql / roles.sql applied to each source
    embedded.py   the zero-config PostgreSQL server
    watchdog.py   stops that server once the process using it is gone, however it went
    stopping.py   SIGINT/SIGTERM from the first line of ``serve``: once is a stop, again is ignored
    cli.py        the ``collector`` command
"""
