"""Shared fixtures and the corpus tier: one real SecantusDB and one real redis-server per session, a fresh database
per test, the generated CAD files, and the skip (and its summary) of tests that need the real-world corpus."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config import Settings
from handlers.base import Services
from models.database import Db, EmbeddedMongo, free_port
from server import Runtime, make_app
from tests import cad_fixtures, corpus
from tests.helpers import Api, Recorder, World


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{corpus.MARKER}: needs the real-world CAD corpus ({corpus.ENV} or ../shared/cad-samples)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if corpus.available():
        return
    skip = pytest.mark.skip(reason=corpus.skip_reason())
    for item in items:
        if item.get_closest_marker(corpus.MARKER) is not None:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """One line on the corpus tier: how many of its tests ran, or were skipped and why."""
    outcomes: dict[str, str] = {}
    for key in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(key, []):
            if corpus.MARKER in getattr(report, "keywords", {}):
                outcomes.setdefault(report.nodeid, key)
    if not outcomes:
        return
    counts = {key: sum(1 for v in outcomes.values() if v == key) for key in ("passed", "failed", "error", "skipped")}
    if counts["skipped"] == len(outcomes):
        line = f"corpus tier: {counts['skipped']} tests skipped ({corpus.skip_reason()})"
    else:
        ran = ", ".join(f"{n} {key}" for key, n in counts.items() if n)
        line = f"corpus tier: {len(outcomes)} tests against {corpus.folder()} ({ran})"
    terminalreporter.write_sep("-", "corpus tier")
    terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def cad_files() -> cad_fixtures.CadFiles:
    """The generated CAD files (built once per generator version, cached under the system's temp folder)."""
    return cad_fixtures.files()


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    embedded = EmbeddedMongo(":memory:")
    # Blocking, not asyncio.run(): that would unset the event loop pytest-tornado's io_loop installed.
    uri = embedded.start_blocking()
    yield uri
    embedded.stop()


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.exit(
            "redis-server is not installed: run `make test`, which installs it, or `apt-get install redis-server`",
            returncode=3,
        )
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
    )
    _wait_for_port(port, proc)
    return proc, f"redis://127.0.0.1:{port}/0"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a module or test to change the server's settings."""
    return {}


@pytest.fixture
def settings(mongo_uri: str, tmp_path: Path, settings_overrides: dict[str, Any]) -> Settings:
    values: dict[str, Any] = dict(
        mongodb_uri=mongo_uri,
        mongodb_database="t" + uuid.uuid4().hex[:16],
        argon2_time_cost=1,
        argon2_memory_kib=64,
        cookie_secure=False,
        data_dir=tmp_path / "data",
        workers=0,
        redis_url=None,
        log_level="WARNING",
    )
    values.update(settings_overrides)
    return Settings(**values)


@pytest.fixture
def recorder() -> Recorder:
    """Every event the models publish in this test; it sits in front of the gateway (see `services`)."""
    return Recorder()


@pytest.fixture
def services(io_loop: Any, settings: Settings, recorder: Recorder) -> Iterator[Services]:
    runtime = Runtime(settings, observe=recorder.wrap)
    svc = io_loop.run_sync(runtime.start, timeout=60)
    yield svc

    async def teardown() -> None:
        await svc.mongo.drop_database(settings.mongodb_database)
        await runtime.stop()

    io_loop.run_sync(teardown, timeout=60)


@pytest.fixture
def app(services: Services) -> Any:
    return make_app(services)


@pytest.fixture
def api(http_server: Any, http_client: Any, base_url: str) -> Api:
    return Api(http_client, base_url)


@pytest.fixture
def db(services: Services) -> Db:
    return services.db


@pytest.fixture
def world(services: Services, api: Api) -> World:
    return World(services, api)
