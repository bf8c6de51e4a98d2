"""Markups over real HTTP: 3D positions and cameras, threads, resolution, roles, frozen sessions, ITAR, events."""

from __future__ import annotations

from typing import Any

import pytest

from models.commands import socket_commands
from models.errors import ValidationFailed
from tests.helpers import Caller, Recorder, World, assert_envelope, open_review, ready_design, review_team

EXAMPLE_MARKUP = {
    "position": {"x": 25.5, "y": 12.3, "z": 8.7},
    "camera_position": {"x": 100, "y": 100, "z": 100},
    "camera_target": {"x": 25.5, "y": 12.3, "z": 8.7},
    "annotation_text": "Wall thickness appears insufficient",
    "severity": "MAJOR",
}


async def session(
    world: World, db: Any, classification: str = "UNCLASSIFIED", **org_attrs: Any
) -> tuple[dict[str, Any], dict[str, Caller], dict[str, Any], dict[str, Any]]:
    """A team, a READY design and an open review: author creates it, r1 and r2 review."""
    org, p, series_id = await review_team(world, **org_attrs)
    design = await ready_design(db, p["author"], series_id, classification)
    review = await open_review(p["author"], design["_id"], [p["r1"], p["r2"]])
    return org, p, design, review


async def markup(caller: Caller, review: dict[str, Any], **fields: Any) -> dict[str, Any]:
    resp = await caller.api.post("/api/markups/", {"review_session": review["id"], **EXAMPLE_MARKUP, **fields})
    assert resp.status == 201, resp.body
    return resp.json  # type: ignore[no-any-return]


