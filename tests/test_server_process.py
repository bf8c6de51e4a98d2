"""server.py as a user runs it: starts on embedded defaults, serves, and leaves nothing behind when stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymongo import MongoClient

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
        db_children = [
            pid for pid in children_of(proc.pid) if b"secantusd" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(db_children) == 1, "the embedded database runs as the server's child"
        proc.send_signal(sig)
        proc.wait(30)
        output = proc.stdout.read().decode() if proc.stdout else ""
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
