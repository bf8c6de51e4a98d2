"""The tests' toolkit: an HTTP client, users and teams, uploads and READY designs, job waits, the event recorder,
and real server processes; test modules import from here, never from each other."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from models.cluster import STORE_MARKER
from models.database import free_port, utcnow
from models.events import Publisher
from tests import cad_fixtures

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Response:
    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class Api:
    """Sends requests to the live test server and never raises on HTTP errors, so tests assert statuses."""

    def __init__(self, client: AsyncHTTPClient, base_url: str, token: str | None = None) -> None:
        self.client = client
        self.base_url = base_url
        self.token = token

    def as_token(self, token: str | None) -> Api:
        return Api(self.client, self.base_url, token)

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Response:
        hdrs = dict(headers or {})
        if self.token and "Authorization" not in hdrs:
            hdrs["Authorization"] = f"Token {self.token}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if data is None and method in ("POST", "PUT", "PATCH"):
            data = b""
        url = path if path.startswith("http") else self.base_url + path
        resp: HTTPResponse = await self.client.fetch(
            url,
            method=method,
            body=data,
            headers=hdrs,
            raise_error=False,
            allow_nonstandard_methods=True,
            request_timeout=60,
            **kwargs,
        )
        return Response(resp.code, resp.headers, resp.body or b"")

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("POST", path, body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("PUT", path, body, **kw)

    async def patch(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("PATCH", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> Response:
        return await self.request("DELETE", path, **kw)


def assert_envelope(resp: Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, (resp.status, resp.body)
    body = resp.json
    assert set(body) >= {"error", "detail", "code", "field_errors"}, body
    assert body["code"] == code, body
    assert resp.headers.get("Content-Type", "").startswith("application/json")
    return body


PASSWORD = "correct-horse-battery"


@dataclass(eq=False)
class Caller:
    """A user with a live session token and a client that sends it."""

    user: dict[str, Any]
    token: str
    api: Api

    @property
    def id(self) -> int:
        return int(self.user["_id"])


class World:
    """Builds users and organizations straight through the models, then talks to the server over HTTP."""

    def __init__(self, services: Any, api: Api) -> None:
        self.services = services
        self.api = api
        self._staff: Any = None

    async def user(self, username: str, *, password: str = PASSWORD, **attrs: Any) -> Caller:
        user = await self.services.identity.create_user(
            username=username, password=password, email=attrs.pop("email", f"{username}@example.com"), **attrs
        )
        tokens = await self.services.identity.open_session(user, device="pytest", ip="127.0.0.1")
        return Caller(user, tokens["access_token"], self.api.as_token(tokens["access_token"]))

    async def staff_principal(self) -> Any:
        if self._staff is None:
            admin = await self.services.identity.create_user(
                username="platform-admin",
                password=PASSWORD,
                is_staff=True,
                is_us_person=True,
                security_clearance_level="TOP_SECRET",
            )
            self._staff = await self.services.identity.principal_for(admin["_id"])
        return self._staff

    async def org(
        self, slug: str, *, members: dict[Caller, str] | None = None, is_us: bool = False, **attrs: Any
    ) -> dict[str, Any]:
        """An organization with exactly `members` (caller: role), created by platform staff."""
        from models import audit
        from models.organizations import MemberIn, OrganizationIn
        from models.policy import Role

        staff = await self.staff_principal()
        org = await self.services.orgs.create(
            staff, OrganizationIn(name=slug.title(), slug=slug, is_us_organization=is_us, **attrs), audit.Actor.system()
        )
        for caller, role in (members or {}).items():
            await self.services.orgs.add_member(
                staff, org["_id"], MemberIn(user_id=caller.id, role=Role(role)), audit.Actor.system()
            )
        # The staff creator is its first OWNER; leave it so tests see only the members they asked for.
        await self.services.db.memberships.delete_one({"organization_id": org["_id"], "user_id": staff.id})
        return org


# ---------------------------------------------------------------- teams


async def team(world: World, *, us_org: bool = True) -> tuple[dict[str, Any], dict[str, Caller], str]:
    """Organization "acme" with an owner, an admin, a member, a foreign (non-US) member and a viewer, and one
    series; returns (organization, people by role name, series id)."""
    people = {
        "owner": await world.user("owner", is_us_person=True, security_clearance_level="TOP_SECRET"),
        "admin": await world.user("admin", is_us_person=True, security_clearance_level="SECRET"),
        "member": await world.user("member", is_us_person=True, security_clearance_level="SECRET"),
        "foreign": await world.user("foreign", is_us_person=False, security_clearance_level="SECRET"),
        "viewer": await world.user("viewer", is_us_person=True),
    }
    roles = {"owner": "OWNER", "admin": "ADMIN", "member": "MEMBER", "foreign": "MEMBER", "viewer": "VIEWER"}
    org = await world.org("acme", is_us=us_org, members={people[k]: r for k, r in roles.items()})
    series = await people["member"].api.post(
        "/api/series/", {"organization": org["_id"], "part_number": "TB-001", "name": "Turbine blade"}
    )
    assert series.status == 201, series.body
    return org, people, series.json["id"]


REVIEW_PEOPLE = {  # name: (role, is_us_person, clearance)
    "owner": ("OWNER", True, "TOP_SECRET"),
    "admin": ("ADMIN", True, "SECRET"),
    "author": ("MEMBER", True, "SECRET"),
    "r1": ("MEMBER", True, "SECRET"),
    "r2": ("MEMBER", True, "SECRET"),
    "r3": ("VIEWER", True, "SECRET"),
    "member": ("MEMBER", True, "SECRET"),
    "viewer": ("VIEWER", True, "SECRET"),
    "foreign": ("MEMBER", False, "TOP_SECRET"),
    "low": ("MEMBER", True, "UNCLASSIFIED"),
}


async def review_team(world: World, **org_attrs: Any) -> tuple[dict[str, Any], dict[str, Caller], str]:
    """A US organization with a design author, three reviewers (one a VIEWER), people who may not review, and an
    outsider in another organization; returns (organization, people by name, series id)."""
    people = {
        name: await world.user(name, is_us_person=us, security_clearance_level=level)
        for name, (_, us, level) in REVIEW_PEOPLE.items()
    }
    members = {people[n]: REVIEW_PEOPLE[n][0] for n in REVIEW_PEOPLE}
    org = await world.org("acme", is_us=True, members=members, **org_attrs)
    people["outsider"] = await world.user("outsider", is_us_person=True, security_clearance_level="TOP_SECRET")
    await world.org("globex", is_us=True, members={people["outsider"]: "OWNER"})
    series = await people["author"].api.post(
        "/api/series/", {"organization": org["_id"], "part_number": "TB-001", "name": "Turbine blade"}
    )
    assert series.status == 201, series.body
    return org, people, series.json["id"]


# ---------------------------------------------------------------- designs


def cad(name: str) -> bytes:
    """The bytes of one generated CAD file (tests/cad_fixtures.FILES)."""
    return cad_fixtures.files().read(name)


async def put_bytes(api: Api, url: str, data: bytes, headers: dict[str, str] | None = None) -> Response:
    return await api.request(
        "PUT", url, raw=data, headers={"Content-Type": "application/octet-stream", **(headers or {})}
    )


async def upload(caller: Caller, series_id: str, filename: str, data: bytes, **fields: Any) -> dict[str, Any]:
    """The four-step upload (signed URL, PUT, create, finalize); the design as created, with the finalize
    answer under "finalize"."""
    url = await caller.api.post(
        "/api/designs/upload-url/", {"filename": filename, "file_size": len(data), "content_type": "application/step"}
    )
    assert url.status == 201, url.body
    put = await put_bytes(caller.api, url.json["upload_url"], data)
    assert put.status == 200, put.body
    created = await caller.api.post(
        "/api/designs/", {"series": series_id, "filename": filename, "upload_id": url.json["upload_id"], **fields}
    )
    assert created.status == 201, created.body
    assert created.json["status"] == "UPLOADING"
    digest = hashlib.sha256(data).hexdigest()
    final = await caller.api.post(
        f"/api/designs/{created.json['id']}/finalize_upload/", {"file_hash": f"sha256:{digest}"}
    )
    assert final.status == 200, final.body
    return {**created.json, "finalize": final.json}


def stored_files(files: Path) -> list[Path]:
    """Every file under a filesystem store's folder (content and uploads in progress) but its store marker."""
    return [p for p in files.rglob("*") if p.is_file() and p.name != STORE_MARKER] if files.exists() else []


