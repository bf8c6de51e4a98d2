"""Design series and assets over real HTTP: the signed upload flow with real CAD files, downloads, policy."""

from __future__ import annotations

import asyncio
import hashlib
import urllib.parse
import uuid
from datetime import timedelta
from typing import Any

import pytest

from models.database import utcnow
from tests import cad_fixtures, corpus
from tests.cad_fixtures import CadFiles
from tests.helpers import World, assert_envelope, cad, multipart, put_bytes, stored_files, team, upload

# Every generated file the upload's format check accepts, one per format at least.
UPLOADABLE = cad_fixtures.names(sniffs=True)
ASSEMBLY = "assembly.step"


# ---------------------------------------------------------------- the upload flow with real files


async def round_trip(world: World, db: Any, files: dict[str, bytes]) -> None:
    """Upload each file, then check what the server recorded and serves back against the bytes sent."""
    _, people, series_id = await team(world)
    member = people["member"]
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        design = await upload(member, series_id, name, data)
        assert design["finalize"]["status"] == "PROCESSING" and design["finalize"]["analysis_job_id"]
        detail = (await member.api.get(f"/api/designs/{design['id']}/")).json
        assert detail["file_hash"] == f"sha256:{digest}"
        assert detail["file_size_bytes"] == len(data) and detail["status"] == "PROCESSING"
        download = await member.api.get(f"/api/designs/{design['id']}/download/")
        assert download.status == 200
        assert download.body == data
        assert download.headers["Content-Length"] == str(len(data))
        assert download.headers["ETag"] == f'"{digest}"'
        assert name in urllib.parse.unquote(download.headers["Content-Disposition"])
    versions = (await member.api.get(f"/api/series/{series_id}/designs/")).json
    assert [v["version_number"] for v in versions] == list(range(1, len(files) + 1))
    assert await db.audit_log.count_documents({"action": "DOWNLOAD"}) == len(files)
    assert await db.analysis_jobs.count_documents({"status": "PENDING"}) == len(files)


@pytest.mark.gen_test(timeout=120)
async def test_every_format_round_trips_through_filesystem_storage(
    world: World, db: Any, services: Any, cad_files: CadFiles
) -> None:
    assert type(services.storage).__name__ == "FileSystemStorage"
    await round_trip(world, db, {name: cad_files.read(name) for name in UPLOADABLE})


@corpus.mark
@pytest.mark.gen_test(timeout=120)
async def test_every_corpus_file_round_trips(world: World, db: Any) -> None:
    files = {name: corpus.read(name) for name in corpus.FILES}
    assert {name: hashlib.sha256(data).hexdigest() for name, data in files.items()} == {
        name: corpus.sha256sums()[name] for name in corpus.FILES
    }
    await round_trip(world, db, files)


class TestGridFS:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"storage_backend": "gridfs"}

    @pytest.mark.gen_test(timeout=120)
    async def test_every_format_round_trips_through_gridfs(
        self, world: World, db: Any, services: Any, cad_files: CadFiles
    ) -> None:
        assert type(services.storage).__name__ == "GridFSStorage"
        files = {name: cad_files.read(name) for name in UPLOADABLE}
        await round_trip(world, db, files)
        distinct = {hashlib.sha256(data).hexdigest() for data in files.values()}
        assert await db["cadfiles.files"].count_documents({}) == len(distinct)

    @pytest.mark.gen_test(timeout=60)
    async def test_upload_and_range_download_from_gridfs(self, world: World, db: Any, services: Any) -> None:
        _, people, series_id = await team(world)
        data = cad(ASSEMBLY)
        design = await upload(people["member"], series_id, ASSEMBLY, data)
        assert await db["cadfiles.files"].count_documents({}) == 1
        part = await people["member"].api.get(
            f"/api/designs/{design['id']}/download/", headers={"Range": "bytes=1000-1999"}
        )
        assert part.status == 206 and part.body == data[1000:2000]


