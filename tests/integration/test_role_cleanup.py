"""The suite drops the cluster-wide role it created, and only that."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from tests.support import pg

pytestmark = pytest.mark.integration


def run(dsn: str, *statements: str) -> None:
    import trio_asyncio

    async def execute() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    async def main() -> None:
        await trio_asyncio.aio_as_trio(execute)()

    trio_asyncio.run(main)


def role_exists(dsn: str, role: str) -> bool:
    import trio_asyncio

    return bool(trio_asyncio.run(pg._role_exists, dsn, role))


def test_a_role_made_during_the_session_is_dropped(postgres_dsn: str) -> None:
    role = f"collector_test_role_{uuid.uuid4().hex[:8]}"
    with pg.reader_role_cleanup(postgres_dsn, role):
        run(postgres_dsn, f'CREATE ROLE "{role}"')
    assert not role_exists(postgres_dsn, role)


def test_a_role_that_existed_before_is_kept(postgres_dsn: str) -> None:
    role = f"collector_test_role_{uuid.uuid4().hex[:8]}"
    run(postgres_dsn, f'CREATE ROLE "{role}"')
    try:
        with pg.reader_role_cleanup(postgres_dsn, role):
            pass
        assert role_exists(postgres_dsn, role)
    finally:
        run(postgres_dsn, f'DROP ROLE "{role}"')


def test_a_role_another_database_still_uses_is_left_without_error(postgres_dsn: str) -> None:
    role = f"collector_test_role_{uuid.uuid4().hex[:8]}"
    database = f"collector_test_other_{uuid.uuid4().hex[:8]}"
    run(postgres_dsn, f'CREATE DATABASE "{database}"')
    try:
        with pg.reader_role_cleanup(postgres_dsn, role):
            run(
                postgres_dsn,
                f'CREATE ROLE "{role}"',
                f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"',
            )
        assert role_exists(postgres_dsn, role)
    finally:
        run(postgres_dsn, f'DROP DATABASE "{database}"', f'DROP ROLE IF EXISTS "{role}"')
