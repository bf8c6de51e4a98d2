"""server.py as a user runs it: starts on embedded defaults, serves, and leaves nothing behind when stopped."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymongo import MongoClient

from models import embedded_db
from models.database import EmbeddedMongo, free_port
from tests.helpers import alive, wait_healthy

REPO = Path(__file__).resolve().parents[1]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name may contain spaces; the ppid is the second field after its closing paren.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def database_children(pid: int, storage: Path) -> list[int]:
    """The server's embedded database launchers on `storage`."""
    return [child for child in children_of(pid) if embedded_db.is_launcher_for(child, str(storage.resolve()))]


def start_server(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINEL_")}
    return subprocess.Popen(
        [sys.executable, "server.py", "--port", str(port), "--data-dir", str(data_dir), "--workers", "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_server_starts_on_embedded_defaults_and_leaves_no_database_behind(tmp_path: Path, sig: int) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    started = time.monotonic()
    proc = start_server(data_dir, port)
    try:
        assert wait_healthy(port, proc) == {"status": "ok", "service": "enginel"}
        assert time.monotonic() - started < 60
        db_children = database_children(proc.pid, data_dir / "db")
        assert len(db_children) == 1, "the embedded database runs as the server's child"
        proc.send_signal(sig)
        # Bounded: the database child writes to its own log file, so the pipe closes when the server exits.
        output = proc.communicate(timeout=30)[0].decode()
        if sig != signal.SIGKILL:
            assert proc.returncode == 0, output
            assert f"Enginel serving on http://127.0.0.1:{port}/" in output
        deadline = time.monotonic() + 15
        while alive(db_children[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(db_children[0]), "embedded database outlived the server"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # No lock is left on the data directory and the data survived: the database opens it again.
    again = EmbeddedMongo(data_dir / "db")
    uri = again.start_blocking()
    try:
        with MongoClient(uri) as client:
            instance = client["enginel"].meta.find_one({"_id": "instance"})
        assert instance is not None and instance["instance_id"]
    finally:
        again.stop()


def test_second_start_reuses_the_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ids = []
    for _ in range(2):
        port = free_port()
        proc = start_server(data_dir, port)
        try:
            wait_healthy(port, proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        assert proc.returncode == 0
        again = EmbeddedMongo(data_dir / "db")
        with MongoClient(again.start_blocking()) as client:
            ids.append(client["enginel"].meta.find_one({"_id": "instance"})["instance_id"])  # type: ignore[index]
        again.stop()
    assert ids[0] == ids[1]


def test_help_documents_every_flag() -> None:
    from config.settings import Settings

    out = subprocess.run(
        [sys.executable, "server.py", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        assert flag in out, flag
        assert f"ENGINEL_{name.upper()}" in out
        assert field.description, f"setting {name} has no help text"


def test_readme_documents_every_setting() -> None:
    from config.settings import Settings

    readme = (REPO / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"ENGINEL_{name.upper()}" in readme, name
    assert "make run" in readme and "make test" in readme


KILL_ITERATIONS = 50 if os.environ.get("DB_STRESS", "") not in ("", "0") else 3


@pytest.mark.timeout(120 + KILL_ITERATIONS * 30)
def test_killed_server_never_leaves_its_database_behind_and_restarts_on_the_same_data(tmp_path: Path) -> None:
    """SIGKILL the server again and again; each restart opens the same directory with no manual cleanup."""
    data_dir = tmp_path / "data"
    timings = []
    last_start = 0.0
    for _ in range(KILL_ITERATIONS):
        began = time.monotonic()
        port = free_port()
        last_start = time.time()
        proc = start_server(data_dir, port)
        try:
            assert wait_healthy(port, proc) == {"status": "ok", "service": "enginel"}
            (db_child,) = database_children(proc.pid, data_dir / "db")
            proc.kill()
            proc.communicate(timeout=30)
            deadline = time.monotonic() + 15
            while alive(db_child) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not alive(db_child), "embedded database outlived the killed server"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        timings.append(time.monotonic() - began)
    print(
        f"\nkilled-server loop: {len(timings)} iterations in {sum(timings):.1f} s, "
        f"{statistics.median(timings):.2f} s median, {max(timings):.2f} s max"
    )
    again = EmbeddedMongo(data_dir / "db")
    with MongoClient(again.start_blocking(), tz_aware=True) as client:
        instances = list(client["enginel"].meta.find({"_id": "instance"}))
    again.stop()
    # One identity, created by the first start and found again by each later one.
    assert len(instances) == 1
    if KILL_ITERATIONS > 1:
        assert instances[0]["created_at"].timestamp() < last_start - 0.5
        assert instances[0]["last_started_at"].timestamp() >= last_start - 1


def test_second_server_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    first = start_server(data_dir, port)
    try:
        wait_healthy(port, first)
        (db_child,) = database_children(first.pid, data_dir / "db")
        second = start_server(data_dir, free_port())
        output = second.communicate(timeout=60)[0].decode()
        assert second.returncode == 1, output
        assert f"is in use by a running Enginel server (pid {first.pid}, database pid {db_child}" in output
        assert "Traceback" not in output
        assert wait_healthy(port, first) == {"status": "ok", "service": "enginel"}
        assert alive(db_child)
    finally:
        first.terminate()
        first.communicate(timeout=30)
    assert first.returncode == 0