@pytest.mark.gen_test(timeout=60)
async def test_multipart_upload_and_concurrent_versions(world: World) -> None:
    _, people, series_id = await team(world)
    member = people["member"]
    data = cad("box.step")
    # As many at once as one user may send (ENGINEL_MAX_CONCURRENT_UPLOADS, 4 by default).
    bodies = [multipart({"series": series_id, "revision": f"R{i}"}, f"part{i}.stp", data) for i in range(4)]
    responses = await asyncio.gather(
        *[member.api.post("/api/designs/", raw=body, headers={"Content-Type": ctype}) for body, ctype in bodies]
    )
    assert all(r.status == 201 for r in responses), [r.body for r in responses]
    assert sorted(r.json["version_number"] for r in responses) == [1, 2, 3, 4]
    assert all(r.json["status"] == "PROCESSING" and r.json["analysis_job_id"] for r in responses)
    # Identical content is stored once.
    assert len({r.json["file_hash"] for r in responses}) == 1


@pytest.mark.gen_test(timeout=60)
async def test_refused_multipart_uploads_store_nothing(world: World, settings: Any, db: Any) -> None:
    org, people, series_id = await team(world)
    data = cad("wire.brep")
    body, ctype = multipart({"series": series_id}, "w.brep", data)
    denied = await people["viewer"].api.post("/api/designs/", raw=body, headers={"Content-Type": ctype})
    assert_envelope(denied, 403, "PERMISSION_DENIED")
    above = multipart({"series": series_id, "classification": "TOP_SECRET"}, "w.brep", data)
    over = await people["member"].api.post("/api/designs/", raw=above[0], headers={"Content-Type": above[1]})
    assert_envelope(over, 403, "PERMISSION_DENIED")
    liar = multipart({"series": series_id}, "w.step", data)
    wrong = await people["member"].api.post("/api/designs/", raw=liar[0], headers={"Content-Type": liar[1]})
    assert_envelope(wrong, 400, "INVALID_FILE_FORMAT")
    assert stored_files(settings.data_dir / "files") == []
    assert await db.designs.count_documents({}) == 0


@pytest.mark.gen_test(timeout=60)
async def test_identical_content_is_stored_once_and_removed_with_its_last_design(world: World, settings: Any) -> None:
    _, people, series_id = await team(world)
    data = cad("wire.brep")
    first = await upload(people["member"], series_id, "wire.brep", data)
    second = await upload(people["member"], series_id, "wire-copy.brep", data)
    root = settings.data_dir / "files"
    stored = [p for p in stored_files(root) if "tmp" not in p.relative_to(root).parts]
    assert len(stored) == 1
    assert (await people["member"].api.delete(f"/api/designs/{first['id']}/")).status == 204
    assert stored[0].exists()
    assert (await people["member"].api.delete(f"/api/designs/{second['id']}/")).status == 204
    assert not stored[0].exists()


# ---------------------------------------------------------------- refusals


@pytest.mark.gen_test
async def test_upload_url_refusals(world: World) -> None:
    _, people, _ = await team(world)
    api = people["member"].api
    bad_ext = await api.post("/api/designs/upload-url/", {"filename": "model.exe", "file_size": 10})
    assert_envelope(bad_ext, 400, "INVALID_FILE_FORMAT")
    too_big = await api.post("/api/designs/upload-url/", {"filename": "big.step", "file_size": 3 * 1024**3})
    assert_envelope(too_big, 413, "FILE_TOO_LARGE")
    assert_envelope(
        await api.post("/api/designs/upload-url/", {"filename": "a.step", "file_size": "10"}), 400, "VALIDATION_ERROR"
    )
    assert_envelope(
        await api.post("/api/designs/upload-url/", {"filename": "a.step", "file_size": 0}), 400, "VALIDATION_ERROR"
    )


@pytest.mark.gen_test
async def test_signed_url_refusals_leave_nothing_behind(world: World, settings: Any, db: Any) -> None:
    _, people, series_id = await team(world)
    api = people["member"].api
    data = cad(ASSEMBLY)

    async def fresh(size: int = len(data)) -> str:
        resp = await api.post("/api/designs/upload-url/", {"filename": "as1.step", "file_size": size})
        return str(resp.json["upload_url"])

    url = await fresh()
    forged = url.replace("signature=", "signature=00")
    assert_envelope(await put_bytes(api, forged, data), 403, "PERMISSION_DENIED")
    other_id = url.replace(url.split("/api/uploads/")[1][:36], str(uuid.uuid4()))
    assert_envelope(await put_bytes(api, other_id, data), 403, "PERMISSION_DENIED")
    # Expired: the signature covers the expiry, so the only way to test it is an upload issued in the past.
    upload_id = url.split("/api/uploads/")[1][:36]
    from models.designs import _sign

    past = int((utcnow() - timedelta(minutes=1)).timestamp())
    expired = f"/api/uploads/{upload_id}/?expires={past}&signature={_sign(world.services.secret, upload_id, past)}"
    assert_envelope(await put_bytes(api, api.base_url + expired, data), 403, "PERMISSION_DENIED")
    # Longer than declared.
    short = await fresh(size=1000)
    assert_envelope(await put_bytes(api, short, data), 413, "FILE_TOO_LARGE")
    # Content that is not what the name says.
    liar = await fresh(size=2000)
    assert_envelope(await put_bytes(api, liar, b"MZ\x90\x00" + b"\x00" * 1996), 400, "INVALID_FILE_FORMAT")
    # Shorter than declared.
    truncated = await fresh(size=len(data) + 10)
    assert_envelope(await put_bytes(api, truncated, data), 400, "VALIDATION_ERROR")
    files = stored_files(settings.data_dir / "files")
    assert files == [], files
    # Single use: a URL that succeeded cannot be used again.
    ok = await fresh()
    assert (await put_bytes(api, ok, data)).status == 200
    assert_envelope(await put_bytes(api, ok, data), 409, "CONFLICT")


