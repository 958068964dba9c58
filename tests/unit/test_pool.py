"""The connection budget's decisions, with fake connections and a hand-driven clock.

The pool lives on the asyncio side (the drivers' loop), so these tests run their
scenarios with ``asyncio.run``; time is a number the test moves, never a sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from service.sources.pool import (
    HANDOFF_PATIENCE,
    Budgets,
    Connect,
    ConnectionWaitTimeout,
    DatabasePool,
    ServerBudget,
)

T = TypeVar("T")


class FakeConnection:
    def __init__(self, database: str, number: int) -> None:
        self.database = database
        self.number = number
        self.closed = False

    def is_closed(self) -> bool:
        return self.closed

    def is_reusable(self) -> bool:
        return not self.closed

    def terminate(self) -> None:
        self.closed = True

    async def close_for_good(self) -> None:
        self.closed = True

    async def settle(self) -> None:
        await asyncio.sleep(0)


class Server:
    """Counts what a real server would see: connections opened and open at once."""

    def __init__(self) -> None:
        self.opened: list[FakeConnection] = []
        self.peak = 0
        self.fail_next = False

    def open_now(self) -> int:
        return sum(not c.closed for c in self.opened)

    def pool(
        self, budget: ServerBudget, database: str, cap: int = 10
    ) -> DatabasePool[FakeConnection]:
        """A pool for ``database`` on ``budget`` whose connections this server opens."""
        return budget.pool(database, cap, self.connector(database))

    def connector(self, database: str) -> Connect[FakeConnection]:
        async def connect(_pool: DatabasePool[FakeConnection]) -> FakeConnection:
            await asyncio.sleep(0)  # a real connect yields to the loop
            if self.fail_next:
                self.fail_next = False
                raise OSError("connection refused")
            connection = FakeConnection(database, len(self.opened))
            self.opened.append(connection)
            self.peak = max(self.peak, self.open_now())
            return connection

        return connect


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(scenario())  # type: ignore[arg-type]


def budget_with(limit: int, clock: Clock | None = None) -> ServerBudget:
    return ServerBudget("db.example:5432", limit, idle_timeout=60.0, clock=clock or Clock())


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def fetch_once(pool: DatabasePool[FakeConnection], served: list[str]) -> None:
    """Borrow a connection, note which database got it, give it back."""
    connection = await pool.acquire(timeout=10)
    served.append(pool.name)
    await settle()
    await pool.release(connection)


def test_a_burst_over_many_databases_never_opens_more_than_the_budget() -> None:
    server = Server()
    budget = budget_with(3)
    pools = [server.pool(budget, f"db{i}") for i in range(4)]

    async def one(pool: DatabasePool[FakeConnection]) -> None:
        async with pool.acquire(timeout=5) as connection:
            assert connection.database == pool.name
            await asyncio.sleep(0)

    async def scenario() -> None:
        await asyncio.gather(*(one(pools[i % 4]) for i in range(40)))
        await settle()

    run(scenario)
    assert server.peak == 3
    assert budget.usage().open <= 3


def test_a_waiter_times_out_saying_it_waited_for_a_connection() -> None:
    server = Server()
    budget = budget_with(1)
    pool = server.pool(budget, "db")

    async def scenario() -> str:
        held = await pool.acquire(timeout=1)
        try:
            await pool.acquire(timeout=0.01)
        except ConnectionWaitTimeout as exc:
            return str(exc)
        finally:
            await pool.release(held)
        raise AssertionError("the second checkout should have waited and timed out")

    message = run(scenario)
    assert message.startswith("waited 0.01 s for a connection to db.example:5432")
    assert "(1 of 1 in use" in message
    assert budget.usage().waiting == 0  # the waiter that gave up left the queue


def test_a_returned_connection_goes_to_a_waiter_of_its_own_database() -> None:
    server = Server()
    budget = budget_with(1)
    pool = server.pool(budget, "db")

    async def scenario() -> None:
        first = await pool.acquire(timeout=1)
        waiting = asyncio.ensure_future(pool.acquire(timeout=1))
        await settle()
        await pool.release(first)
        assert await waiting is first  # handed over warm, not reopened

    run(scenario)
    assert len(server.opened) == 1


def test_a_busy_database_cannot_keep_a_waiting_one_out_past_the_patience() -> None:
    clock = Clock()
    server = Server()
    budget = budget_with(1, clock)
    busy = server.pool(budget, "busy")
    quiet = server.pool(budget, "quiet")
    served: list[str] = []

    async def scenario() -> None:
        held = await busy.acquire(timeout=1)
        quiet_task = asyncio.ensure_future(fetch_once(quiet, served))  # waits first
        await settle()
        busy_tasks = [asyncio.ensure_future(fetch_once(busy, served)) for _ in range(5)]
        await settle()
        clock.now += HANDOFF_PATIENCE  # the quiet database has waited its patience
        await busy.release(held)
        await asyncio.gather(quiet_task, *busy_tasks)

    run(scenario)
    assert served[0] == "quiet"  # ahead of the five busy waiters that came later
    assert server.peak == 1


def test_within_the_patience_a_connection_stays_with_its_database() -> None:
    clock = Clock()
    server = Server()
    budget = budget_with(1, clock)
    busy = server.pool(budget, "busy")
    quiet = server.pool(budget, "quiet")
    served: list[str] = []

    async def scenario() -> None:
        held = await busy.acquire(timeout=1)
        quiet_task = asyncio.ensure_future(fetch_once(quiet, served))
        await settle()
        busy_task = asyncio.ensure_future(fetch_once(busy, served))
        await settle()
        await busy.release(held)  # no time has passed: the cheap handoff wins
        await asyncio.gather(quiet_task, busy_task)

    run(scenario)
    assert served == ["busy", "quiet"]
    assert [c.database for c in server.opened] == ["busy", "quiet"]


def test_a_connection_never_moves_to_a_database_that_holds_more() -> None:
    # As many databases as connections: moving one to a database that wants a
    # second would reopen a session per fetch; each keeps its own instead.
    clock = Clock()
    server = Server()
    budget = budget_with(2, clock)
    first = server.pool(budget, "first")
    second = server.pool(budget, "second")
    served: list[str] = []

    async def scenario() -> None:
        a = await first.acquire(timeout=1)
        b = await second.acquire(timeout=1)
        wants_a_second = asyncio.ensure_future(fetch_once(second, served))  # the oldest waiter
        await settle()
        own = asyncio.ensure_future(fetch_once(first, served))
        await settle()
        clock.now += 10 * HANDOFF_PATIENCE
        await first.release(a)  # "second" still holds b: a stays with "first"
        await settle()
        await second.release(b)
        await asyncio.gather(wants_a_second, own)

    run(scenario)
    assert served == ["first", "second"]
    assert len(server.opened) == 2  # no session was reopened


@pytest.mark.parametrize(
    ("limit", "pool_size", "databases"),
    [(4, 10, 2), (10, 2, 1)],
    ids=["an equal share of the budget", "its pool_size"],
)
def test_a_database_holds_no_more_than_its_cap(limit: int, pool_size: int, databases: int) -> None:
    # Two databases on a budget of 4: one busy database gets 2, not all 4, so the
    # other's first fetches never need a connection moved (a new session each).
    server = Server()
    budget = budget_with(limit)
    busy = server.pool(budget, "busy", pool_size)
    for k in range(databases - 1):
        server.pool(budget, f"quiet_{k}", pool_size)

    async def scenario() -> None:
        held = [await busy.acquire(timeout=1), await busy.acquire(timeout=1)]
        with pytest.raises(ConnectionWaitTimeout):
            await busy.acquire(timeout=0.01)
        for connection in held:
            await busy.release(connection)

    run(scenario)
    assert len(server.opened) == 2


def test_an_idle_connection_of_another_database_makes_room() -> None:
    clock = Clock()
    server = Server()
    budget = budget_with(2, clock)
    first = server.pool(budget, "first")
    second = server.pool(budget, "second")
    other = server.pool(budget, "other")

    async def scenario() -> None:
        a = await first.acquire(timeout=1)
        b = await second.acquire(timeout=1)
        await first.release(a)
        clock.now += 1
        await second.release(b)  # the most recently used idle connection
        c = await other.acquire(timeout=1)
        assert c.database == "other"
        await settle()
        assert b.closed  # the newest idle one made room
        assert not a.closed
        await other.release(c)

    run(scenario)
    assert server.peak == 2


def test_a_broken_connection_frees_its_place_for_a_waiter() -> None:
    server = Server()
    budget = budget_with(1)
    first = server.pool(budget, "first")
    second = server.pool(budget, "second")

    async def scenario() -> None:
        held = await first.acquire(timeout=1)
        waiting = asyncio.ensure_future(second.acquire(timeout=1))
        await settle()
        held.terminate()  # the server ended it
        await first.release(held)
        assert (await waiting).database == "second"

    run(scenario)
    assert server.peak == 1


def test_a_failed_connect_frees_its_place() -> None:
    server = Server()
    budget = budget_with(1)
    pool = server.pool(budget, "db")

    async def scenario() -> None:
        server.fail_next = True
        with pytest.raises(OSError, match="refused"):
            await pool.acquire(timeout=1)
        connection = await pool.acquire(timeout=0.01)  # the place was given back
        await pool.release(connection)

    run(scenario)
    assert budget.usage().open == 1


def test_a_grant_to_a_caller_that_gave_up_passes_to_the_next() -> None:
    server = Server()
    budget = budget_with(1)
    pool = server.pool(budget, "db")

    async def scenario() -> None:
        held = await pool.acquire(timeout=1)
        leaving = asyncio.ensure_future(pool.acquire(timeout=1))
        staying = asyncio.ensure_future(pool.acquire(timeout=1))
        await settle()
        await pool.release(held)  # handed to ``leaving`` ...
        leaving.cancel()  # ... which is cancelled before it runs again
        try:
            # Python 3.11's wait_for returns a result that arrived with the cancel.
            await pool.release(await leaving)
        except asyncio.CancelledError:
            pass
        assert await staying is held
        assert budget.usage().in_use == 1

    run(scenario)


def test_idle_connections_close_after_the_idle_timeout() -> None:
    clock = Clock()
    server = Server()
    budget = budget_with(4, clock)
    pool = server.pool(budget, "db")

    async def scenario() -> None:
        connections = [await pool.acquire(timeout=1) for _ in range(3)]
        for connection in connections:
            await pool.release(connection)
        clock.now += budget.idle_timeout + 1
        budget._reap()
        await settle()
        await budget.close()

    run(scenario)
    assert server.open_now() == 0
    assert budget.usage().open == 0


def test_sources_on_one_database_share_its_pool() -> None:
    server = Server()
    budgets = Budgets(limit=8, idle_timeout=60.0)
    one = budgets.pool("db.example:5432", ("pg", "dsn-a"), 2, server.connector("a"))
    same = budgets.pool("db.example:5432", ("pg", "dsn-a"), 5, server.connector("a"))
    other = budgets.pool("db.example:5432", ("pg", "dsn-b"), 2, server.connector("b"))
    assert one is same
    assert one.cap == 5
    assert other is not one
    assert [u.server for u in budgets.usage()] == ["db.example:5432"]