def multipart(fields: dict[str, str], filename: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with `fields` and one file part named "file"; returns (body, content type)."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def ready_design(
    db: Any,
    author: Caller,
    series_id: str,
    classification: str = "UNCLASSIFIED",
    *,
    filename: str = "plate.igs",
) -> dict[str, Any]:
    """A design through the real upload flow, then READY as analysis would leave it (tests run no workers unless
    they ask); the stored document."""
    design = await upload(author, series_id, filename, cad(filename), classification=classification)
    await db.designs.update_one({"_id": design["id"]}, {"$set": {"status": "READY"}})
    return await db.designs.find_one({"_id": design["id"]})  # type: ignore[no-any-return]


def due(days: float = 7) -> str:
    return (utcnow() + timedelta(days=days)).isoformat().replace("+00:00", "Z")


async def open_review(creator: Caller, design_id: str, reviewers: list[Caller], **extra: Any) -> dict[str, Any]:
    """A review session on a READY design, due in a week; the rendered session."""
    resp = await creator.api.post(
        "/api/reviews/",
        {
            "design_asset": design_id,
            "reviewers": [r.id for r in reviewers],
            "due_date": due(),
            "notes": "Pre-production review",
            **extra,
        },
    )
    assert resp.status == 201, resp.body
    return resp.json  # type: ignore[no-any-return]


