"""Review sessions over real HTTP: decision rules, signed votes, self-approval, clearance, roles, events."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from models.commands import socket_commands
from models.database import utcnow
from models.errors import PermissionDenied, ValidationFailed
from models.reviews import decide
from tests.helpers import (
    PASSWORD,
    Recorder,
    World,
    assert_envelope,
    due,
    open_review,
    ready_design,
    review_team,
)


async def design_status(db: Any, design_id: str) -> str:
    return (await db.designs.find_one({"_id": design_id}))["status"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------- decision rules


@pytest.mark.parametrize(
    "rule,threshold,veto,votes,expected",
    [
        ("ALL", None, True, ["APPROVE", "APPROVE"], None),
        ("ALL", None, True, ["APPROVE", "APPROVE", "APPROVE"], "APPROVED"),
        ("ALL", None, False, ["REJECT"], "REJECTED"),  # ALL can no longer be met
        ("ANY", None, True, ["APPROVE"], "APPROVED"),
        ("ANY", None, True, ["REJECT"], "REJECTED"),
        ("ANY", None, False, ["REJECT", "REJECT"], None),
        ("ANY", None, False, ["REJECT", "REJECT", "APPROVE"], "APPROVED"),
        ("ANY", None, False, ["REJECT", "REJECT", "REJECT"], "REJECTED"),
        ("THRESHOLD", 2, True, ["APPROVE", "REJECT"], "REJECTED"),
        ("THRESHOLD", 2, False, ["APPROVE", "REJECT"], None),
        ("THRESHOLD", 2, False, ["APPROVE", "REJECT", "APPROVE"], "APPROVED"),
        ("THRESHOLD", 2, False, ["REJECT", "REJECT"], "REJECTED"),
    ],
)
def test_decision_rules(rule: str, threshold: int | None, veto: bool, votes: list[str], expected: str | None) -> None:
    doc = {
        "reviewers": [1, 2, 3],
        "decision_rule": rule,
        "threshold": threshold,
        "veto": veto,
        "votes": {str(i + 1): {"decision": d} for i, d in enumerate(votes)},
    }
    outcome = decide(doc)
    assert (outcome.value if outcome else None) == expected
    # A vote by someone no longer on the panel never counts.
    assert decide({**doc, "votes": {"99": {"decision": "REJECT"}}}) is None


# ---------------------------------------------------------------- complete workflows


@pytest.mark.gen_test(timeout=60)
async def test_all_rule_three_reviewers_approve(world: World, db: Any, recorder: Recorder) -> None:
    """The ALL rule end to end: three approvals complete the session and approve the design, audited and announced."""
    org, p, series_id = await review_team(world)
    design = await ready_design(db, p["author"], series_id)
    review = await open_review(p["author"], design["_id"], [p["r1"], p["r2"], p["r3"]])
    rid = review["id"]
    assert review["status"] == "PENDING" and review["decision_rule"] == "ALL" and review["required_approvals"] == 3
    assert review["created_by"] == p["author"].id and review["created_by_username"] == "author"
    assert [r["username"] for r in review["reviewer_details"]] == ["r1", "r2", "r3"]
    assert review["tally"] == {"approved": 0, "rejected": 0, "pending": 3, "required": 3, "reviewers": 3}
    assert await design_status(db, design["_id"]) == "IN_REVIEW"
    # One open review per design version.
    assert_envelope(
        await p["author"].api.post("/api/reviews/", {"design_asset": design["_id"], "reviewers": [p["r1"].id]}),
        409,
        "CONFLICT",
    )
    assert_envelope(
        await p["author"].api.post(f"/api/designs/{design['_id']}/start_review/", {"reviewer_ids": [p["r1"].id]}),
        409,
        "CONFLICT",
    )

    first = await p["r1"].api.post(f"/api/reviews/{rid}/approve/", {"comments": "Dimensions OK", "approved": True})
    assert first.status == 200, first.body
    assert first.json["status"] == "IN_PROGRESS" and first.json["tally"]["approved"] == 1
    assert first.json["started_at"] is not None
    second = await p["r2"].api.post(f"/api/reviews/{rid}/approve/", {"comments": "Material OK"})
    assert second.json["status"] == "IN_PROGRESS" and second.json["tally"]["pending"] == 1
    # The design-level approve votes in the design's open review (r3 is a VIEWER: reviewing is reading).
    third = await p["r3"].api.post(f"/api/designs/{design['_id']}/approve/", {"notes": "Design meets all requirements"})
    assert third.status == 200, third.body
    done = third.json
    assert done["status"] == "COMPLETED" and done["outcome"] == "APPROVED" and done["completed_at"]
    assert await design_status(db, design["_id"]) == "APPROVED"
    votes = {v["username"]: v for v in done["votes"]}
    assert votes["r3"]["comments"] == "Design meets all requirements"
    assert all(
        v["decision"] == "APPROVE" and v["file_hash"] == design["file_hash"] and v["voted_at"] for v in votes.values()
    )
    assert done["markup_counts"]["total"] == 0

    # Completed: later votes are refused, and nothing reopens it.
    assert_envelope(await p["r1"].api.post(f"/api/reviews/{rid}/reject/", {"reason": "OTHER"}), 409, "CONFLICT")
    assert_envelope(await p["r1"].api.post(f"/api/designs/{design['_id']}/approve/", {}), 409, "CONFLICT")
    assert_envelope(await p["author"].api.patch(f"/api/reviews/{rid}/", {"notes": "x"}), 409, "CONFLICT")
    assert_envelope(await p["author"].api.post(f"/api/reviews/{rid}/cancel/", {}), 409, "CONFLICT")

    actions = [
        (e["action"], e["resource_type"])
        async for e in db.audit_log.find({"resource_id": {"$in": [rid, design["_id"]]}}, sort=[("_id", 1)])
    ]
    assert actions[-7:] == [
        ("CREATE", "ReviewSession"),
        ("STATUS_CHANGE", "DesignAsset"),
        ("APPROVE", "ReviewSession"),
        ("APPROVE", "ReviewSession"),
        ("APPROVE", "ReviewSession"),
        ("COMPLETE", "ReviewSession"),
        ("STATUS_CHANGE", "DesignAsset"),
    ]

    assert recorder.on(f"review:{rid}") == [
        "review.created",
        "review.vote",
        "review.vote",
        "review.vote",
        "review.completed",
    ]
    assert recorder.on(f"design:{design['_id']}")[-4:] == [
        "design.status",
        "review.created",
        "design.status",
        "review.completed",
    ]
    assert "review.completed" in recorder.on(f"org:{org['_id']}")
    ((_, completed),) = [(c, d) for c, d in recorder.named("review.completed") if c == f"review:{rid}"]
    assert completed["outcome"] == "APPROVED" and completed["tally"]["approved"] == 3
    vote_events = [d for c, d in recorder.named("review.vote") if c == f"review:{rid}"]
    assert [d["username"] for d in vote_events] == ["r1", "r2", "r3"] and "password" not in vote_events[0]


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_starts_and_votes_settle_once(world: World, db: Any) -> None:
    _, p, series_id = await review_team(world)
    design = await ready_design(db, p["author"], series_id)
    body = {"design_asset": design["_id"], "reviewers": [p["r1"].id, p["r2"].id, p["r3"].id]}
    starts = await asyncio.gather(*(p[n].api.post("/api/reviews/", body) for n in ("author", "member", "admin", "r1")))
    assert sorted(r.status for r in starts) == [201, 409, 409, 409]
    assert await db.reviews.count_documents({}) == 1
    rid = next(r.json["id"] for r in starts if r.status == 201)
    votes = await asyncio.gather(*(p[n].api.post(f"/api/reviews/{rid}/approve/", {}) for n in ("r1", "r2", "r3")))
    assert [v.status for v in votes] == [200, 200, 200]
    final = (await p["r1"].api.get(f"/api/reviews/{rid}/")).json
    assert final["status"] == "COMPLETED" and final["tally"]["approved"] == 3
    assert await db.audit_log.count_documents({"resource_id": rid, "action": "COMPLETE"}) == 1
    assert await db.audit_log.count_documents({"resource_id": design["_id"], "action": "STATUS_CHANGE"}) == 2
    assert await design_status(db, design["_id"]) == "APPROVED"


@pytest.mark.gen_test(timeout=60)
async def test_one_rejection_rejects_the_design(world: World, db: Any, recorder: Recorder) -> None:
    """With veto, one rejection completes the session as rejected, whatever the others voted."""
    _, p, series_id = await review_team(world)
    design = await ready_design(db, p["author"], series_id)
    # The design-level start_review/ and its answer.
    started = await p["author"].api.post(
        f"/api/designs/{design['_id']}/start_review/",
        {
            "reviewer_ids": [p["r1"].id, p["r2"].id, p["r3"].id],
            "due_date": due(),
            "notes": "Please review before production",
        },
    )
    assert started.status == 201, started.body
    assert started.json["status"] == "IN_REVIEW" and started.json["review"]["status"] == "PENDING"
    rid = started.json["review_session_id"]
    await p["r1"].api.post(f"/api/reviews/{rid}/approve/", {"comments": "fine"})

    for bad in (
        {"comments": "x"},
        {"reason": "incorrect_dimensions"},
        {"reason": "TOO_UGLY"},
        {"reason": "INCORRECT_DIMENSIONS", "extra": 1},
    ):
        assert_envelope(await p["r2"].api.post(f"/api/reviews/{rid}/reject/", bad), 400, "VALIDATION_ERROR")
    assert_envelope(
        await p["r2"].api.post(f"/api/reviews/{rid}/approve/", {"approved": False}), 400, "VALIDATION_ERROR"
    )

    rejected = await p["r2"].api.post(
        f"/api/reviews/{rid}/reject/",
        {"comments": "Dimensions do not match specification", "reason": "INCORRECT_DIMENSIONS"},
    )
    assert rejected.status == 200, rejected.body
    assert rejected.json["status"] == "COMPLETED" and rejected.json["outcome"] == "REJECTED"
    vote = next(v for v in rejected.json["votes"] if v["reviewer"] == p["r2"].id)
    assert vote["decision"] == "REJECT" and vote["reason"] == "INCORRECT_DIMENSIONS"
    assert await design_status(db, design["_id"]) == "REJECTED"
    assert_envelope(await p["r3"].api.post(f"/api/reviews/{rid}/approve/", {}), 409, "CONFLICT")
    listed = (await p["member"].api.get(f"/api/reviews/?design_asset={design['_id']}&status=COMPLETED")).json
    assert listed["count"] == 1 and listed["results"][0]["outcome"] == "REJECTED"
    assert (await p["member"].api.get("/api/reviews/?outcome=APPROVED")).json["count"] == 0


@pytest.mark.gen_test(timeout=60)
async def test_threshold_two_of_three_with_a_changed_vote(world: World, db: Any) -> None:
    """THRESHOLD 2 of 3 without veto, with a reviewer changing their vote before the session completes."""
    _, p, series_id = await review_team(world)
    design = await ready_design(db, p["author"], series_id)
    panel = [p["r1"], p["r2"], p["r3"]]
    base = {"design_asset": design["_id"], "reviewers": [r.id for r in panel]}
    for bad, field in (
        ({"decision_rule": "THRESHOLD"}, "threshold"),
        ({"decision_rule": "THRESHOLD", "threshold": 4}, "threshold"),
        ({"decision_rule": "ALL", "threshold": 2}, "threshold"),
        ({"decision_rule": "MAJORITY"}, "decision_rule"),
        ({"due_date": "2020-01-01T00:00:00Z"}, "due_date"),
        ({"due_date": "2030-01-01T00:00:00"}, "due_date"),
        ({"reviewers": []}, "reviewers"),
        ({"reviewers": [p["r1"].id, p["r1"].id]}, "reviewers"),
        ({"reviewers": ["5"]}, "reviewers.0"),
    ):
        body = assert_envelope(await p["author"].api.post("/api/reviews/", {**base, **bad}), 400, "VALIDATION_ERROR")
        assert field in body["field_errors"], (bad, body)
    assert await design_status(db, design["_id"]) == "READY"  # refusals claim nothing

    review = await open_review(p["author"], design["_id"], panel, decision_rule="THRESHOLD", threshold=2, veto=False)
    rid = review["id"]
    assert review["required_approvals"] == 2 and review["veto"] is False
    first = await p["r1"].api.post(f"/api/reviews/{rid}/reject/", {"reason": "TOLERANCE_ISSUE", "comments": "hmm"})
    assert first.json["status"] == "IN_PROGRESS" and first.json["tally"]["rejected"] == 1
    # r1 looks again and changes their vote; only the current vote counts.
    changed = await p["r1"].api.post(f"/api/reviews/{rid}/approve/", {"comments": "Tolerance is in the drawing"})
    assert changed.json["status"] == "IN_PROGRESS"
    assert changed.json["tally"] == {"approved": 1, "rejected": 0, "pending": 2, "required": 2, "reviewers": 3}
    r1_vote = next(v for v in changed.json["votes"] if v["reviewer"] == p["r1"].id)
    assert r1_vote["decision"] == "APPROVE" and r1_vote["reason"] is None
    # Once voting started, the panel and rule are fixed.
    assert_envelope(
        await p["author"].api.patch(f"/api/reviews/{rid}/", {"reviewers": [p["r1"].id, p["r2"].id]}), 409, "CONFLICT"
    )
    done = await p["r2"].api.post(f"/api/reviews/{rid}/approve/", {})
    assert done.json["status"] == "COMPLETED" and done.json["outcome"] == "APPROVED"
    assert next(v for v in done.json["votes"] if v["reviewer"] == p["r3"].id)["decision"] is None
    assert_envelope(await p["r3"].api.post(f"/api/reviews/{rid}/approve/", {}), 409, "CONFLICT")
    assert await design_status(db, design["_id"]) == "APPROVED"
    votes_of = {"resource_id": rid, "action": {"$in": ["APPROVE", "REJECT"]}}
    history = [(e["action"], e["changes"]) async for e in db.audit_log.find(votes_of, sort=[("_id", 1)])]
    assert [action for action, _ in history[:2]] == ["REJECT", "APPROVE"]
    assert history[1][1]["previous"]["decision"] == "REJECT" and history[1][1]["decision"] == "APPROVE"

    # The default veto: under the same 2-of-3 rule one rejection ends it.
    second = await ready_design(db, p["author"], series_id)
    vetoed = await open_review(p["author"], second["_id"], panel, decision_rule="THRESHOLD", threshold=2)
    out = await p["r3"].api.post(f"/api/reviews/{vetoed['id']}/reject/", {"reason": "SAFETY_CONCERN"})
    assert out.json["outcome"] == "REJECTED" and await design_status(db, second["_id"]) == "REJECTED"


@pytest.mark.gen_test(timeout=60)
async def test_the_uploader_may_not_approve_their_own_design(world: World, db: Any) -> None:
    org, p, series_id = await review_team(world)
    design = await ready_design(db, p["author"], series_id)
    body = assert_envelope(
        await p["member"].api.post(
            "/api/reviews/", {"design_asset": design["_id"], "reviewers": [p["r1"].id, p["author"].id]}
        ),
        400,
        "VALIDATION_ERROR",
    )
    assert "author" in body["detail"] and "self-approval" in body["field_errors"]["reviewers"][0]
    review = await open_review(p["member"], design["_id"], [p["r1"], p["r2"]])
    # The uploader is no reviewer here, and the design-level approve is a reviewer's vote.
    assert_envelope(await p["author"].api.post(f"/api/designs/{design['_id']}/approve/", {}), 403, "PERMISSION_DENIED")
    assert_envelope(await p["author"].api.post(f"/api/reviews/{review['id']}/approve/", {}), 403, "PERMISSION_DENIED")

    # An organization that allows self-approval may put the uploader on the panel...
    await db.organizations.update_one({"_id": org["_id"]}, {"$set": {"allow_self_approval": True}})
    other = await ready_design(db, p["author"], series_id)
    own = await open_review(p["member"], other["_id"], [p["author"], p["r1"]])
    ok = await p["author"].api.post(f"/api/reviews/{own['id']}/approve/", {"comments": "mine, and fine"})
    assert ok.status == 200 and ok.json["tally"]["approved"] == 1
    # ...and once it stops allowing it, the uploader's approval is refused (a rejection still counts).
    await db.organizations.update_one({"_id": org["_id"]}, {"$set": {"allow_self_approval": False}})
    assert_envelope(await p["author"].api.post(f"/api/reviews/{own['id']}/approve/", {}), 403, "PERMISSION_DENIED")
    out = await p["author"].api.post(f"/api/reviews/{own['id']}/reject/", {"reason": "OTHER"})
    assert out.status == 200 and out.json["outcome"] == "REJECTED"


@pytest.mark.gen_test(timeout=60)
async def test_reviewers_must_be_members_cleared_for_the_design(world: World, db: Any) -> None:
    """Reviewers must be active members cleared for the design; each refusal names whom to replace."""
    _, p, series_id = await review_team(world)
    itar = await ready_design(db, p["author"], series_id, "ITAR")
    secret = await ready_design(db, p["author"], series_id, "SECRET")
    body = assert_envelope(
        await p["author"].api.post(
            "/api/reviews/", {"design_asset": itar["_id"], "reviewers": [p["r1"].id, p["foreign"].id]}
        ),
        400,
        "VALIDATION_ERROR",
    )
    assert body["field_errors"]["reviewers"] == [
        f"foreign (user {p['foreign'].id}) may not see this ITAR-controlled design (US persons only)."
    ]
    body = assert_envelope(
        await p["author"].api.post(
            "/api/reviews/", {"design_asset": secret["_id"], "reviewers": [p["low"].id, p["outsider"].id, 999999]}
        ),
        400,
        "VALIDATION_ERROR",
    )
    problems = body["field_errors"]["reviewers"]
    assert "low (user" in problems[0] and "UNCLASSIFIED clearance" in problems[0] and "SECRET" in problems[0]
    assert problems[1] == f"User {p['outsider'].id} is not a member of the design's organization."
    assert problems[2] == "User 999999 is not a member of the design's organization."
    await db.users.update_one({"_id": p["r2"].id}, {"$set": {"is_active": False}})
    body = assert_envelope(
        await p["author"].api.post("/api/reviews/", {"design_asset": secret["_id"], "reviewers": [p["r2"].id]}),
        400,
        "VALIDATION_ERROR",
    )
    assert "deactivated" in body["field_errors"]["reviewers"][0]
    assert await design_status(db, itar["_id"]) == "READY"

    # Who may open a review at all: MEMBER and up, of a design they can see, that is READY.
    assert_envelope(
        await p["viewer"].api.post("/api/reviews/", {"design_asset": secret["_id"], "reviewers": [p["r1"].id]}),
        403,
        "PERMISSION_DENIED",
    )
    assert_envelope(
        await p["foreign"].api.post("/api/reviews/", {"design_asset": itar["_id"], "reviewers": [p["r1"].id]}),
        403,
        "ITAR_VIOLATION",
    )
    assert_envelope(
        await p["outsider"].api.post("/api/reviews/", {"design_asset": itar["_id"], "reviewers": [p["r1"].id]}),
        404,
        "RESOURCE_NOT_FOUND",
    )
    await db.designs.update_one({"_id": secret["_id"]}, {"$set": {"status": "PROCESSING"}})
    assert_envelope(
        await p["author"].api.post("/api/reviews/", {"design_asset": secret["_id"], "reviewers": [p["r1"].id]}),
        409,
        "CONFLICT",
    )
    ok = await p["author"].api.post("/api/reviews/", {"design_asset": itar["_id"], "reviewers": [p["r1"].id]})
    assert ok.status == 201 and ok.json["classification"] == "ITAR"


@pytest.mark.gen_test(timeout=60)
async def test_password_is_re_entered_to_sign(world: World, db: Any) -> None:
    _, p, series_id = await review_team(world, require_password_to_sign=True)
    design = await ready_design(db, p["author"], series_id)
    review = await open_review(p["author"], design["_id"], [p["r1"], p["r2"]])
    rid = review["id"]
    body = assert_envelope(await p["r1"].api.post(f"/api/reviews/{rid}/approve/", {}), 400, "VALIDATION_ERROR")
    assert "password" in body["field_errors"]
    body = assert_envelope(
        await p["r1"].api.post(f"/api/reviews/{rid}/approve/", {"password": "not-my-password"}),
        403,
        "PERMISSION_DENIED",
    )
    assert body["field_errors"] == {"password": ["Incorrect password."]}
    failed = await db.audit_log.find_one({"action": "SIGNATURE_FAILED", "resource_id": rid})
    assert failed is not None and failed["actor_id"] == p["r1"].id
    detail = (await p["r1"].api.get(f"/api/reviews/{rid}/")).json
    assert detail["tally"]["approved"] == 0 and detail["status"] == "PENDING"
    signed = await p["r1"].api.post(f"/api/reviews/{rid}/approve/", {"password": PASSWORD, "comments": "signed"})
    assert signed.status == 200, signed.body
    assert next(v for v in signed.json["votes"] if v["reviewer"] == p["r1"].id)["signed"] is True
    # Rejecting is signing too; and guessing is bounded.
    for _ in range(5):
        assert (
            await p["r2"].api.post(f"/api/reviews/{rid}/reject/", {"reason": "OTHER", "password": "guess-guess"})
        ).status == 403
    locked = await p["r2"].api.post(f"/api/reviews/{rid}/reject/", {"reason": "OTHER", "password": PASSWORD})
    assert_envelope(locked, 429, "RATE_LIMIT_EXCEEDED")
    assert await db.audit_log.count_documents({"action": "SIGNATURE_FAILED", "actor_id": p["r2"].id}) == 5
    assert (await p["r1"].api.get(f"/api/reviews/{rid}/")).json["status"] == "IN_PROGRESS"


@pytest.mark.gen_test(timeout=60)
async def test_who_reads_votes_manages_and_cancels(world: World, db: Any, recorder: Recorder) -> None:
    """Who reads a session, who votes in it, who changes and who cancels it."""
    org, p, series_id = await review_team(world)
    design = await ready_design(db, p["author"], series_id)
    review = await open_review(p["r1"], design["_id"], [p["r2"], p["r3"]])
    rid = review["id"]
    # Creator, reviewers, ADMIN/OWNER and every other member who can see the design read it.
    for name in ("r1", "r2", "r3", "admin", "owner", "author", "member", "viewer", "low"):
        resp = await p[name].api.get(f"/api/reviews/{rid}/")
        assert resp.status == 200, (name, resp.body)
        assert resp.headers["ETag"] == f'"{resp.json["version"]}"'
        assert (await p[name].api.get("/api/reviews/")).json["count"] == 1
    assert_envelope(await p["outsider"].api.get(f"/api/reviews/{rid}/"), 404, "RESOURCE_NOT_FOUND")
    assert (await p["outsider"].api.get("/api/reviews/")).json["count"] == 0
    assert_envelope(await p["outsider"].api.post(f"/api/reviews/{rid}/approve/", {}), 404, "RESOURCE_NOT_FOUND")

    # Only assigned reviewers vote, whatever their role.
    for name in ("r1", "admin", "owner", "member"):
        assert_envelope(await p[name].api.post(f"/api/reviews/{rid}/approve/", {}), 403, "PERMISSION_DENIED")
    # Only the creator or ADMIN/OWNER change or cancel it.
    for name in ("r2", "member", "author"):
        assert_envelope(await p[name].api.patch(f"/api/reviews/{rid}/", {"notes": "mine"}), 403, "PERMISSION_DENIED")
        assert_envelope(await p[name].api.post(f"/api/reviews/{rid}/cancel/", {}), 403, "PERMISSION_DENIED")
    change = {
        "notes": "Focus on the root",
        "status": "IN_PROGRESS",
        "reviewers": [p["r2"].id, p["r3"].id, p["admin"].id],
    }
    patched = await p["r1"].api.patch(f"/api/reviews/{rid}/", change, headers={"If-Match": f'"{review["version"]}"'})
    assert patched.status == 200, patched.body
    assert patched.json["status"] == "IN_PROGRESS" and patched.json["reviewers"][-1] == p["admin"].id
    assert_envelope(
        await p["r1"].api.patch(
            f"/api/reviews/{rid}/", {"notes": "stale"}, headers={"If-Match": f'"{review["version"]}"'}
        ),
        409,
        "CONFLICT",
    )
    assert_envelope(
        await p["r1"].api.patch(f"/api/reviews/{rid}/", {"reviewers": [p["outsider"].id]}), 400, "VALIDATION_ERROR"
    )
    assert_envelope(await p["r1"].api.patch(f"/api/reviews/{rid}/", {"status": "COMPLETED"}), 400, "VALIDATION_ERROR")
    assert_envelope(await p["r1"].api.patch(f"/api/reviews/{rid}/", {"reviewers": None}), 400, "VALIDATION_ERROR")
    await p["admin"].api.post(f"/api/reviews/{rid}/approve/", {})

    cancelled = await p["admin"].api.post(f"/api/reviews/{rid}/cancel/", {"reason": "Superseded by v2"})
    assert cancelled.status == 200, cancelled.body
    assert cancelled.json["status"] == "CANCELLED" and cancelled.json["cancel_reason"] == "Superseded by v2"
    assert cancelled.json["cancelled_by"] == p["admin"].id and cancelled.json["completed_at"] is None
    assert await design_status(db, design["_id"]) == "READY"
    assert_envelope(await p["r2"].api.post(f"/api/reviews/{rid}/approve/", {}), 409, "CONFLICT")
    assert "review.cancelled" in recorder.on(f"review:{rid}") and "review.cancelled" in recorder.on(f"org:{org['_id']}")
    assert await db.audit_log.count_documents({"resource_id": rid, "action": "CANCEL"}) == 1
    # The design can go to review again, and the creator may cancel through PATCH as well.
    again = await open_review(p["r1"], design["_id"], [p["r2"]])
    assert_envelope(
        await p["r1"].api.patch(f"/api/reviews/{again['id']}/", {"status": "CANCELLED", "notes": "x"}),
        400,
        "VALIDATION_ERROR",
    )
    gone = await p["r1"].api.patch(f"/api/reviews/{again['id']}/", {"status": "CANCELLED"})
    assert gone.json["status"] == "CANCELLED" and await design_status(db, design["_id"]) == "READY"


@pytest.mark.gen_test(timeout=60)
async def test_non_us_member_never_sees_itar_reviews(world: World, db: Any, recorder: Recorder) -> None:
    org, p, series_id = await review_team(world)
    plain = await ready_design(db, p["author"], series_id)
    itar = await ready_design(db, p["author"], series_id, "ITAR")
    visible = await open_review(p["author"], plain["_id"], [p["r1"]])
    hidden = await open_review(p["author"], itar["_id"], [p["r1"], p["r2"]])
    foreign = p["foreign"].api
    for path in (
        "/api/reviews/",
        f"/api/reviews/?reviewers={p['r1'].id}",
        "/api/reviews/?status=PENDING",
        "/api/reviews/?search=review",
        "/api/reviews/?is_overdue=false",
        "/api/reviews/?page=1",
    ):
        listed = (await foreign.get(path)).json
        assert [r["id"] for r in listed["results"]] == [visible["id"]] and listed["count"] == 1, path
    for path in (f"/api/reviews/?design_asset={itar['_id']}", f"/api/reviews/?reviewers={p['r2'].id}"):
        assert (await foreign.get(path)).json == {"count": 0, "next": None, "previous": None, "results": []}
    assert (await p["r1"].api.get("/api/reviews/")).json["count"] == 2
    for path in (f"/api/reviews/{hidden['id']}/",):
        assert_envelope(await foreign.get(path), 403, "ITAR_VIOLATION")
    assert_envelope(await foreign.patch(f"/api/reviews/{hidden['id']}/", {"notes": "x"}), 403, "ITAR_VIOLATION")
    # Every event on the shared org feed carries its classification and organization, which is what the
    # gateway filters each listener by (tests/realtime/test_integration.py shows a foreign member not
    # receiving an ITAR event there).
    feed = [(e, d) for c, e, d in recorder.events if c == f"org:{org['_id']}" and e.startswith("review.")]
    assert {e for e, _ in feed} == {"review.created"}
    assert {d["classification"] for _, d in feed} == {"ITAR", "UNCLASSIFIED"}
    assert all(d["organization_id"] == org["_id"] for _, d in feed)
    assert "review.created" in recorder.on(f"review:{hidden['id']}")

    # A design lowered out of ITAR takes its review along, and raised back it hides it again.
    assert (await p["admin"].api.patch(f"/api/designs/{itar['_id']}/", {"classification": "SECRET"})).status == 200
    assert (await foreign.get("/api/reviews/")).json["count"] == 2
    assert (await p["admin"].api.patch(f"/api/designs/{itar['_id']}/", {"classification": "ITAR"})).status == 200
    assert (await foreign.get("/api/reviews/")).json["count"] == 1


@pytest.mark.gen_test(timeout=60)
async def test_overdue_sessions_are_flagged_and_filterable(world: World, db: Any) -> None:
    _, p, series_id = await review_team(world)
    first = await ready_design(db, p["author"], series_id)
    second = await ready_design(db, p["author"], series_id)
    late = await open_review(p["author"], first["_id"], [p["r1"]])
    timely = await open_review(p["member"], second["_id"], [p["r2"]])
    assert late["is_overdue"] is False
    await db.reviews.update_one({"_id": late["id"]}, {"$set": {"due_date": utcnow() - timedelta(days=1)}})
    api = p["viewer"].api
    assert (await api.get(f"/api/reviews/{late['id']}/")).json["is_overdue"] is True
    overdue = (await api.get("/api/reviews/?is_overdue=true")).json
    assert overdue["count"] == 1 and overdue["results"][0]["id"] == late["id"]
    assert [r["id"] for r in (await api.get("/api/reviews/?is_overdue=false")).json["results"]] == [timely["id"]]
    assert (await api.get(f"/api/reviews/?due_date__lte={due(0)}")).json["count"] == 1
    assert (await api.get(f"/api/reviews/?reviewers={p['r2'].id}")).json["results"][0]["id"] == timely["id"]
    assert (await api.get(f"/api/reviews/?created_by={p['member'].id}")).json["count"] == 1
    assert [r["id"] for r in (await api.get("/api/reviews/?ordering=due_date")).json["results"]] == [
        late["id"],
        timely["id"],
    ]
    for bad in ("is_overdue=maybe", "status=OPEN", "reviewers=abc", "colour=red", "ordering=password"):
        assert_envelope(await api.get(f"/api/reviews/?{bad}"), 400, "VALIDATION_ERROR")
    # A completed session is not overdue, whatever its due date.
    await p["r1"].api.post(f"/api/reviews/{late['id']}/approve/", {})
    assert (await api.get("/api/reviews/?is_overdue=true")).json["count"] == 0
    assert (await api.get("/api/reviews/?fields=id,status")).json["results"][0].keys() == {"id", "status"}


@pytest.mark.gen_test(timeout=60)
async def test_socket_commands_share_the_rules(world: World, db: Any, services: Any, recorder: Recorder) -> None:
    _, p, series_id = await review_team(world)
    design = await ready_design(db, p["author"], series_id)
    review = await open_review(p["author"], design["_id"], [p["r1"], p["r2"]], decision_rule="ANY", veto=False)
    commands = socket_commands(services.reviews, services.markups)
    assert set(commands) == {"markup.create", "markup.update", "markup.resolve", "markup.dismiss", "review.vote"}
    r1 = await services.identity.principal_for(p["r1"].id)
    member = await services.identity.principal_for(p["member"].id)
    with pytest.raises(ValidationFailed) as bad:
        await commands["review.vote"](r1, {"review_id": review["id"], "decision": "MAYBE"})
    assert "decision" in bad.value.field_errors
    with pytest.raises(PermissionDenied):
        await commands["review.vote"](member, {"review_id": review["id"], "decision": "APPROVE"})
    result = await commands["review.vote"](
        r1, {"review_id": review["id"], "decision": "REJECT", "reason": "MATERIAL_ISSUE", "comments": "via socket"}
    )
    assert result["status"] == "IN_PROGRESS" and result["tally"]["rejected"] == 1
    audit_entry = await db.audit_log.find_one({"action": "REJECT", "resource_id": review["id"]})
    assert audit_entry["user_agent"] == "websocket"
    await services.reviews.can_read(r1, review["id"])
    outsider = await services.identity.principal_for(p["outsider"].id)
    with pytest.raises(Exception) as hidden:
        await services.reviews.can_read(outsider, review["id"])
    assert getattr(hidden.value, "status", None) == 404