@pytest.mark.gen_test
async def test_finalize_and_download_refusals(world: World, db: Any) -> None:
    _, people, series_id = await team(world)
    api = people["member"].api
    data = cad(ASSEMBLY)
    url = (await api.post("/api/designs/upload-url/", {"filename": "as1.stp", "file_size": len(data)})).json
    await put_bytes(api, url["upload_url"], data)
    created = (
        await api.post("/api/designs/", {"series": series_id, "filename": "as1.stp", "upload_id": url["upload_id"]})
    ).json
    reuse = await api.post("/api/designs/", {"series": series_id, "filename": "as1.stp", "upload_id": url["upload_id"]})
    assert_envelope(reuse, 400, "VALIDATION_ERROR")
    assert_envelope(await api.get(f"/api/designs/{created['id']}/download/"), 409, "CONFLICT")
    wrong = await api.post(f"/api/designs/{created['id']}/finalize_upload/", {"file_hash": "sha256:" + "0" * 64})
    assert_envelope(wrong, 422, "VALIDATION_ERROR")
    assert (await db.designs.find_one({"_id": created["id"]}))["status"] == "UPLOADING"
    assert await db.analysis_jobs.count_documents({}) == 0
    right = {"file_hash": "sha256:" + hashlib.sha256(data).hexdigest()}
    assert (await api.post(f"/api/designs/{created['id']}/finalize_upload/", right)).status == 200
    assert_envelope(await api.post(f"/api/designs/{created['id']}/finalize_upload/", right), 409, "CONFLICT")


@pytest.mark.gen_test
async def test_hostile_filenames_are_neutralised(world: World) -> None:
    _, people, series_id = await team(world)
    data = cad("wire.brep")
    design = await upload(people["member"], series_id, "../../etc/pass\x01wd.brep", data)
    assert "/" not in design["filename"] and "\x01" not in design["filename"] and design["filename"].endswith(".brep")
    # A NUL is refused outright, like a NUL in any other text of a request body.
    nul = await people["member"].api.post("/api/designs/upload-url/", {"filename": "pass\x00wd.brep", "file_size": 9})
    assert "filename" in assert_envelope(nul, 400, "VALIDATION_ERROR")["field_errors"]
    download = await people["member"].api.get(f"/api/designs/{design['id']}/download/")
    disposition = download.headers["Content-Disposition"]
    assert "\n" not in disposition and "/" not in disposition.split("filename=")[1].split(";")[0]


@pytest.mark.gen_test
async def test_range_downloads(world: World) -> None:
    _, people, series_id = await team(world)
    data = cad("plate.igs")
    design = await upload(people["member"], series_id, "plate.igs", data)
    path = f"/api/designs/{design['id']}/download/"
    api = people["member"].api
    head = await api.get(path, headers={"Range": "bytes=0-99"})
    assert head.status == 206 and head.body == data[:100]
    assert head.headers["Content-Range"] == f"bytes 0-99/{len(data)}"
    tail = await api.get(path, headers={"Range": "bytes=-50"})
    assert tail.status == 206 and tail.body == data[-50:]
    rest = await api.get(path, headers={"Range": f"bytes={len(data) - 10}-"})
    assert rest.body == data[-10:]
    beyond = await api.get(path, headers={"Range": f"bytes={len(data) + 5}-"})
    assert_envelope(beyond, 416, "RANGE_NOT_SATISFIABLE")
    assert beyond.headers["Content-Range"] == f"bytes */{len(data)}"