# ---------------------------------------------------------------- models


def read_glb(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The JSON chunk and the binary chunk of a GLB, checking the container as a loader would."""
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert (magic, version, length) == (0x46546C67, 2, len(data))
    json_length, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A and json_length % 4 == 0
    doc = json.loads(data[20 : 20 + json_length])
    rest = data[20 + json_length :]
    binary = b""
    if rest:
        bin_length, bin_type = struct.unpack_from("<II", rest, 0)
        assert bin_type == 0x004E4942
        binary = rest[8 : 8 + bin_length]
    return doc, binary


# ---------------------------------------------------------------- jobs

FINAL = frozenset({"SUCCESS", "FAILURE", "CANCELLED"})
# Settings for tests that run analysis workers: fast leases and polling so lease-driven behaviour shows within
# seconds, and no rate limit on polling.
RUNNING = {
    "workers": 2,
    "job_poll_interval": 0.05,
    "job_lease_seconds": 3,
    "rate_limit_per_minute": 1_000_000,
    "rate_limit_per_hour": 1_000_000,
    "uploads_per_hour": 1000,
}


async def wait_job(
    api: Api, job_id: str, statuses: frozenset[str] | set[str] = FINAL, timeout: float = 60.0
) -> dict[str, Any]:
    """Poll a job over REST until its status is one of `statuses`; the job as rendered then."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        resp = await api.get(f"/api/analysis-jobs/{job_id}/")
        assert resp.status == 200, resp.body
        if resp.json["status"] in statuses:
            return resp.json  # type: ignore[no-any-return]
        assert asyncio.get_running_loop().time() < deadline, f"job still {resp.json['status']}: {resp.json}"
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- events


class Recorder:
    """The publisher tests watch: it notes every event and access change, then passes it on to the publisher
    it wraps (the gateway), so sockets still see everything. The `services` fixture puts it in front."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.access_changes: list[tuple[int | None, str]] = []
        self.inner: Publisher | None = None

    def wrap(self, inner: Publisher) -> Recorder:
        self.inner = inner
        return self

    async def publish(self, channel: str, event: str, data: dict[str, Any]) -> Any:
        self.events.append((channel, event, data))
        return None if self.inner is None else await self.inner.publish(channel, event, data)

    async def access_changed(self, user_id: int | None, reason: str = "access_changed") -> None:
        self.access_changes.append((user_id, reason))
        if self.inner is not None:
            await self.inner.access_changed(user_id, reason)

    async def user_disabled(self, user_id: int, reason: str = "account disabled") -> None:
        self.access_changes.append((user_id, reason))
        if self.inner is not None:
            await self.inner.user_disabled(user_id, reason)

    def on(self, channel: str) -> list[str]:
        """The names of the events published on `channel`, in order."""
        return [e for c, e, _ in self.events if c == channel]

    def data(self, channel: str, event: str) -> list[dict[str, Any]]:
        """The payloads of `event` on `channel`, in order."""
        return [d for c, e, d in self.events if c == channel and e == event]

    def named(self, event: str) -> list[tuple[str, dict[str, Any]]]:
        """(channel, payload) of every `event`, in order."""
        return [(c, d) for c, e, d in self.events if e == event]


# ---------------------------------------------------------------- server processes

ROOT_PASSWORD = "a-long-root-password"


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> dict[str, object]:
    """Poll /api/health/ of a server process until it answers; its body."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health/", timeout=1) as resp:
                return json.loads(resp.read())  # type: ignore[no-any-return]
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"server did not become healthy within {timeout:g} s")