@pytest.mark.gen_test(timeout=60)
async def test_markup_lifecycle_and_thread(world: World, db: Any, recorder: Recorder) -> None:
    """Create, edit, reply, resolve, reopen, dismiss and delete a markup, with its audit entries and events."""
    _, p, design, review = await session(world, db)
    created = await markup(p["r1"], review, design_asset=design["_id"])
    mid = created["id"]
    assert isinstance(mid, int) and created["author"] == p["r1"].id and created["author_username"] == "r1"
    assert created["position"] == {"x": 25.5, "y": 12.3, "z": 8.7} and created["status"] == "OPEN"
    assert created["camera_position"] == {"x": 100, "y": 100, "z": 100}
    assert created["camera"] == {
        "position": {"x": 100, "y": 100, "z": 100},
        "target": {"x": 25.5, "y": 12.3, "z": 8.7},
        "up": {"x": 0, "y": 1, "z": 0},
        "fov": None,
        "orthographic_scale": None,
    }
    assert created["replies"] == [] and created["design_asset"] == design["_id"]
    assert (await p["r1"].api.get(f"/api/reviews/{review['id']}/")).json["status"] == "IN_PROGRESS"
    nested = await markup(
        p["author"],
        review,
        camera_position=None,
        camera_target=None,
        severity="CRITICAL",
        camera={
            "position": {"x": 0, "y": -50, "z": 10},
            "target": {"x": 0, "y": 0, "z": 0},
            "up": {"x": 0, "y": 0, "z": 1},
            "orthographic_scale": 120.0,
        },
    )
    assert nested["camera"]["orthographic_scale"] == 120.0 and nested["camera_target"] == {"x": 0, "y": 0, "z": 0}

    # The author edits; others may not.
    assert_envelope(
        await p["r2"].api.patch(f"/api/markups/{mid}/", {"annotation_text": "mine now"}), 403, "PERMISSION_DENIED"
    )
    change = {"annotation_text": "Check tolerance here", "severity": "MINOR", "position": {"x": 1, "y": 2, "z": 3}}
    edited = await p["r1"].api.patch(f"/api/markups/{mid}/", change, headers={"If-Match": f'"{created["version"]}"'})
    assert edited.status == 200, edited.body
    assert edited.json["severity"] == "MINOR" and edited.json["version"] == created["version"] + 1
    assert_envelope(
        await p["r1"].api.patch(
            f"/api/markups/{mid}/", {"severity": "MAJOR"}, headers={"If-Match": f'"{created["version"]}"'}
        ),
        409,
        "CONFLICT",
    )

    # Any participant resolves or dismisses; reopening is a PATCH of the status.
    resolved = await p["r2"].api.post(f"/api/markups/{mid}/resolve/", {"resolution_notes": "Increased wall to 3mm"})
    assert resolved.status == 200, resolved.body
    assert resolved.json["status"] == "RESOLVED" and resolved.json["resolved_by"] == p["r2"].id
    assert resolved.json["resolution_notes"] == "Increased wall to 3mm" and resolved.json["resolved_at"]
    assert_envelope(await p["r1"].api.post(f"/api/markups/{mid}/resolve/", {}), 409, "CONFLICT")
    assert_envelope(await p["r1"].api.post(f"/api/markups/{mid}/dismiss/", {"reason": "n/a"}), 409, "CONFLICT")
    reopened = await p["author"].api.patch(f"/api/markups/{mid}/", {"status": "OPEN"})
    assert reopened.json["status"] == "OPEN" and reopened.json["resolved_at"] is None
    assert_envelope(await p["r1"].api.patch(f"/api/markups/{mid}/", {"status": "RESOLVED"}), 400, "VALIDATION_ERROR")
    assert_envelope(await p["r1"].api.post(f"/api/markups/{mid}/dismiss/", {"reason": "  "}), 400, "VALIDATION_ERROR")
    dismissed = await p["r1"].api.post(f"/api/markups/{nested['id']}/dismiss/", {"reason": "Not applicable"})
    assert dismissed.json["status"] == "DISMISSED" and dismissed.json["dismiss_reason"] == "Not applicable"

    # A markup is a thread.
    first = await p["r2"].api.post(f"/api/markups/{mid}/replies/", {"text": "Which face?"})
    assert first.status == 201 and first.json["author_username"] == "r2"
    await p["r1"].api.post(f"/api/markups/{mid}/replies/", {"text": "The inner fillet."})
    assert_envelope(await p["r1"].api.post(f"/api/markups/{mid}/replies/", {"text": ""}), 400, "VALIDATION_ERROR")
    detail = (await p["viewer"].api.get(f"/api/markups/{mid}/")).json
    assert [r["text"] for r in detail["replies"]] == ["Which face?", "The inner fillet."]
    assert detail["reply_count"] == 2
    assert (await p["viewer"].api.get(f"/api/markups/{mid}/replies/")).json["count"] == 2
    assert "replies" not in (await p["viewer"].api.get("/api/markups/")).json["results"][0]

    # Counts by status and severity on the review, and the list's filters.
    counts = (await p["viewer"].api.get(f"/api/reviews/{review['id']}/")).json["markup_counts"]
    assert counts["total"] == 2 and counts["by_status"] == {"OPEN": 1, "RESOLVED": 0, "DISMISSED": 1}
    assert counts["by_severity"] == {"INFO": 0, "MINOR": 1, "MAJOR": 0, "CRITICAL": 1}
    assert counts["open_by_severity"]["MINOR"] == 1 and counts["open_by_severity"]["CRITICAL"] == 0
    api = p["viewer"].api
    for query, expected in (
        (f"review_session={review['id']}", 2),
        (f"design_asset={design['_id']}", 2),
        (f"author={p['r1'].id}", 1),
        ("severity=CRITICAL", 1),
        ("status=OPEN", 1),
        ("status=DISMISSED&severity=CRITICAL", 1),
        ("search=tolerance", 1),
        ("severity=MINOR&author=" + str(p["author"].id), 0),
    ):
        assert (await api.get(f"/api/markups/?{query}")).json["count"] == expected, query
    ordered = (await api.get("/api/markups/?ordering=-severity")).json["results"]
    assert [m["severity"] for m in ordered] == ["CRITICAL", "MINOR"]
    for bad in ("severity=major", "status=CLOSED", "author=me", "review_session=abc", "page_size=0"):
        assert_envelope(await api.get(f"/api/markups/?{bad}"), 400, "VALIDATION_ERROR")

    # The author deletes their own; other reviewers may not.
    assert_envelope(await p["r2"].api.delete(f"/api/markups/{mid}/"), 403, "PERMISSION_DENIED")
    assert (await p["r1"].api.delete(f"/api/markups/{mid}/")).status == 204
    assert_envelope(await p["r1"].api.get(f"/api/markups/{mid}/"), 404, "RESOURCE_NOT_FOUND")

    channel = f"review:{review['id']}"
    assert [e for e in recorder.on(channel) if e.startswith("markup.")] == [
        "markup.created",
        "markup.created",
        "markup.updated",
        "markup.resolved",
        "markup.updated",
        "markup.dismissed",
        "markup.reply",
        "markup.reply",
        "markup.deleted",
    ]
    reply_event = recorder.named("markup.reply")[0][1]
    assert reply_event["markup_id"] == mid and reply_event["reply"]["text"] == "Which face?"
    actions = [
        e["action"]
        async for e in db.audit_log.find({"resource_type": "Markup", "resource_id": str(mid)}, sort=[("_id", 1)])
    ]
    assert actions == ["CREATE", "UPDATE", "RESOLVE", "REOPEN", "REPLY", "REPLY", "DELETE"]