# ---------------------------------------------------------------- policy


@pytest.mark.gen_test(timeout=60)
async def test_itar_design_is_invisible_to_a_non_us_member(world: World) -> None:
    org, people, series_id = await team(world)
    data = cad(ASSEMBLY)
    plain = await upload(people["member"], series_id, "open.stp", data)
    itar = await upload(people["member"], series_id, "controlled.stp", data, classification="ITAR")
    foreign = people["foreign"].api
    for suffix in ("", "metadata/", "download/"):
        resp = await foreign.get(f"/api/designs/{itar['id']}/{suffix}")
        assert_envelope(resp, 403, "ITAR_VIOLATION")
    for path in (
        "/api/designs/",
        f"/api/designs/?series={series_id}",
        "/api/designs/?classification=ITAR",
        "/api/designs/?search=controlled",
    ):
        listed = (await foreign.get(path)).json
        assert itar["id"] not in str(listed)
    assert (await foreign.get("/api/designs/")).json["count"] == 1
    assert (await foreign.get("/api/designs/?classification=ITAR")).json["count"] == 0
    versions = (await foreign.get(f"/api/series/{series_id}/designs/")).json
    assert [v["id"] for v in versions] == [plain["id"]]
    series = (await foreign.get(f"/api/series/{series_id}/")).json
    assert series["design_count"] == 1 and series["latest_version"] == 1
    # The US members see both.
    assert (await people["member"].api.get("/api/designs/")).json["count"] == 2
    assert (await people["member"].api.get(f"/api/series/{series_id}/")).json["design_count"] == 2
    # And another organization sees neither, and a guessed id is a plain 404.
    outsider = await world.user("outsider", is_us_person=True, security_clearance_level="TOP_SECRET")
    await world.org("other", members={outsider: "OWNER"}, is_us=True)
    assert_envelope(await outsider.api.get(f"/api/designs/{itar['id']}/"), 404, "RESOURCE_NOT_FOUND")
    assert (await outsider.api.get("/api/designs/")).json["count"] == 0


@pytest.mark.gen_test(timeout=60)
async def test_clearance_levels_govern_designs(world: World) -> None:
    _, people, series_id = await team(world)
    data = cad("wire.brep")
    secret = await upload(people["member"], series_id, "s.brep", data, classification="SECRET")
    resp = await people["viewer"].api.get(f"/api/designs/{secret['id']}/")
    assert_envelope(resp, 403, "PERMISSION_DENIED")
    assert (await people["viewer"].api.get("/api/designs/")).json["count"] == 0
    # Nobody files a design above their own clearance (SECRET here), nor raises one there.
    url = (
        await people["member"].api.post("/api/designs/upload-url/", {"filename": "x.brep", "file_size": len(data)})
    ).json
    assert (await put_bytes(people["member"].api, url["upload_url"], data)).status == 200
    above = await people["member"].api.post(
        "/api/designs/",
        {"series": series_id, "filename": "x.brep", "upload_id": url["upload_id"], "classification": "TOP_SECRET"},
    )
    assert_envelope(above, 403, "PERMISSION_DENIED")
    ts = await people["member"].api.patch(f"/api/designs/{secret['id']}/", {"classification": "TOP_SECRET"})
    assert_envelope(ts, 403, "PERMISSION_DENIED")


@pytest.mark.gen_test(timeout=60)
async def test_lowering_classification_needs_admin_and_is_audited(world: World, db: Any) -> None:
    _, people, series_id = await team(world)
    data = cad("wire.brep")
    design = await upload(people["member"], series_id, "w.brep", data, classification="SECRET")
    lowered = await people["member"].api.patch(f"/api/designs/{design['id']}/", {"classification": "UNCLASSIFIED"})
    assert_envelope(lowered, 403, "PERMISSION_DENIED")
    assert (await db.designs.find_one({"_id": design["id"]}))["classification"] == "SECRET"
    raised = await people["member"].api.patch(f"/api/designs/{design['id']}/", {"classification": "SECRET"})
    assert raised.status == 200
    ok = await people["admin"].api.patch(f"/api/designs/{design['id']}/", {"classification": "CONFIDENTIAL"})
    assert ok.status == 200 and ok.json["classification"] == "CONFIDENTIAL"
    entry = await db.audit_log.find_one({"action": "DOWNGRADE_CLASSIFICATION", "resource_id": design["id"]})
    assert entry["changes"]["classification"] == {"old": "SECRET", "new": "CONFIDENTIAL"}
    assert entry["actor_id"] == people["admin"].id


