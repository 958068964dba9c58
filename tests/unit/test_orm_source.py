from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import Select

from service.core import Row, SourceError, Window
from service.sources.bridge import AsyncioBridge
from service.sources.postgres.orm import OrmSource, mapped_row_class


class FakeSession:
    """Stands in for AsyncSession: records statements, returns prepared objects."""

    def __init__(self, objects: list[Any]) -> None:
        self.objects = objects
        self.statements: list[Select[Any]] = []
        self.closed = False

    async def execute(self, statement: Select[Any]) -> list[Any]:
        self.statements.append(statement)
        return self.objects

    async def __aenter__(self) -> FakeSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.closed = True


def session_factory(session: FakeSession) -> Any:
    return lambda: session


def compiled(statement: Select[Any]) -> str:
    return " ".join(str(statement.compile(dialect=postgresql.dialect())).split())


async def test_orm_source_reads_the_mapped_columns_ordered_by_id(
    asyncio_bridge: AsyncioBridge,
) -> None:
    session = FakeSession([(11, "Test 11"), (41, None)])
    source = OrmSource("source_2", "data_2", session_factory(session), asyncio_bridge)
    assert await source.fetch(Window()) == [Row(11, "Test 11"), Row(41, None)]
    assert compiled(session.statements[0]) == (
        "SELECT data_2.id, data_2.name FROM data_2 ORDER BY data_2.id"
    )
    assert session.closed


async def test_orm_source_pushes_the_window_down(asyncio_bridge: AsyncioBridge) -> None:
    session = FakeSession([])
    source = OrmSource("source_2", "data_2", session_factory(session), asyncio_bridge)
    await source.fetch(Window(after=40, until=50, limit=7))
    assert compiled(session.statements[0]) == (
        "SELECT data_2.id, data_2.name FROM data_2 "
        "WHERE data_2.id > %(id_1)s::BIGINT AND data_2.id <= %(id_2)s::BIGINT "
        "ORDER BY data_2.id LIMIT %(param_1)s::INTEGER"
    )
    assert session.statements[0].compile().params == {"id_1": 40, "id_2": 50, "param_1": 7}


async def test_orm_source_refuses_objects_of_the_wrong_shape(
    asyncio_bridge: AsyncioBridge,
) -> None:
    session = FakeSession([("eleven", "x")])
    source = OrmSource("source_2", "data_2", session_factory(session), asyncio_bridge)
    with pytest.raises(SourceError, match=r"^SourceDataError: id must be an integer"):
        await source.fetch(Window())


def test_two_sources_may_map_the_same_table_name() -> None:
    first, second = mapped_row_class("data_1"), mapped_row_class("data_1")
    assert first is not second
    assert first.__table__ is not second.__table__  # type: ignore[attr-defined]