@pytest.mark.gen_test(timeout=60)
async def test_markup_validation(world: World, db: Any) -> None:
    """Positions, cameras, anchors and texts are validated; a refused markup changes nothing."""
    _, p, design, review = await session(world, db)
    api = p["r1"].api
    base = {"review_session": review["id"], **EXAMPLE_MARKUP}
    cases = [
        ({"position": {"x": 1, "y": 2}}, "position.z"),
        ({"position": {"x": "1", "y": 2, "z": 3}}, "position.x"),
        ({"position": {"x": 1e10, "y": 2, "z": 3}}, "position.x"),
        ({"annotation_text": ""}, "annotation_text"),
        ({"annotation_text": " \n\t"}, "annotation_text"),
        ({"annotation_text": "x" * 5001}, "annotation_text"),
        ({"severity": "major"}, "severity"),
        ({"severity": "BLOCKER"}, "severity"),
        ({"colour": "red"}, "colour"),
        ({"design_asset": "00000000-0000-4000-8000-000000000000"}, "design_asset"),
        ({"camera_target": None}, "camera_target"),
        ({"camera": {"position": {"x": 0, "y": 0, "z": 9}, "target": {"x": 0, "y": 0, "z": 0}}}, "camera"),
        (
            {
                "camera_position": None,
                "camera_target": None,
                "camera": {"position": {"x": 1, "y": 1, "z": 1}, "target": {"x": 1, "y": 1, "z": 1}},
            },
            "camera",
        ),
        (
            {
                "camera_position": None,
                "camera_target": None,
                "camera": {
                    "position": {"x": 0, "y": 0, "z": 9},
                    "target": {"x": 0, "y": 0, "z": 0},
                    "up": {"x": 0, "y": 0, "z": 1},
                },
            },
            "camera",
        ),  # looking along up
        (
            {
                "camera_position": None,
                "camera_target": None,
                "camera": {
                    "position": {"x": 0, "y": 0, "z": 9},
                    "target": {"x": 0, "y": 0, "z": 0},
                    "fov": 45,
                    "orthographic_scale": 10,
                },
            },
            "camera",
        ),
        (
            {
                "camera_position": None,
                "camera_target": None,
                "camera": {"position": {"x": 0, "y": 0, "z": 9}, "target": {"x": 0, "y": 0, "z": 0}, "fov": 180},
            },
            "camera.fov",
        ),
        ({"bom_node": 12345}, "bom_node"),
        ({"face_index": -1}, "face_index"),
        ({"bom_node": "7"}, "bom_node"),
    ]
    for change, field in cases:
        body = assert_envelope(await api.post("/api/markups/", {**base, **change}), 400, "VALIDATION_ERROR")
        assert field in body["field_errors"], (change, body)
    # Non-finite numbers are not JSON, but some clients send them anyway.
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        raw = b'{"review_session": "%s", "annotation_text": "x", "position": {"x": %s, "y": 0, "z": 0}}' % (
            review["id"].encode(),
            literal,
        )
        sent = await api.request("POST", "/api/markups/", raw=raw, headers={"Content-Type": "application/json"})
        assert_envelope(sent, 400, "VALIDATION_ERROR")
    assert await db.markups.count_documents({}) == 0

    # Anchors: a BOM node of this design, a face index within the analysed topology.
    await db.bom_nodes.insert_one({"_id": 77, "design_id": design["_id"], "organization_id": design["organization_id"]})
    await db.designs.update_one({"_id": design["_id"]}, {"$set": {"analysis": {"topology": {"faces": 12}}}})
    anchored = await markup(p["r1"], review, bom_node=77, face_index=11)
    assert anchored["bom_node"] == 77 and anchored["face_index"] == 11
    body = assert_envelope(await api.post("/api/markups/", {**base, "face_index": 12}), 400, "VALIDATION_ERROR")
    assert body["field_errors"]["face_index"] == ["The design has 12 faces (0-11)."]
    cleared = await api.patch(
        f"/api/markups/{anchored['id']}/", {"bom_node": None, "camera_position": None, "camera_target": None}
    )
    assert cleared.json["bom_node"] is None and cleared.json["camera"] is None and cleared.json["face_index"] == 11
    assert (await api.get("/api/markups/?bom_node=null")).json["count"] == 1
    assert_envelope(
        await api.patch(f"/api/markups/{anchored['id']}/", {"annotation_text": None}), 400, "VALIDATION_ERROR"
    )