@pytest.mark.gen_test(timeout=60)
async def test_status_transitions_and_roles(world: World, db: Any) -> None:
    _, people, series_id = await team(world)
    design = await upload(people["member"], series_id, "w.brep", cad("wire.brep"))
    path = f"/api/designs/{design['id']}/"
    approve = await people["admin"].api.patch(path, {"status": "APPROVED"})
    assert_envelope(approve, 409, "CONFLICT")
    assert_envelope(await people["viewer"].api.patch(path, {"revision": "B"}), 403, "PERMISSION_DENIED")
    await db.designs.update_one({"_id": design["id"]}, {"$set": {"status": "READY"}})
    assert_envelope(await people["member"].api.patch(path, {"status": "ARCHIVED"}), 403, "PERMISSION_DENIED")
    archived = await people["admin"].api.patch(path, {"status": "ARCHIVED"})
    assert archived.status == 200 and archived.json["status"] == "ARCHIVED"
    stale = await people["admin"].api.patch(path, {"revision": "C"}, headers={"If-Match": '"1"'})
    assert_envelope(stale, 409, "CONFLICT")
    etag = (await people["admin"].api.get(path)).headers["ETag"]
    fresh = await people["admin"].api.patch(path, {"revision": "C"}, headers={"If-Match": etag})
    assert fresh.status == 200 and fresh.json["revision"] == "C"
    assert_envelope(await people["viewer"].api.delete(path), 403, "PERMISSION_DENIED")
    assert (await people["member"].api.delete(path)).status == 204  # the uploader
    assert_envelope(await people["member"].api.get(path), 404, "RESOURCE_NOT_FOUND")


@pytest.mark.gen_test(timeout=60)
async def test_mass_follows_material_without_reanalysis(world: World, services: Any, cad_files: CadFiles) -> None:
    from processing.cad import analyze_file

    expected = cad_files.expected[ASSEMBLY]
    assert expected.volume_mm3 is not None
    volume = expected.volume_mm3
    _, people, series_id = await team(world)
    design = await upload(people["member"], series_id, ASSEMBLY, cad(ASSEMBLY), material="Aluminium 6061-T6")
    await services.designs.apply_analysis(design["id"], analyze_file(str(cad_files.path(ASSEMBLY))))
    detail = (await people["member"].api.get(f"/api/designs/{design['id']}/")).json
    assert detail["status"] == "READY" and detail["volume_cubic_mm"] == pytest.approx(volume, rel=1e-9)
    assert detail["mass_kg"] == pytest.approx(volume * 1e-9 * 2700, rel=1e-9)
    steel = await people["member"].api.patch(f"/api/designs/{design['id']}/", {"material": "SS304"})
    assert steel.json["mass_kg"] == pytest.approx(volume * 1e-9 * 8000, rel=1e-9)
    meta = (await people["member"].api.get(f"/api/designs/{design['id']}/metadata/")).json
    assert meta["material"] == {"name": "SS304", "density_kg_m3": 8000, "mass_kg": steel.json["mass_kg"]}
    assert meta["validation"]["is_valid"] is True
    assert meta["geometry"]["topology"]["solids"] == expected.solids


@pytest.mark.gen_test
async def test_metadata_while_processing_is_empty_with_status(world: World) -> None:
    _, people, series_id = await team(world)
    design = await upload(people["member"], series_id, "w.brep", cad("wire.brep"))
    meta = (await people["member"].api.get(f"/api/designs/{design['id']}/metadata/")).json
    assert meta["status"] == "processing" and meta["geometry"] == {} and meta["validation"] == {}


# ---------------------------------------------------------------- series


