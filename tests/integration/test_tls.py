"""TLS to a PostgreSQL that accepts nothing else, through raw and ORM sources alike."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.config import Access, SourceConfig
from service.core import Status
from service.sources.bridge import AsyncioBridge
from tests.support import tls
from tests.support.collecting import collector_for

pytestmark = pytest.mark.integration

ROW_IDS = [i for i, _ in tls.ROWS]


@pytest.fixture(scope="module")
def tls_server() -> Iterator[tls.TlsServer]:
    bin_dir = tls.postgres_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb) on this machine")
    with tls.tls_only_server(bin_dir) as server:
        yield server


def both_modes(dsn: str) -> tuple[SourceConfig, SourceConfig]:
    return (
        SourceConfig("raw", dsn, tls.TABLE, Access.RAW),
        SourceConfig("orm", dsn, tls.TABLE, Access.ORM),
    )


async def statuses_and_ids(bridge: AsyncioBridge, dsn: str) -> tuple[dict[str, Status], list[int]]:
    async with collector_for(bridge, both_modes(dsn)) as collector:
        collection = await collector.collect()
    return {o.source: o.status for o in collection.outcomes}, [r.id for r in collection.rows]


@pytest.mark.parametrize(
    ("host", "parameters", "accepted"),
    [
        ("localhost", {"sslmode": "require"}, True),
        ("127.0.0.1", {"sslmode": "require"}, True),
        ("localhost", {"sslmode": "verify-ca", "sslrootcert": "CA"}, True),
        ("localhost", {"sslmode": "verify-full", "sslrootcert": "CA"}, True),
        ("127.0.0.1", {"sslmode": "verify-full", "sslrootcert": "CA"}, False),  # name not in cert
        ("localhost", {"sslmode": "verify-ca"}, False),  # no CA given: the cert cannot be trusted
        ("localhost", {"sslmode": "disable"}, False),  # the server refuses plain connections
    ],
    ids=[
        "require",
        "require-by-address",
        "verify-ca",
        "verify-full",
        "verify-full-wrong-name",
        "verify-ca-unknown-ca",
        "disable",
    ],
)
async def test_both_modes_read_over_tls_or_report_a_refused_connection_as_missing(
    asyncio_bridge: AsyncioBridge,
    tls_server: tls.TlsServer,
    host: str,
    parameters: dict[str, str],
    accepted: bool,
) -> None:
    parameters = {k: str(tls_server.ca_file) if v == "CA" else v for k, v in parameters.items()}
    statuses, ids = await statuses_and_ids(asyncio_bridge, tls_server.dsn(host, **parameters))
    status = Status.OK if accepted else Status.ERROR
    assert statuses == {"raw": status, "orm": status}
    assert ids == (sorted(ROW_IDS * 2) if accepted else [])  # both sources read one table
