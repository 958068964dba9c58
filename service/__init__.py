"""collector: every row from all sources, sorted by id, within a deadline.

Layout::

    web.py        HTTP layer (Quart-Trio): routes, headers, problem documents
    core.py       fan-out and merge: the Source protocol, deadlines, outcomes
    sources/      Source implementations (raw SQL, ORM) and the asyncio bridge
    config.py     the TOML config file and its validation
    server.py     wiring: asyncio loop, sources, Hypercorn
    dbinit.py     schema.sql / seed.sql applied to each source
    embedded.py   the zero-config PostgreSQL server
    cli.py        the ``collector`` command
"""