@pytest.mark.gen_test(timeout=60)
async def test_markup_permissions_by_role(world: World, db: Any) -> None:
    """Who may create, edit and moderate markups in a session."""
    _, p, design, review = await session(world, db)
    # Participants (creator, reviewers) and ADMIN/OWNER create; other members and viewers only read.
    for name in ("member", "viewer", "low", "foreign"):
        assert_envelope(
            await p[name].api.post("/api/markups/", {"review_session": review["id"], **EXAMPLE_MARKUP}),
            403,
            "PERMISSION_DENIED",
        )
    assert_envelope(
        await p["outsider"].api.post("/api/markups/", {"review_session": review["id"], **EXAMPLE_MARKUP}),
        404,
        "RESOURCE_NOT_FOUND",
    )
    by_owner = await markup(p["owner"], review)
    by_admin = await markup(p["admin"], review)
    by_author = await markup(p["author"], review)
    by_r2 = await markup(p["r2"], review)
    for name in ("member", "viewer", "low", "r1"):
        assert (await p[name].api.get("/api/markups/")).json["count"] == 4
        assert (await p[name].api.get(f"/api/markups/{by_r2['id']}/")).status == 200
    assert (await p["outsider"].api.get("/api/markups/")).json["count"] == 0
    assert_envelope(await p["outsider"].api.get(f"/api/markups/{by_r2['id']}/"), 404, "RESOURCE_NOT_FOUND")
    assert_envelope(await p["outsider"].api.get("/api/markups/999999/"), 404, "RESOURCE_NOT_FOUND")
    # Non-participants neither resolve, reply, edit nor delete.
    mid = by_r2["id"]
    for name in ("member", "viewer"):
        api = p[name].api
        assert_envelope(await api.post(f"/api/markups/{mid}/resolve/", {}), 403, "PERMISSION_DENIED")
        assert_envelope(await api.post(f"/api/markups/{mid}/dismiss/", {"reason": "no"}), 403, "PERMISSION_DENIED")
        assert_envelope(await api.post(f"/api/markups/{mid}/replies/", {"text": "hi"}), 403, "PERMISSION_DENIED")
        assert_envelope(await api.patch(f"/api/markups/{mid}/", {"status": "OPEN"}), 403, "PERMISSION_DENIED")
        assert_envelope(await api.delete(f"/api/markups/{mid}/"), 403, "PERMISSION_DENIED")
    # ADMIN/OWNER moderate: they resolve, reply and delete others' markups, but do not rewrite them.
    assert (await p["admin"].api.post(f"/api/markups/{by_author['id']}/resolve/", {})).status == 200
    assert (await p["owner"].api.post(f"/api/markups/{mid}/replies/", {"text": "noted"})).status == 201
    assert_envelope(
        await p["admin"].api.patch(f"/api/markups/{mid}/", {"annotation_text": "edited"}), 403, "PERMISSION_DENIED"
    )
    assert (await p["admin"].api.delete(f"/api/markups/{by_owner['id']}/")).status == 204
    assert (await p["r1"].api.post(f"/api/markups/{by_admin['id']}/dismiss/", {"reason": "dup"})).status == 200
    assert (await p["r1"].api.get("/api/markups/")).json["count"] == 3


