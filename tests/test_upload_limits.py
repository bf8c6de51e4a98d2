"""Upload abuse as an attacker would try it over HTTP: URLs without the right to upload, quotas, parallel
reservations, abandoned uploads, multipart bodies in server memory, concurrent uploads, shared content, and a file
whose analysis would exhaust the host's memory."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from models import audit
from models.database import free_port
from models.organizations import MemberIn
from models.policy import Role
from processing.runner import WorkerCall, analysis_call
from tests import helpers
from tests.helpers import (
    REPO,
    ROOT_PASSWORD,
    RUNNING,
    Api,
    Caller,
    World,
    assert_envelope,
    cad,
    multipart,
    put_bytes,
    team,
    upload,
    wait_healthy,
    wait_job,
)

GIB = 1024**3
MIB = 1024**2


def stored_files(settings: Any) -> list[Path]:
    """The content files of the filesystem storage (not its temporary folder, not its store marker)."""
    root = settings.data_dir / "files"
    return [p for p in helpers.stored_files(root) if "tmp" not in p.relative_to(root).parts]


async def join(world: World, org: dict[str, Any], caller: Caller, role: str) -> None:
    """Platform staff add an existing user to an organization (provisioning)."""
    member = MemberIn(user_id=caller.id, role=Role(role))
    await world.services.orgs.add_member(await world.staff_principal(), org["_id"], member, audit.Actor.system())


async def upload_url(api: Api, size: int, filename: str = "part.step", **target: str) -> Any:
    return await api.post("/api/designs/upload-url/", {"filename": filename, "file_size": size, **target})


# ---------------------------------------------------------------- who may ask for an upload URL


@pytest.mark.gen_test(timeout=60)
async def test_an_upload_url_needs_the_right_to_add_designs_where_it_goes(world: World, db: Any) -> None:
    org, people, series_id = await team(world)
    loner = await world.user("loner")  # signed in, member of nothing
    outsider = await world.user("outsider")
    other = await world.org("globex", members={outsider: "OWNER"})
    both = await world.user("both")
    await world.org("initech", members={both: "MEMBER"})
    await join(world, org, both, "MEMBER")

    # A user with no organization got a 2 GiB URL before; now there is nowhere they may upload.
    assert_envelope(await upload_url(loner.api, 2 * GIB), 403, "PERMISSION_DENIED")
    assert_envelope(await upload_url(loner.api, 100, series=series_id), 404, "RESOURCE_NOT_FOUND")
    # A VIEWER sees the series but may not add to it.
    assert_envelope(await upload_url(people["viewer"].api, 100, series=series_id), 403, "PERMISSION_DENIED")
    assert_envelope(await upload_url(people["viewer"].api, 100), 403, "PERMISSION_DENIED")
    # Another organization's series or organization does not exist for an outsider.
    assert_envelope(await upload_url(outsider.api, 100, series=series_id), 404, "RESOURCE_NOT_FOUND")
    assert_envelope(await upload_url(outsider.api, 100, organization=org["_id"]), 404, "RESOURCE_NOT_FOUND")
    mismatch = await upload_url(people["member"].api, 100, series=series_id, organization=other["_id"])
    assert assert_envelope(mismatch, 400, "VALIDATION_ERROR")["field_errors"]["organization"]
    # Someone who may upload to two organizations must say which.
    ambiguous = assert_envelope(await upload_url(both.api, 100), 400, "VALIDATION_ERROR")
    assert "series" in ambiguous["field_errors"]
    assert await db.uploads.count_documents({}) == 0

    # The reference's body still works for a member of one organization, and naming the target works for all.
    plain = await upload_url(people["member"].api, 100)
    assert plain.status == 201 and plain.json["organization"] == org["_id"] and plain.json["series"] is None
    named = await upload_url(both.api, 100, series=series_id)
    assert named.status == 201 and named.json["organization"] == org["_id"] and named.json["series"] == series_id
    # An upload issued for one organization cannot become a design in another's series.
    globex_series = await outsider.api.post(
        "/api/series/", {"organization": other["_id"], "part_number": "GX-1", "name": "Globex part"}
    )
    data = cad("wire.brep")
    url = await outsider.api.post(
        "/api/designs/upload-url/", {"filename": "w.brep", "file_size": len(data), "organization": other["_id"]}
    )
    assert (await put_bytes(outsider.api, url.json["upload_url"], data)).status == 200
    await join(world, org, outsider, "MEMBER")
    crossed = await outsider.api.post(
        "/api/designs/", {"series": series_id, "filename": "w.brep", "upload_id": url.json["upload_id"]}
    )
    assert "upload_id" in assert_envelope(crossed, 400, "VALIDATION_ERROR")["field_errors"]
    assert globex_series.status == 201


# ---------------------------------------------------------------- the organization's storage quota


async def tight_org(world: World, name: str, gb: int = 1) -> tuple[dict[str, Any], Caller, str]:
    """An organization with a `gb` GB quota, one MEMBER (of it alone, so their upload URLs need not name it) and
    one series."""
    member = await world.user(f"{name}-member")
    org = await world.org(name, max_storage_gb=gb, members={member: "MEMBER"})
    series = await member.api.post("/api/series/", {"organization": org["_id"], "part_number": "Q-1", "name": "Part"})
    assert series.status == 201, series.body
    return org, member, series.json["id"]


@pytest.mark.gen_test(timeout=60)
async def test_the_storage_quota_counts_designs_and_reserved_uploads(world: World) -> None:
    _, member, series_id = await tight_org(world, "tight")
    data = cad("wire.brep")
    design = await upload(member, series_id, "w.brep", data)
    # What is left of 1 GB can be reserved, and not one byte more, whether or not any byte was sent yet.
    assert (await upload_url(member.api, GIB - len(data))).status == 201
    over = assert_envelope(await upload_url(member.api, 1), 413, "STORAGE_QUOTA_EXCEEDED")
    assert (over["quota_bytes"], over["used_bytes"], over["requested_bytes"]) == (GIB, GIB, 1)
    body, ctype = multipart({"series": series_id}, "w2.brep", data)
    direct = await member.api.post("/api/designs/", raw=body, headers={"Content-Type": ctype})
    assert_envelope(direct, 413, "STORAGE_QUOTA_EXCEEDED")
    # Deleting a design gives its bytes back; so does a refused body.
    assert (await member.api.delete(f"/api/designs/{design['id']}/")).status == 204
    url = await upload_url(member.api, len(data), "w.brep")
    assert url.status == 201
    assert_envelope(await upload_url(member.api, 1), 413, "STORAGE_QUOTA_EXCEEDED")
    assert_envelope(await put_bytes(member.api, url.json["upload_url"], data[:-1]), 400, "VALIDATION_ERROR")
    assert (await upload_url(member.api, len(data))).status == 201


@pytest.mark.gen_test(timeout=60)
async def test_parallel_reservations_cannot_overshoot_the_quota(world: World, db: Any) -> None:
    org, member, series_id = await tight_org(world, "parallel")
    sizes = [300 * MIB] * 8  # 3 fit in 1 GB (900 MiB), 4 do not
    answers = await asyncio.gather(*(upload_url(member.api, size) for size in sizes))
    assert sorted(a.status for a in answers) == [201] * 3 + [413] * 5, [a.body for a in answers]
    reserved = await db.uploads.find({"organization_id": org["_id"]}).to_list()
    assert sum(u["reserved_bytes"] for u in reserved) == 900 * MIB


# ---------------------------------------------------------------- abandoned uploads


class TestPurge:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"upload_url_ttl": 3, "upload_purge_interval": 0.2}

    @pytest.mark.gen_test(timeout=60)
    async def test_expired_uploads_are_purged_with_their_content_and_reservations(
        self, world: World, settings: Any
    ) -> None:
        _, member, series_id = await tight_org(world, "purge", gb=2)
        data, other = cad("wire.brep"), cad("box.step")
        kept = await upload(member, series_id, "w.brep", data)
        # Received and never turned into a design: one with the design's bytes, one with bytes of its own.
        same = await upload_url(member.api, len(data), "w.brep", series=series_id)
        assert (await put_bytes(member.api, same.json["upload_url"], data)).status == 200
        new = await upload_url(member.api, len(other), series=series_id)
        assert (await put_bytes(member.api, new.json["upload_url"], other)).status == 200
        # Never used at all, holding most of the quota.
        big = 3 * GIB // 2
        assert (await upload_url(member.api, big, series=series_id)).status == 201
        assert_envelope(await upload_url(member.api, big, series=series_id), 413, "STORAGE_QUOTA_EXCEEDED")
        assert len(stored_files(settings)) == 2

        deadline = time.monotonic() + 30
        while (await upload_url(member.api, big, series=series_id)).status != 201:
            assert time.monotonic() < deadline, "the expired reservation was never released"
            await asyncio.sleep(0.5)
        while len(stored_files(settings)) != 1:
            assert time.monotonic() < deadline, stored_files(settings)
            await asyncio.sleep(0.2)
        late = await member.api.post(
            "/api/designs/", {"series": series_id, "filename": "b.step", "upload_id": new.json["upload_id"]}
        )
        assert_envelope(late, 400, "VALIDATION_ERROR")
        # The content the design holds stayed.
        download = await member.api.get(f"/api/designs/{kept['id']}/download/")
        assert download.status == 200 and download.body == data


# ---------------------------------------------------------------- bad multipart bodies


def raw_form(parts: list[tuple[bytes, bytes]], *, close: bool = True) -> tuple[bytes, str]:
    """A multipart body from (Content-Disposition value, content) pairs, written byte for byte."""
    boundary = uuid.uuid4().hex
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + content + b"\r\n"
        for disposition, content in parts
    )
    if close:
        body += b"--" + boundary.encode() + b"--\r\n"
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.gen_test(timeout=60)
async def test_malformed_multipart_uploads_are_400s_and_store_nothing(world: World, db: Any, settings: Any) -> None:
    _, people, series_id = await team(world)
    api = people["member"].api
    data = cad("wire.brep")
    series = b'form-data; name="series"'
    file = b'form-data; name="file"; filename="w.brep"'
    cases: dict[str, tuple[bytes, str]] = {
        "NUL in the filename": multipart({"series": series_id}, "a\x00b.brep", data),
        "newline in the filename": raw_form(
            [(series, series_id.encode()), (b'form-data; name="file"; filename="a\rb.brep"', data)]
        ),
        "control character in a field name": raw_form([(b'form-data; name="ser\x01ies"', b"x"), (file, data)]),
        "filename not UTF-8": raw_form(
            [(series, series_id.encode()), (b'form-data; name="file"; filename="\xff.brep"', data)]
        ),
        "field after the file": raw_form([(file, data), (series, series_id.encode())]),
        "no file part": raw_form([(series, series_id.encode())]),
        "two file parts": raw_form([(series, series_id.encode()), (file, data), (file, data)]),
        "unknown field": raw_form([(series, series_id.encode()), (b'form-data; name="owner"', b"me"), (file, data)]),
        "no closing boundary": raw_form([(series, series_id.encode()), (file, data)], close=False),
        "not form-data": raw_form([(b'attachment; name="series"', series_id.encode()), (file, data)]),
        "oversized field": raw_form([(b'form-data; name="revision"', b"R" * 10_000), (file, data)]),
    }
    for name, (body, ctype) in cases.items():
        resp = await api.post("/api/designs/", raw=body, headers={"Content-Type": ctype})
        assert resp.status == 400, (name, resp.status, resp.body)
        assert_envelope(resp, 400, "VALIDATION_ERROR")
    no_boundary = await api.post("/api/designs/", raw=b"x", headers={"Content-Type": "multipart/form-data"})
    assert_envelope(no_boundary, 400, "VALIDATION_ERROR")
    assert await db.designs.count_documents({}) == 0
    assert await db.uploads.count_documents({}) == 0
    assert stored_files(settings) == []
    # The same file as a well-formed form goes through, its series given in the query this time.
    body, ctype = multipart({}, "w.brep", data)
    ok = await api.post(f"/api/designs/?series={series_id}", raw=body, headers={"Content-Type": ctype})
    assert ok.status == 201 and ok.json["status"] == "PROCESSING", ok.body


# ---------------------------------------------------------------- uploads at once


class HeldUpload:
    """A PUT of a signed URL whose body is only half sent, over a raw socket: an upload in progress."""

    def __init__(self, url: str, data: bytes) -> None:
        self.url = urllib.parse.urlsplit(url)
        self.data = data

    async def start(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.url.hostname, self.url.port)
        head = (
            f"PUT {self.url.path}?{self.url.query} HTTP/1.1\r\nHost: {self.url.netloc}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(self.data)}\r\n\r\n"
        )
        self.writer.write(head.encode() + self.data[: len(self.data) // 2])
        await self.writer.drain()

    async def finish(self) -> int:
        self.writer.write(self.data[len(self.data) // 2 :])
        await self.writer.drain()
        status = int((await self.reader.readline()).split()[1])
        self.writer.close()
        return status

    def drop(self) -> None:
        self.writer.transport.abort()


async def receiving(db: Any, count: int) -> None:
    deadline = time.monotonic() + 10
    while await db.uploads.count_documents({"status": "RECEIVING"}) != count:
        assert time.monotonic() < deadline, "the held uploads did not start"
        await asyncio.sleep(0.02)


@pytest.mark.gen_test(timeout=60)
async def test_one_user_streams_at_most_the_cap_at_once(world: World, db: Any) -> None:
    """ENGINEL_MAX_CONCURRENT_UPLOADS (4 by default) bodies of one user may stream at once."""
    _, people, series_id = await team(world)
    member = people["member"]
    data = cad("assembly.step")
    urls = [(await upload_url(member.api, len(data), "a.step")).json for _ in range(6)]
    held = [HeldUpload(u["upload_url"], data) for u in urls[:4]]
    for upload_ in held:
        await upload_.start()
    await receiving(db, 4)
    # One more at the same time is refused, by either route, and its signed URL stays good.
    fifth = await put_bytes(member.api, urls[4]["upload_url"], data)
    assert assert_envelope(fifth, 429, "RATE_LIMIT_EXCEEDED")["retry_after"] > 0
    body, ctype = multipart({"series": series_id}, "b.step", data)
    direct = await member.api.post("/api/designs/", raw=body, headers={"Content-Type": ctype})
    assert_envelope(direct, 429, "RATE_LIMIT_EXCEEDED")
    # Another user is not affected.
    other = await upload_url(people["admin"].api, len(data), "c.step")
    assert (await put_bytes(people["admin"].api, other.json["upload_url"], data)).status == 200
    # One finishes, one is dropped mid-body: both slots come back.
    assert await held[0].finish() == 200
    held[1].drop()
    await receiving(db, 2)
    assert (await put_bytes(member.api, urls[4]["upload_url"], data)).status == 200
    assert (await member.api.post("/api/designs/", raw=body, headers={"Content-Type": ctype})).status == 201
    assert (await put_bytes(member.api, urls[5]["upload_url"], data)).status == 200
    for upload_ in held[2:]:
        assert await upload_.finish() == 200


# ---------------------------------------------------------------- shared content


UNLIMITED = {"rate_limit_per_minute": 1_000_000, "rate_limit_per_hour": 1_000_000, "uploads_per_hour": 100_000}


@pytest.mark.parametrize(
    "settings_overrides", [UNLIMITED, {**UNLIMITED, "storage_backend": "gridfs"}], ids=["filesystem", "gridfs"]
)
@pytest.mark.gen_test(timeout=300)
async def test_deleting_a_design_never_takes_the_file_of_an_identical_upload(world: World, db: Any) -> None:
    """Identical bytes are stored once. Each round: the only design holding some bytes is deleted while the same
    bytes are uploaded again, by the signed URL and in one request, at staggered moments; afterwards every
    design's file is there, whole."""
    _, people, series_id = await team(world)
    member = people["member"]

    async def signed(data: bytes, name: str, delay: float) -> None:
        url = (await upload_url(member.api, len(data), name)).json  # the reference's body: one organization
        await asyncio.sleep(delay)
        assert (await put_bytes(member.api, url["upload_url"], data)).status == 200
        created = await member.api.post(
            "/api/designs/", {"series": series_id, "filename": name, "upload_id": url["upload_id"]}
        )
        assert created.status == 201, created.body
        digest = hashlib.sha256(data).hexdigest()
        final = await member.api.post(
            f"/api/designs/{created.json['id']}/finalize_upload/", {"file_hash": f"sha256:{digest}"}
        )
        assert final.status == 200, final.body

    async def direct(data: bytes, name: str, delay: float) -> None:
        body, ctype = multipart({"series": series_id}, name, data)
        await asyncio.sleep(delay)
        assert (await member.api.post("/api/designs/", raw=body, headers={"Content-Type": ctype})).status == 201

    async def delete(design_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        assert (await member.api.delete(f"/api/designs/{design_id}/")).status == 204

    rounds = 40
    expected: dict[str, str] = {}
    for n in range(rounds):
        # Bytes of this round alone (trailing whitespace keeps the file valid): the victim and the one upload racing
        # its deletion are their only holders, so nothing else keeps them alive.
        data = cad("wire.brep") + b"\n" + b" " * n + b"\n"
        victim = await upload(member, series_id, f"victim{n}.brep", data)
        racer = signed if n % 2 else direct
        # The delete lands at a different moment of the upload each round, sweeping its whole course.
        await asyncio.gather(delete(victim["id"], 0.06 * (n // 2) / (rounds // 2)), racer(data, f"r{n}-.brep", 0))
        expected.update(
            {d["_id"]: hashlib.sha256(data).hexdigest() async for d in db.designs.find({"filename": f"r{n}-.brep"})}
        )
    assert len(expected) == await db.designs.count_documents({}) == rounds
    lost = []
    for design_id, digest in expected.items():
        download = await member.api.get(f"/api/designs/{design_id}/download/")
        if download.status != 200 or hashlib.sha256(download.body).hexdigest() != digest:
            lost.append((design_id, download.status))
    assert lost == [], f"{len(lost)} of {len(expected)} designs lost their file"


# ---------------------------------------------------------------- server memory


@contextlib.contextmanager
def server_process(mongo_uri: str, data_dir: Path) -> Iterator[tuple[int, int]]:
    """A real server.py process (its own database on the test SecantusDB, no workers) with platform admin `root`;
    yields (pid, port), so a test can read the process's memory from /proc."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINEL_")}
    env.update(
        ENGINEL_MONGODB_URI=mongo_uri,
        ENGINEL_MONGODB_DATABASE="m" + uuid.uuid4().hex[:12],
        ENGINEL_WORKERS="0",
        ENGINEL_BOOTSTRAP_ADMIN=f"root:{ROOT_PASSWORD}",
        ENGINEL_ARGON2_TIME_COST="1",
        ENGINEL_ARGON2_MEMORY_KIB="64",
        ENGINEL_LOG_LEVEL="WARNING",
        ENGINEL_DATA_DIR=str(data_dir),
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "server.py", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(port, proc)
        yield proc.pid, port
    finally:
        proc.terminate()
        proc.wait(30)


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def synthetic_step(size: int) -> bytes:
    """A STEP file of `size` bytes that passes the upload's format check: header, comment lines, end marker."""
    head = b"ISO-10303-21;\nHEADER;\nFILE_DESCRIPTION(('memory test'),'2;1');\nENDSEC;\nDATA;\n"
    tail = b"ENDSEC;\nEND-ISO-10303-21;\n"
    line = b"/* filler of a synthetic STEP file */\n"
    middle = size - len(head) - len(tail)
    return head + (line * (middle // len(line) + 1))[:middle] + tail


@pytest.mark.gen_test(timeout=180)
async def test_multipart_bodies_never_sit_in_server_memory(mongo_uri: str, tmp_path: Path, http_client: Any) -> None:
    """60 MiB sent to a series that does not exist took the server from 109 to 351 MiB before its 404. Now the peak
    resident memory of the server process (VmHWM, reset before each request) grows by far less than the body,
    whether the series is refused from the query, from the form, or accepted and the file stored."""
    data = synthetic_step(60 * MIB)
    with server_process(mongo_uri, tmp_path / "data") as (pid, port):
        api = Api(http_client, f"http://127.0.0.1:{port}")
        login = await api.post("/api/auth/login/", {"username": "root", "password": ROOT_PASSWORD})
        assert login.status == 200, login.body
        root = api.as_token(login.json["access_token"])
        org = await root.post("/api/organizations/", {"name": "Acme", "slug": "acme"})
        assert org.status == 201, org.body
        series = await root.post(
            "/api/series/", {"organization": org.json["id"], "part_number": "BIG-1", "name": "Big part"}
        )
        assert series.status == 201, series.body
        nowhere = str(uuid.uuid4())
        to_form = multipart({"series": nowhere}, "big.stp", data)
        to_query = multipart({}, "big.stp", data)
        accepted = multipart({"series": series.json["id"]}, "big.stp", data)
        cases = [
            ("unknown series in the form", "/api/designs/", to_form, 404),
            ("unknown series in the query", f"/api/designs/?series={nowhere}", to_query, 404),
            ("accepted and stored", "/api/designs/", accepted, 201),
        ]
        small = multipart({"series": nowhere}, "small.stp", synthetic_step(MIB))
        # Warm up the request path (imports, buffers) so the measurements see only the body's cost.
        await root.post("/api/designs/", raw=small[0], headers={"Content-Type": small[1]})
        for name, path, (body, ctype), status in cases:
            before = memory_kib(pid, "VmRSS")
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current size
            resp = await root.post(path, raw=body, headers={"Content-Type": ctype})
            assert resp.status == status, (name, resp.body[:300])
            growth = (memory_kib(pid, "VmHWM") - before) / 1024
            assert growth < 24, f"{name}: the server's peak memory grew by {growth:.0f} MiB for a 60 MiB body"
        stored = (await root.get(f"/api/designs/{resp.json['id']}/")).json
        assert stored["file_size_bytes"] == len(data)
        assert stored["file_hash"] == f"sha256:{hashlib.sha256(data).hexdigest()}"


# ---------------------------------------------------------------- analysis memory


class TestWorkerMemory:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {**RUNNING, "workers": 1, "worker_memory_mb": 1536}

    @pytest.mark.gen_test(timeout=120)
    async def test_an_analysis_past_the_worker_memory_limit_fails_cleanly(
        self, world: World, services: Any, api: Api
    ) -> None:
        """A file whose analysis would take 4 GiB (a worker function allocating that much stands in for
        OpenCascade building a huge model) fails its job at once with a readable message; the pool replaces the
        worker and the next file is analysed."""

        def call(job: dict[str, Any], path: str, design: dict[str, Any]) -> WorkerCall:
            if design["filename"] == "hog.step":
                return WorkerCall("tests.processing.workers:allocate", (4096,), progress=False)
            return analysis_call(job, path, design)

        services.runner.make_call = call
        _, people, series_id = await team(world)
        member = people["member"]
        hog = await upload(member, series_id, "hog.step", cad("assembly.step"))
        job = await wait_job(member.api, hog["finalize"]["analysis_job_id"])
        assert job["status"] == "FAILURE" and job["error_code"] == "GEOMETRY_EXTRACTION_FAILED", job
        assert job["retry_count"] == 0  # the same file would need the same memory again
        assert "1536 MiB (ENGINEL_WORKER_MEMORY_MB)" in job["error_message"], job["error_message"]
        assert (await member.api.get(f"/api/designs/{hog['id']}/")).json["status"] == "FAILED"
        assert (await api.get("/api/health/")).status == 200
        fine = await upload(member, series_id, "fine.step", cad("assembly.step"))
        assert (await wait_job(member.api, fine["finalize"]["analysis_job_id"]))["status"] == "SUCCESS"
        stats = services.pool.stats()
        assert stats["replaced"] == 1 and stats["alive"] == 1, stats


@pytest.mark.gen_test(timeout=30)
async def test_a_malformed_upload_url_expiry_is_a_400(world: World) -> None:
    _, people, _ = await team(world)
    url = (await upload_url(people["member"].api, 10)).json["upload_url"]
    base, query = url.split("?", 1)
    signature = urllib.parse.parse_qs(query)["signature"][0]
    for expires in ("9" * 5000, "12a", "", "１２"):
        resp = await put_bytes(
            people["member"].api, f"{base}?expires={urllib.parse.quote(expires)}&signature={signature}", b"x"
        )
        assert "expires" in assert_envelope(resp, 400, "VALIDATION_ERROR")["field_errors"], expires