@pytest.mark.gen_test
async def test_series_crud_and_part_number_uniqueness(world: World) -> None:
    org, people, series_id = await team(world)
    api = people["member"].api
    dup = await api.post("/api/series/", {"organization": org["_id"], "part_number": "tb-001", "name": "x"})
    assert "part_number" in assert_envelope(dup, 409, "CONFLICT")["field_errors"]
    assert_envelope(
        await people["viewer"].api.post(
            "/api/series/", {"organization": org["_id"], "part_number": "V-1", "name": "x"}
        ),
        403,
        "PERMISSION_DENIED",
    )
    listed = (await people["viewer"].api.get("/api/series/?search=turbine")).json
    assert listed["count"] == 1 and listed["results"][0]["organization_name"] == "Acme"
    # Issue 20: the part-number filter matches as uniqueness does, whatever the case (the upper-case value, as the
    # reference sends it, found nothing: the filter compared the lower-cased stored key with the raw input).
    for given in ("TB-001", "tb-001", "Tb-001"):
        found = (await people["viewer"].api.get(f"/api/series/?part_number={given}")).json
        assert [s["id"] for s in found["results"]] == [series_id], given
    assert (await people["viewer"].api.get("/api/series/?part_number=TB-00")).json["count"] == 0  # exact
    renamed = await api.patch(f"/api/series/{series_id}/", {"name": "Blade"})
    assert renamed.status == 200 and renamed.json["name"] == "Blade"
    outsider = await world.user("nosy-user")
    await world.org("nosy-org", members={outsider: "OWNER"})
    assert_envelope(await outsider.api.get(f"/api/series/{series_id}/"), 404, "RESOURCE_NOT_FOUND")
    assert (await outsider.api.get("/api/series/")).json["count"] == 0


@pytest.mark.gen_test(timeout=60)
async def test_series_delete_rules(world: World, db: Any) -> None:
    _, people, series_id = await team(world)
    data = cad("wire.brep")
    await upload(people["member"], series_id, "w.brep", data)
    path = f"/api/series/{series_id}/"
    assert_envelope(await people["member"].api.delete(path + "?force=true"), 403, "PERMISSION_DENIED")
    assert_envelope(await people["admin"].api.delete(path), 409, "CONFLICT")
    await upload(people["owner"], series_id, "ts.brep", data, classification="TOP_SECRET")
    # The SECRET-cleared admin cannot see the TOP_SECRET version, so cannot delete the series holding it.
    assert_envelope(await people["admin"].api.delete(path + "?force=true"), 409, "CONFLICT")
    assert await db.designs.count_documents({"series_id": series_id}) == 2
    assert (await people["owner"].api.delete(path + "?force=true")).status == 204
    assert await db.designs.count_documents({"series_id": series_id}) == 0


# ---------------------------------------------------------------- units and materials


@pytest.mark.gen_test
async def test_convert_units(world: World) -> None:
    user = await world.user("unit-user")
    resp = await user.api.get("/api/designs/convert-units/?value=100&from_unit=mm&to_unit=in")
    assert resp.status == 200
    assert resp.json["converted_value"] == pytest.approx(3.937007874, rel=1e-9)
    assert resp.json["conversion_factor"] == pytest.approx(0.03937007874, rel=1e-9)
    vol = await user.api.get("/api/designs/convert-units/?value=1&from_unit=in3&to_unit=mm3")
    assert vol.json["converted_value"] == pytest.approx(16387.064, rel=1e-9)
    assert_envelope(
        await user.api.get("/api/designs/convert-units/?value=1&from_unit=mm&to_unit=kg"), 400, "VALIDATION_ERROR"
    )
    bad = await user.api.get("/api/designs/convert-units/?value=1&from_unit=parsec&to_unit=mm")
    assert "from_unit" in assert_envelope(bad, 400, "VALIDATION_ERROR")["field_errors"]
    assert_envelope(
        await user.api.get("/api/designs/convert-units/?value=abc&from_unit=mm&to_unit=m"), 400, "VALIDATION_ERROR"
    )


@pytest.mark.gen_test
async def test_materials_builtin_and_organization_specific(world: World) -> None:
    org, people, _ = await team(world)
    listed = (await people["viewer"].api.get("/api/materials/")).json["results"]
    names = {m["name"] for m in listed}
    assert {
        "Ti-6Al-4V",
        "Aluminium 6061-T6",
        "Aluminium 7075-T6",
        "Stainless 304",
        "Stainless 316",
        "Steel 1018",
        "ABS",
        "PLA",
    } <= names
    body = {"organization": org["_id"], "name": "Unobtanium", "density_kg_m3": 12345.0}
    assert_envelope(await people["member"].api.post("/api/materials/", body), 403, "PERMISSION_DENIED")
    assert (await people["admin"].api.post("/api/materials/", body)).status == 201
    assert await world.services.materials.density(org["_id"], "unobtanium") == 12345.0