@pytest.mark.gen_test(timeout=60)
async def test_nothing_changes_in_a_closed_session(world: World, db: Any) -> None:
    _, p, design, review = await session(world, db)
    first = await markup(p["r1"], review)
    second = await markup(p["r2"], review)
    await p["r1"].api.post(f"/api/markups/{second['id']}/resolve/", {})
    await p["r1"].api.post(f"/api/reviews/{review['id']}/approve/", {})
    done = await p["r2"].api.post(f"/api/reviews/{review['id']}/approve/", {})
    assert done.json["status"] == "COMPLETED" and done.json["markup_counts"]["by_status"]["RESOLVED"] == 1
    mid = first["id"]
    for name in ("r1", "admin"):
        api = p[name].api
        assert_envelope(
            await api.post("/api/markups/", {"review_session": review["id"], **EXAMPLE_MARKUP}), 409, "CONFLICT"
        )
        assert_envelope(await api.post(f"/api/markups/{mid}/resolve/", {}), 409, "CONFLICT")
        assert_envelope(await api.post(f"/api/markups/{mid}/dismiss/", {"reason": "late"}), 409, "CONFLICT")
        assert_envelope(await api.post(f"/api/markups/{mid}/replies/", {"text": "late"}), 409, "CONFLICT")
        assert_envelope(await api.patch(f"/api/markups/{second['id']}/", {"status": "OPEN"}), 409, "CONFLICT")
        assert_envelope(await api.delete(f"/api/markups/{mid}/"), 409, "CONFLICT")
    assert_envelope(await p["r1"].api.patch(f"/api/markups/{mid}/", {"annotation_text": "late"}), 409, "CONFLICT")
    assert (await p["r1"].api.get(f"/api/markups/{mid}/")).json["annotation_text"] == EXAMPLE_MARKUP["annotation_text"]

    # Same for a cancelled one.
    other = await ready_design(db, p["author"], design["series_id"])
    cancelled = await open_review(p["author"], other["_id"], [p["r1"]])
    late = await markup(p["r1"], cancelled)
    await p["author"].api.post(f"/api/reviews/{cancelled['id']}/cancel/", {})
    assert_envelope(await p["r1"].api.post(f"/api/markups/{late['id']}/replies/", {"text": "x"}), 409, "CONFLICT")
    assert_envelope(
        await p["r1"].api.post("/api/markups/", {"review_session": cancelled["id"], **EXAMPLE_MARKUP}), 409, "CONFLICT"
    )


