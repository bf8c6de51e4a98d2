"""Several server processes on one database: the process registry, its heartbeat and expiry, and the start-up
guard rails (one file store, one broker, compatible versions), over real server.py processes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from config import Settings
from models.cluster import (
    BROKER_NOT_SHARED,
    EXIT_REFUSED,
    FILE_STORE_MISMATCH,
    STORAGE_BACKEND_MISMATCH,
    STORE_MARKER,
    VERSION_MISMATCH,
    backend_refusal,
    check_file_store,
    compatible,
    disagreements,
    enginel_version,
    refusals,
)
from models.collections import META, PROCESSES
from models.database import connect
from server import Runtime
from tests.helpers import ROOT_PASSWORD, ServerProcess, cad, launch_server, server_env, stored_files, wait_healthy

# Short heartbeats so expiry shows within seconds; the confirmation look before a refusal waits one interval.
FAST = {
    "cluster_heartbeat_interval": "0.5",
    "cluster_heartbeat_expiry": "3",
    "rate_limit_per_minute": "100000",
    "rate_limit_per_hour": "1000000",
    "uploads_per_hour": "1000",
}


# ---------------------------------------------------------------- a small synchronous client


def call(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    raw: bytes | None = None,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    """One request; (status, parsed JSON body or None). Never raises on an HTTP error status."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if data is None and method in ("POST", "PUT", "PATCH"):
        data = b""
    request = urllib.request.Request(base + path if path.startswith("/") else path, data=data, method=method)
    request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", f"Token {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            status, payload = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    return status, json.loads(payload) if payload else None


def login(base: str) -> str:
    status, body = call(base, "POST", "/api/auth/login/", {"username": "root", "password": ROOT_PASSWORD})
    assert status == 200, body
    return str(body["access_token"])


def health(base: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
    return call(base, "GET", "/api/health/detailed/", token=token)


def sees(server: ServerProcess, count: int) -> dict[str, Any]:
    """The detailed health document once `server` lists `count` processes (its view is up to a second old)."""
    return until(
        lambda: (body := health(server.base_url)[1])["cluster"]["processes"] == count and body, 10, f"{count} processes"
    )


def until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.1)


def assert_refused_upload(status: int, body: Any, problem: str) -> None:
    assert status == 503, (status, body)
    assert set(body) >= {"error", "detail", "code", "field_errors"}, body
    assert body["code"] == "SERVICE_UNAVAILABLE"
    assert problem in body["detail"], body


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Starts server.py processes (output in tmp_path/<name>.log) and stops whatever is still running."""
    started: list[ServerProcess] = []

    def start(name: str, env: dict[str, str], *, healthy: bool = True) -> ServerProcess:
        server = launch_server(env, tmp_path / f"{name}.log")
        started.append(server)
        if healthy:
            try:
                wait_healthy(server.port, server.proc)
            except AssertionError:
                raise AssertionError(f"{name} did not start:\n{server.output()}") from None
        return server

    yield start
    for server in started:
        server.stop()


def database() -> str:
    return "c" + uuid.uuid4().hex[:12]


def prefix() -> str:
    return "c" + uuid.uuid4().hex[:8]


# ---------------------------------------------------------------- two file stores


def test_a_process_whose_files_folder_is_not_the_store_refuses_uploads_and_analysis(
    mongo_uri: str, redis_url: str, tmp_path: Path, servers: Callable[..., ServerProcess]
) -> None:
    common = dict(database=database(), redis_url=redis_url, realtime_redis_prefix=prefix(), **FAST)
    a = servers("a", server_env(mongo_uri, tmp_path / "a", **common))
    # B's data directory is its own disk, not A's: the mistake of two machines without a shared store.
    b = servers("b", server_env(mongo_uri, tmp_path / "b", workers="1", job_poll_interval="0.1", **common))
    store_id = json.loads((tmp_path / "a" / "files" / STORE_MARKER).read_text())["store_id"]

    # Before anything is uploaded: both processes' detailed health says degraded, anonymous probes see codes only.
    for server in (a, b):
        sees(server, 2)
        status, body = health(server.base_url)
        assert status == 503 and body["status"] == "degraded", body
        assert body["cluster"] == {
            "status": "degraded",
            "processes": 2,
            "with_workers": 1,
            "problems": [FILE_STORE_MISMATCH],
        }
        text = json.dumps([body["checks"], body["cluster"]])  # the whole of it but the timestamp
        assert str(b.proc.pid) not in text and socket.gethostname() not in text and "files" not in text

    token = login(b.base_url)
    status, body = health(b.base_url, token)  # platform staff see who, where and why
    assert status == 503
    cluster = body["cluster"]
    assert {p["pid"] for p in cluster["processes"]} == {a.proc.pid, b.proc.pid}
    by_pid = {p["pid"]: p for p in cluster["processes"]}
    assert by_pid[a.proc.pid]["storage"] == {
        "backend": "filesystem",
        "store_id": store_id,
        "path": str(tmp_path / "a" / "files"),
        "problem": None,
    }
    assert by_pid[b.proc.pid]["this_process"] and by_pid[b.proc.pid]["role"] == "workers"
    problem = by_pid[b.proc.pid]["storage"]["problem"]
    assert f"the files folder {tmp_path / 'b' / 'files'} has no store marker" in problem
    assert store_id in problem and "ENGINEL_STORAGE_BACKEND=gridfs" in problem
    assert [p["code"] for p in cluster["problems"]] == [FILE_STORE_MISMATCH]
    assert cluster["problems"][0]["processes"] == [by_pid[b.proc.pid]["id"]]

    status, org = call(b.base_url, "POST", "/api/organizations/", {"name": "Two", "slug": "two"}, token=token)
    assert status == 201, org
    status, series = call(
        b.base_url, "POST", "/api/series/", {"organization": org["id"], "part_number": "T-1", "name": "t"}, token=token
    )
    assert status == 201, series
    data = cad("box.step")
    wanted = {"filename": "box.step", "file_size": len(data), "content_type": "application/step"}

    # Every way of uploading through B answers 503 naming the problem, and nothing lands in B's folder.
    refused = "its files folder is not this deployment's file store"
    assert_refused_upload(*call(b.base_url, "POST", "/api/designs/upload-url/", wanted, token=token), refused)
    boundary = uuid.uuid4().hex
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="series"\r\n\r\n{series["id"]}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="box.step"\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    assert_refused_upload(
        *call(
            b.base_url,
            "POST",
            "/api/designs/",
            raw=form,
            token=token,
            content_type=f"multipart/form-data; boundary={boundary}",
        ),
        refused,
    )
    status, url = call(a.base_url, "POST", "/api/designs/upload-url/", wanted, token=token)
    assert status == 201, url
    target = url["upload_url"].replace(a.base_url, b.base_url)  # a load balancer sends the PUT to B
    assert_refused_upload(*call(b.base_url, "PUT", target, raw=data, content_type="application/octet-stream"), refused)
    assert stored_files(tmp_path / "b" / "files") == []

    # The same signed URL still works on A, which holds the store; B, with workers, leaves the job alone.
    status, put = call(a.base_url, "PUT", url["upload_url"], raw=data, content_type="application/octet-stream")
    assert status == 200, put
    status, design = call(
        a.base_url,
        "POST",
        "/api/designs/",
        {"series": series["id"], "filename": "box.step", "upload_id": url["upload_id"]},
        token=token,
    )
    assert status == 201, design
    digest = hashlib.sha256(data).hexdigest()
    status, final = call(
        a.base_url,
        "POST",
        f"/api/designs/{design['id']}/finalize_upload/",
        {"file_hash": f"sha256:{digest}"},
        token=token,
    )
    assert status == 200, final
    time.sleep(3)  # thirty of B's polls
    status, job = call(a.base_url, "GET", f"/api/analysis-jobs/{final['analysis_job_id']}/", token=token)
    assert status == 200 and job["status"] == "PENDING", job
    assert job["task_id"] is None and job["started_at"] is None, job  # never even claimed
    assert stored_files(tmp_path / "b" / "files") == []

    log = b.output()
    assert "cluster: this process refuses uploads and analysis: the files folder" in log
    assert "has no store marker" in log
    # A, the healthy one, names the newcomer's problem in its own log.
    until(lambda: "FILE_STORE_MISMATCH" in a.output(), 10, "A's warning")

    # The check runs on every heartbeat: once B's folder holds the store (here a copy of it, marker included),
    # the refusal lifts, the cluster is healthy again and B's worker analyses the waiting job.
    shutil.copytree(tmp_path / "a" / "files", tmp_path / "b" / "files", dirs_exist_ok=True)
    until(lambda: health(b.base_url)[0] == 200, 10, "B to agree")
    job = until(
        lambda: (
            (got := call(a.base_url, "GET", f"/api/analysis-jobs/{final['analysis_job_id']}/", token=token)[1])
            and got["status"] in ("SUCCESS", "FAILURE")
            and got
        ),
        60,
        "the job to finish",
    )
    assert job["status"] == "SUCCESS", job
    status, url = call(b.base_url, "POST", "/api/designs/upload-url/", wanted, token=token)
    assert status == 201, url


def test_a_process_with_another_storage_backend_refuses_uploads(
    mongo_uri: str, redis_url: str, tmp_path: Path, servers: Callable[..., ServerProcess]
) -> None:
    common = dict(database=database(), redis_url=redis_url, realtime_redis_prefix=prefix(), **FAST)
    a = servers("a", server_env(mongo_uri, tmp_path / "d", **common))
    b = servers("b", server_env(mongo_uri, tmp_path / "d", storage_backend="gridfs", **common))
    sees(b, 2)
    status, body = health(b.base_url)
    assert status == 503 and body["cluster"]["problems"] == [STORAGE_BACKEND_MISMATCH], body
    token = login(b.base_url)
    status, org = call(a.base_url, "POST", "/api/organizations/", {"name": "One", "slug": "one"}, token=token)
    assert status == 201, org
    wanted = {"filename": "box.step", "file_size": 100, "content_type": "application/step", "organization": org["id"]}
    status, refused = call(b.base_url, "POST", "/api/designs/upload-url/", wanted, token=token)
    assert_refused_upload(status, refused, "its storage backend differs from the other processes'")
    assert call(a.base_url, "POST", "/api/designs/upload-url/", wanted, token=token)[0] == 201  # A, the older
    assert "uses the gridfs storage backend but process" in b.output()


# ---------------------------------------------------------------- one broker


def test_a_second_process_without_redis_refuses_to_start(
    mongo_uri: str, redis_url: str, tmp_path: Path, servers: Callable[..., ServerProcess]
) -> None:
    name = database()
    data = tmp_path / "shared"
    a = servers("a", server_env(mongo_uri, data, database=name, **FAST))  # no Redis: its own broker

    b = servers("b", server_env(mongo_uri, data, database=name, **FAST), healthy=False)
    assert b.exit_code() == EXIT_REFUSED, b.output()
    log = b.output()
    assert "refusing to start:" in log
    assert f"on {socket.gethostname()} (pid {a.proc.pid}) uses this database with its in-process broker" in log
    assert "ENGINEL_REDIS_URL" in log and "ENGINEL_ALLOW_UNSHARED_BROKER=true" in log

    # With Redis the newcomer still does not share A's broker: refused too.
    c = servers("c", server_env(mongo_uri, data, database=name, redis_url=redis_url, **FAST), healthy=False)
    assert c.exit_code() == EXIT_REFUSED, c.output()
    assert f"(pid {a.proc.pid}) uses this database with its in-process broker" in c.output()

    # The documented override starts it anyway, and the cluster reports the disagreement.
    d = servers("d", server_env(mongo_uri, data, database=name, allow_unshared_broker="true", **FAST))
    for server in (a, d):
        sees(server, 2)
        status, body = health(server.base_url)
        assert status == 503 and body["cluster"]["problems"] == [BROKER_NOT_SHARED], body
    status, body = health(d.base_url, login(d.base_url))
    assert {p["pid"] for p in body["cluster"]["processes"]} == {a.proc.pid, d.proc.pid}  # the refused ones left
    assert "ENGINEL_REDIS_URL" in body["cluster"]["problems"][0]["detail"]


def test_a_process_on_another_redis_prefix_refuses_to_start(
    mongo_uri: str, redis_url: str, tmp_path: Path, servers: Callable[..., ServerProcess]
) -> None:
    name, data, one, two = database(), tmp_path / "shared", prefix(), prefix()
    a = servers("a", server_env(mongo_uri, data, database=name, redis_url=redis_url, realtime_redis_prefix=one, **FAST))
    env = server_env(mongo_uri, data, database=name, redis_url=redis_url, realtime_redis_prefix=two, **FAST)
    b = servers("b", env, healthy=False)
    assert b.exit_code() == EXIT_REFUSED, b.output()
    log = b.output()
    assert f"(pid {a.proc.pid}) uses this database with Redis" in log and f"with prefix {one!r}" in log
    assert f"with prefix {two!r}" in log and "ENGINEL_REALTIME_REDIS_PREFIX" in log


# ---------------------------------------------------------------- versions


def fake_version(root: Path, version: str) -> dict[str, str]:
    """PYTHONPATH under which importlib.metadata reports `version` for enginel: an installation of that version
    of the same code, as far as the registry can tell."""
    dist = root / f"v{version}" / f"enginel-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: enginel\nVersion: {version}\n")
    # PYTHONSAFEPATH: the script's folder is not put first on sys.path, where the checkout's own
    # enginel.egg-info (written by `pip install -e .`) would answer before the fake.
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(dist.parent), os.environ.get("PYTHONPATH")])),
        "PYTHONSAFEPATH": "1",
    }


def test_versions_must_share_major_and_minor(
    mongo_uri: str, redis_url: str, tmp_path: Path, servers: Callable[..., ServerProcess]
) -> None:
    current = enginel_version()
    major, minor = (int(x) for x in current.split(".")[:2])
    common = dict(database=database(), redis_url=redis_url, realtime_redis_prefix=prefix(), **FAST)
    a = servers("a", server_env(mongo_uri, tmp_path / "d", **common))

    newer = f"{major}.{minor + 1}.0"
    b = servers(
        "b", {**server_env(mongo_uri, tmp_path / "d", **common), **fake_version(tmp_path, newer)}, healthy=False
    )
    assert b.exit_code() == EXIT_REFUSED, b.output()
    assert f"(pid {a.proc.pid}) runs Enginel {current} and this process {newer}" in b.output()
    assert "same major.minor version" in b.output()

    patch = f"{major}.{minor}.99"
    c = servers("c", {**server_env(mongo_uri, tmp_path / "d", **common), **fake_version(tmp_path, patch)})
    sees(c, 2)
    status, body = health(c.base_url, login(c.base_url))
    assert status == 200, body
    assert {p["pid"]: p["version"] for p in body["cluster"]["processes"]} == {a.proc.pid: current, c.proc.pid: patch}


# ---------------------------------------------------------------- a correct pair, and processes that die


def test_a_correct_pair_is_listed_and_dead_processes_drop_out(
    mongo_uri: str, redis_url: str, tmp_path: Path, servers: Callable[..., ServerProcess]
) -> None:
    common = dict(database=database(), redis_url=redis_url, realtime_redis_prefix=prefix(), **FAST)
    a = servers("a", server_env(mongo_uri, tmp_path / "d", workers="1", **common))
    b = servers("b", server_env(mongo_uri, tmp_path / "d", **common))
    expiry = float(FAST["cluster_heartbeat_expiry"])

    sees(a, 2)
    status, body = health(a.base_url)
    assert status == 200 and body["status"] == "healthy", body
    assert body["cluster"] == {"status": "ok", "processes": 2, "with_workers": 1, "problems": []}
    token = login(a.base_url)
    status, body = health(b.base_url, token)
    assert status == 200, body
    listed = {p["pid"]: p for p in body["cluster"]["processes"]}
    assert set(listed) == {a.proc.pid, b.proc.pid}
    assert listed[a.proc.pid]["role"] == "workers" and listed[b.proc.pid]["role"] == "web"
    assert listed[a.proc.pid]["workers"] == 1 and listed[b.proc.pid]["this_process"]
    for entry in listed.values():
        assert entry["host"] == socket.gethostname() and entry["version"] == enginel_version()
        assert entry["last_heartbeat"].endswith("Z") and entry["broker"]["kind"] == "redis"
    assert body["cluster"]["problems"] == []

    def pids() -> set[int]:
        return {p["pid"] for p in health(a.base_url, token)[1]["cluster"]["processes"]}

    # A hung process (SIGSTOP: alive, silent) drops out when its entry expires, and comes back when it resumes.
    b.proc.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    until(lambda: pids() == {a.proc.pid}, expiry + 5, "the stopped process to drop out")
    assert time.monotonic() - stopped <= expiry + 2
    b.proc.send_signal(signal.SIGCONT)
    until(lambda: pids() == {a.proc.pid, b.proc.pid}, 10, "the resumed process to register again")
    assert "registered again" in b.output()

    # A killed one drops out within its expiry too (sooner: A sees that the pid on its machine is gone).
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(10)
    killed = time.monotonic()
    until(lambda: pids() == {a.proc.pid}, expiry + 5, "the killed process to drop out")
    assert time.monotonic() - killed <= expiry
    assert health(a.base_url)[1]["cluster"] == {"status": "ok", "processes": 1, "with_workers": 1, "problems": []}


def test_a_stopped_process_removes_its_entry(
    mongo_uri: str, redis_url: str, tmp_path: Path, servers: Callable[..., ServerProcess]
) -> None:
    common = dict(database=database(), redis_url=redis_url, realtime_redis_prefix=prefix(), **FAST)
    a = servers("a", server_env(mongo_uri, tmp_path / "d", **common))
    b = servers("b", server_env(mongo_uri, tmp_path / "d", log_level="INFO", **common))
    token = login(a.base_url)
    sees(a, 2)
    ident = next(p["id"] for p in health(a.base_url, token)[1]["cluster"]["processes"] if p["pid"] == b.proc.pid)
    b.proc.terminate()
    assert b.proc.wait(30) == 0
    assert f"cluster: process {ident} left" in b.output()
    until(
        lambda: [p["pid"] for p in health(a.base_url, token)[1]["cluster"]["processes"]] == [a.proc.pid],
        2,  # A's view of the registry is up to a second old
        "the stopped process to drop out",
    )


# ---------------------------------------------------------------- in one process


@pytest.mark.gen_test(timeout=60)
async def test_registration_marker_and_removal(settings: Settings) -> None:
    runtime = Runtime(settings)
    services = await runtime.start()
    try:
        assert services.cluster is not None
        entry = await services.db[PROCESSES].find_one({"_id": services.cluster.id})
        assert entry is not None
        assert (entry["host"], entry["pid"], entry["version"]) == (socket.gethostname(), os.getpid(), enginel_version())
        assert entry["workers"] == 0 and entry["broker"] == {"kind": "in-process"}
        assert entry["heartbeat_at"] < entry["expires_at"]
        # First use: the files folder got a marker, and the database recorded it as the deployment's store.
        marker = json.loads((settings.files_dir / STORE_MARKER).read_text())["store_id"]
        record = await services.db[META].find_one({"_id": "file_store"})
        assert record is not None and record["store_id"] == marker == entry["storage"]["store_id"]
        assert entry["storage"]["problem"] is None and services.storage.refusal is None
    finally:
        await runtime.stop()
    assert await _entries(settings) == []


async def _entries(settings: Settings) -> list[dict[str, Any]]:
    client = connect(settings.mongodb_uri or "")
    try:
        return await client[settings.mongodb_database][PROCESSES].find().to_list()
    finally:
        await client.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_folder_marked_as_another_store_is_refused(mongo_uri: str, tmp_path: Path) -> None:
    client = connect(mongo_uri)
    try:
        await _check_folders(client[database()], tmp_path)
    finally:
        await client.close()


async def _check_folders(db: Any, tmp_path: Path) -> None:
    first, other, empty = tmp_path / "first", tmp_path / "other", tmp_path / "empty"
    assert (await check_file_store(db, first, "h1")).problem is None
    again = await check_file_store(db, first, "h1")
    assert again.problem is None and again.store_id is not None
    other.mkdir()
    (other / STORE_MARKER).write_text(json.dumps({"store_id": "somewhere-else"}))
    problem = (await check_file_store(db, other, "h2")).problem
    assert problem is not None and f"{other} is store somewhere-else" in problem and again.store_id in problem
    problem = (await check_file_store(db, empty, "h3")).problem
    assert problem is not None and "has no store marker" in problem
    assert not (empty / STORE_MARKER).exists()  # a folder that is not the store is never marked as it
    (other / STORE_MARKER).write_text("not json")
    problem = (await check_file_store(db, other, "h2")).problem
    assert problem is not None and "cannot be read" in problem


def registry_entry(
    ident: str, started: int, *, version: str = "1.2.0", redis: str | None = "r1", **storage: Any
) -> dict[str, Any]:
    """A registry entry as a process would write it, for the pure agreement rules."""
    return {
        "_id": ident,
        "host": "h",
        "pid": started,
        "started_at": datetime(2026, 1, 1, 0, 0, started, tzinfo=UTC),
        "version": version,
        "workers": 0,
        "storage": {"backend": "filesystem", "problem": None, **storage},
        "broker": {"kind": "redis", "redis_id": redis, "prefix": "p", "address": "x:1/0"}
        if redis
        else {"kind": "in-process"},
    }


def test_agreement_rules() -> None:
    assert compatible("1.2.0", "1.2.7") and not compatible("1.2.0", "1.3.0") and not compatible("1.2.0", "2.2.0")
    a, b = registry_entry("a", 1), registry_entry("b", 2)
    assert disagreements([a, b]) == [] and refusals(b, [a, b], allow_unshared_broker=False) == []
    # Two in-process brokers never agree: each process keeps its events to itself.
    lone_a, lone_b = registry_entry("a", 1, redis=None), registry_entry("b", 2, redis=None)
    assert [p.code for p in disagreements([lone_a, lone_b])] == [BROKER_NOT_SHARED]
    assert refusals(lone_b, [lone_a, lone_b], allow_unshared_broker=False)
    assert refusals(lone_a, [lone_a, lone_b], allow_unshared_broker=False) == []  # the older one stays up
    assert refusals(lone_b, [lone_a, lone_b], allow_unshared_broker=True) == []
    other_redis = registry_entry("b", 2, redis="r2")
    assert [p.code for p in disagreements([a, other_redis])] == [BROKER_NOT_SHARED]
    newer = registry_entry("b", 2, version="1.3.0")
    assert [p.code for p in disagreements([a, newer])] == [VERSION_MISMATCH]
    assert "same major.minor" in refusals(newer, [a, newer], allow_unshared_broker=True)[0]
    gridfs = registry_entry("b", 2, backend="gridfs")
    assert [p.code for p in disagreements([a, gridfs])] == [STORAGE_BACKEND_MISMATCH]
    assert backend_refusal(gridfs, [a, gridfs]) and backend_refusal(a, [a, gridfs]) is None  # the newcomer gives way


def test_expiry_must_outlast_two_heartbeats() -> None:
    with pytest.raises(ValidationError, match="at least twice"):
        Settings(cluster_heartbeat_interval=5, cluster_heartbeat_expiry=9)