def server_env(
    mongo_uri: str, data_dir: Path, *, database: str, redis_url: str | None = None, **settings: str
) -> dict[str, str]:
    """The environment of a real server.py process on `database`, with a platform admin `root` (created by the
    first process to start), fast password hashing and no analysis workers unless `settings` say otherwise; no
    ENGINEL_* variable of the caller's environment leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINEL_")}
    env.update(
        ENGINEL_MONGODB_URI=mongo_uri,
        ENGINEL_MONGODB_DATABASE=database,
        ENGINEL_WORKERS="0",
        ENGINEL_BOOTSTRAP_ADMIN=f"root:{ROOT_PASSWORD}",
        ENGINEL_ARGON2_TIME_COST="1",
        ENGINEL_ARGON2_MEMORY_KIB="64",
        ENGINEL_LOG_LEVEL="WARNING",
        ENGINEL_DATA_DIR=str(data_dir),
    )
    if redis_url is not None:
        env["ENGINEL_REDIS_URL"] = redis_url
    env.update({f"ENGINEL_{k.upper()}": v for k, v in settings.items()})
    return env


@dataclass
class ServerProcess:
    """A server.py child whose output goes to a file the test reads."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def exit_code(self, timeout: float = 60.0) -> int:
        """Wait for the process to exit by itself; its exit code."""
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def launch_server(env: dict[str, str], log: Path) -> ServerProcess:
    """Start server.py on a free port with `env`, its stdout and stderr in `log`; does not wait for it."""
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "server.py", "--port", str(port)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return ServerProcess(proc, port, log)


@contextlib.contextmanager
def shared_servers(
    mongo_uri: str, redis_url: str, data_dir: Path, count: int = 2, **settings: str
) -> Iterator[list[int]]:
    """`count` real server.py processes on one fresh database and one Redis, with a platform admin
    `root`; yields their ports and stops them afterwards."""
    env = server_env(
        mongo_uri,
        data_dir,
        database="s" + uuid.uuid4().hex[:12],
        redis_url=redis_url,
        realtime_redis_prefix="s" + uuid.uuid4().hex[:8],
        **settings,
    )
    ports = [free_port() for _ in range(count)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            # One after the other: the first bootstraps the admin, the second finds it there.
            procs.append(
                subprocess.Popen(
                    [sys.executable, "server.py", "--port", str(port)],
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_healthy(port, procs[-1])
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