@pytest.mark.gen_test(timeout=60)
async def test_non_us_member_never_sees_itar_markups(world: World, db: Any) -> None:
    """Markups of an ITAR design stay out of a foreign member's lists, details and counts."""
    org, p, design, review = await session(world, db, "ITAR")
    plain_design = await ready_design(db, p["author"], design["series_id"])
    plain_review = await open_review(p["author"], plain_design["_id"], [p["r1"]])
    hidden = await markup(p["r1"], review, severity="CRITICAL")
    await p["r2"].api.post(f"/api/markups/{hidden['id']}/replies/", {"text": "export-controlled detail"})
    shown = await markup(p["r1"], plain_review)
    foreign = p["foreign"].api
    for query in (
        "",
        "?severity=CRITICAL",
        f"?review_session={review['id']}",
        f"?design_asset={design['_id']}",
        f"?author={p['r1'].id}",
        "?search=wall",
        "?status=OPEN",
    ):
        listed = (await foreign.get(f"/api/markups/{query}")).json
        assert hidden["id"] not in [m["id"] for m in listed["results"]], query
        assert listed["count"] == (
            0
            if query in ("?severity=CRITICAL", f"?review_session={review['id']}", f"?design_asset={design['_id']}")
            else 1
        ), query
    assert (await foreign.get("/api/markups/")).json["results"][0]["id"] == shown["id"]
    for path in (
        f"/api/markups/{hidden['id']}/",
        f"/api/markups/{hidden['id']}/replies/",
        f"/api/reviews/{review['id']}/",
    ):
        body = assert_envelope(await foreign.get(path), 403, "ITAR_VIOLATION")
        assert "export-controlled" not in str(body)
    for method, path, payload in (
        ("POST", f"/api/markups/{hidden['id']}/replies/", {"text": "x"}),
        ("POST", f"/api/markups/{hidden['id']}/resolve/", {}),
        ("PATCH", f"/api/markups/{hidden['id']}/", {"status": "OPEN"}),
        ("DELETE", f"/api/markups/{hidden['id']}/", None),
    ):
        assert_envelope(await foreign.request(method, path, payload), 403, "ITAR_VIOLATION")
    reviews = (await foreign.get("/api/reviews/")).json
    assert reviews["count"] == 1 and reviews["results"][0]["id"] == plain_review["id"]
    # The cleared see everything, counts included.
    assert (await p["r2"].api.get("/api/markups/")).json["count"] == 2
    assert (await p["member"].api.get(f"/api/reviews/{review['id']}/")).json["markup_counts"]["total"] == 1


@pytest.mark.gen_test(timeout=60)
async def test_socket_markup_commands(world: World, db: Any, services: Any, recorder: Recorder) -> None:
    _, p, design, review = await session(world, db)
    commands = socket_commands(services.reviews, services.markups)
    r1 = await services.identity.principal_for(p["r1"].id)
    r2 = await services.identity.principal_for(p["r2"].id)
    created = await commands["markup.create"](r1, {"review_session": review["id"], **EXAMPLE_MARKUP})
    assert created["status"] == "OPEN" and created["author"] == p["r1"].id
    with pytest.raises(ValidationFailed) as bad:
        await commands["markup.create"](r1, {"review_session": review["id"], **EXAMPLE_MARKUP, "severity": "major"})
    assert "severity" in bad.value.field_errors
    with pytest.raises(ValidationFailed):
        await commands["markup.create"](
            r1, {"review_session": review["id"], **EXAMPLE_MARKUP, "position": {"x": float("nan"), "y": 0, "z": 0}}
        )
    updated = await commands["markup.update"](r1, {"markup_id": created["id"], "severity": "CRITICAL"})
    assert updated["severity"] == "CRITICAL" and updated["annotation_text"] == EXAMPLE_MARKUP["annotation_text"]
    resolved = await commands["markup.resolve"](r2, {"markup_id": created["id"], "resolution_notes": "fixed"})
    assert resolved["status"] == "RESOLVED"
    await commands["markup.update"](r2, {"markup_id": created["id"], "status": "OPEN"})
    dismissed = await commands["markup.dismiss"](r2, {"markup_id": created["id"], "reason": "duplicate"})
    assert dismissed["status"] == "DISMISSED"
    assert [e for e in recorder.on(f"review:{review['id']}") if e.startswith("markup.")] == [
        "markup.created",
        "markup.updated",
        "markup.resolved",
        "markup.updated",
        "markup.dismissed",
    ]
    assert (await p["viewer"].api.get(f"/api/markups/{created['id']}/")).json["status"] == "DISMISSED"
