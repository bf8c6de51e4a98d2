"""Realtime through the real application: REST and socket writes meet, the access policy guards channels,
revocation ends subscriptions, job progress is pushed, and the org feed hides what a listener may not see."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from tests.helpers import PASSWORD, World, cad, team, upload
from tests.realtime.client import Client


async def ready_review(world: World, db: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]:
    """A team, a READY design and an open review with the member and admin as reviewers."""
    org, people, series_id = await team(world)
    design = await upload(people["owner"], series_id, "wire.brep", cad("wire.brep"))
    await db.designs.update_one({"_id": design["id"]}, {"$set": {"status": "READY"}})
    review = await people["owner"].api.post(
        "/api/reviews/", {"design_asset": design["id"], "reviewers": [people["member"].id, people["admin"].id]}
    )
    assert review.status == 201, review.body
    return org, people, design, review.json["id"]


def ws_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://") + "/ws/"


@pytest.mark.gen_test(timeout=60)
async def test_rest_markup_reaches_sockets_in_both_codecs_and_socket_markup_reaches_rest(
    world: World, db: Any, base_url: str
) -> None:
    """A REST write reaches JSON and msgpack sockets alike; a socket command goes through the REST rules."""
    _, people, design, review_id = await ready_review(world, db)
    as_json = await Client.connect(ws_url(base_url), token=people["member"].token)
    as_msgpack = await Client.connect(ws_url(base_url), codec="msgpack", token=people["admin"].token)
    for client in (as_json, as_msgpack):
        result = await client.ok("subscribe", channel=f"review:{review_id}")
        assert result["channel"] == f"review:{review_id}"
    body = {
        "design_asset": design["id"],
        "review_session": review_id,
        "position": {"x": 1.5, "y": 2, "z": 3},
        "annotation_text": "Check this fillet",
        "severity": "MAJOR",
    }
    created = await people["member"].api.post("/api/markups/", body)
    assert created.status == 201, created.body
    seen = [await c.next_event("markup.created") for c in (as_json, as_msgpack)]
    assert seen[0]["data"] == seen[1]["data"]
    assert seen[0]["offset"] == seen[1]["offset"] and seen[0]["epoch"] == seen[1]["epoch"]
    assert seen[0]["data"]["markup"]["annotation_text"] == "Check this fillet"
    # A command over the socket goes through the same models and shows up over REST.
    reply = await as_msgpack.ok(
        "markup.create",
        design_asset=design["id"],
        review_session=review_id,
        position={"x": 0, "y": 0, "z": 0},
        annotation_text="From the socket",
        severity="MINOR",
    )
    listed = (await people["owner"].api.get(f"/api/markups/?review_session={review_id}")).json
    assert {m["annotation_text"] for m in listed["results"]} >= {"Check this fillet", "From the socket"}
    assert reply["annotation_text"] == "From the socket"
    pushed = await as_json.next_event("markup.created")
    assert pushed["data"]["markup"]["annotation_text"] == "From the socket"
    assert pushed["offset"] == seen[0]["offset"] + 1
    # Invalid commands get the REST validation, as an error reply.
    bad = await as_json.request(
        "markup.create",
        design_asset=design["id"],
        review_session=review_id,
        position={"x": "NaN", "y": 0, "z": 0},
        annotation_text="",
        severity="HUGE",
    )
    assert bad["type"] == "error" and bad["error"]["code"] == "VALIDATION_ERROR"
    # A vote over the socket completes nothing yet but is pushed to everyone.
    vote = await as_json.ok("review.vote", review_id=review_id, decision="APPROVE", comments="fine")
    assert vote["id"] == review_id
    voted = await as_msgpack.next_event("review.vote")
    assert voted["data"]["review_id"] == review_id
    as_json.close()
    as_msgpack.close()


@pytest.mark.gen_test(timeout=60)
async def test_channels_follow_the_access_policy(world: World, db: Any, base_url: str) -> None:
    org, people, series_id = await team(world)
    itar = await upload(people["owner"], series_id, "itar.brep", cad("wire.brep"), classification="ITAR")
    foreign = await Client.connect(ws_url(base_url), token=people["foreign"].token)
    refused = await foreign.request("subscribe", channel=f"design:{itar['id']}")
    assert refused["type"] == "error" and refused["error"]["code"] == "ITAR_VIOLATION"
    job = await foreign.request("subscribe", channel=f"job:{itar['finalize']['analysis_job_id']}")
    assert job["type"] == "error" and job["error"]["code"] == "ITAR_VIOLATION"
    assert (await foreign.ok("subscribe", channel=f"org:{org['_id']}"))["channel"] == f"org:{org['_id']}"
    assert await foreign.ok("subscribe", channel=f"user:{people['foreign'].id}")
    other_user = await foreign.request("subscribe", channel=f"user:{people['owner'].id}")
    assert other_user["type"] == "error" and other_user["error"]["code"] == "PERMISSION_DENIED"
    stranger = await world.user("stranger", is_us_person=True, security_clearance_level="TOP_SECRET")
    await world.org("elsewhere", members={stranger: "OWNER"}, is_us=True)
    outsider = await Client.connect(ws_url(base_url), token=stranger.token)
    for channel in (f"design:{itar['id']}", f"org:{org['_id']}"):
        reply = await outsider.request("subscribe", channel=channel)
        assert reply["type"] == "error" and reply["error"]["code"] == "RESOURCE_NOT_FOUND", reply
    # The org feed: an event about the ITAR design reaches the cleared owner, not the foreign member.
    owner = await Client.connect(ws_url(base_url), token=people["owner"].token)
    await owner.ok("subscribe", channel=f"org:{org['_id']}")
    await people["owner"].api.patch(f"/api/designs/{itar['id']}/", {"revision": "B"})
    update = await owner.next_event("design.updated")
    assert update["data"]["design_id"] == itar["id"]
    open_design = await upload(people["owner"], series_id, "open.brep", cad("wire.brep"))
    first_seen = await foreign.next_event()
    assert first_seen["data"]["design_id"] == open_design["id"], "the ITAR event must not have reached them"
    for client in (foreign, outsider, owner):
        client.close()


@pytest.mark.gen_test(timeout=60)
async def test_access_revoked_mid_session_ends_the_subscription(world: World, db: Any, base_url: str) -> None:
    org, people, design, review_id = await ready_review(world, db)
    viewer = await Client.connect(ws_url(base_url), token=people["viewer"].token)
    await viewer.ok("subscribe", channel=f"design:{design['id']}")
    await viewer.ok("subscribe", channel=f"org:{org['_id']}")
    removed = await people["owner"].api.delete(f"/api/organizations/{org['_id']}/members/{people['viewer'].id}/")
    assert removed.status == 204
    ended = [await viewer.next_event("subscription.ended") for _ in range(2)]
    assert {e["channel"] for e in ended} == {f"design:{design['id']}", f"org:{org['_id']}"}
    assert all(e["data"]["code"] == "RESOURCE_NOT_FOUND" for e in ended)
    # Clearance lowered: a SECRET design's channel ends for that user.
    secret = await upload(
        people["owner"],
        (await db.series.find_one({}))["_id"],
        "s.brep",
        cad("wire.brep"),
        classification="SECRET",
    )
    member = await Client.connect(ws_url(base_url), token=people["member"].token)
    await member.ok("subscribe", channel=f"design:{secret['id']}")
    lowered = await people["owner"].api.patch(
        f"/api/users/{people['member'].id}/", {"security_clearance_level": "CONFIDENTIAL"}
    )
    assert lowered.status == 200
    ended_secret = await member.next_event("subscription.ended")
    assert ended_secret["channel"] == f"design:{secret['id']}"
    assert ended_secret["data"]["code"] == "PERMISSION_DENIED"
    # A design reclassified above a listener's clearance ends their subscription too.
    admin = await Client.connect(ws_url(base_url), token=people["admin"].token)  # SECRET clearance
    await admin.ok("subscribe", channel=f"design:{design['id']}")
    raised = await people["owner"].api.patch(f"/api/designs/{design['id']}/", {"classification": "TOP_SECRET"})
    assert raised.status == 200
    assert (await admin.next_event("subscription.ended"))["channel"] == f"design:{design['id']}"
    for client in (viewer, member, admin):
        client.close()


@pytest.mark.gen_test(timeout=60)
async def test_logout_and_deactivation_close_sockets(world: World, db: Any, base_url: str) -> None:
    _, people, design, review_id = await ready_review(world, db)
    # Logging out one session closes the sockets of that session only.
    first = (await world.api.post("/api/auth/login/", {"username": "member", "password": PASSWORD})).json
    second = (await world.api.post("/api/auth/login/", {"username": "member", "password": PASSWORD})).json
    phone = await Client.connect(ws_url(base_url), token=first["access_token"])
    laptop = await Client.connect(ws_url(base_url), token=second["access_token"])
    await phone.ok("subscribe", channel=f"review:{review_id}")
    await laptop.ok("subscribe", channel=f"review:{review_id}")
    assert (await world.api.as_token(first["access_token"]).post("/api/auth/logout/")).status == 204
    code, _ = await phone.closed()
    assert code == 4001
    assert (await laptop.ok("ping")) is not None
    # A read-only API key may listen but not write over the socket either.
    key = (await people["member"].api.post("/api/auth/api-keys/", {"name": "ro", "scopes": ["read"]})).json["key"]
    refused = await Client.connect(
        ws_url(base_url), token=None, headers={"Authorization": f"ApiKey {key}"}, wait_welcome=False
    )
    welcome = await refused.recv()
    assert welcome["type"] == "welcome"
    write = await refused.request(
        "markup.create",
        design_asset=design["id"],
        review_session=review_id,
        position={"x": 0, "y": 0, "z": 0},
        annotation_text="x",
        severity="INFO",
    )
    assert write["type"] == "error" and write["error"]["code"] == "PERMISSION_DENIED", write
    for client in (laptop, refused):
        client.close()
    viewer = await Client.connect(ws_url(base_url), token=people["viewer"].token)
    assert (await people["owner"].api.patch(f"/api/users/{people['viewer'].id}/", {"is_active": False})).status == 200
    code, _ = await viewer.closed()
    assert code == 4001
    refused = await Client.connect(ws_url(base_url), token=people["viewer"].token, wait_welcome=False)
    code, _ = await refused.closed()
    assert code == 4001


class TestJobProgressOverSockets:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"workers": 1}

    @pytest.mark.gen_test(timeout=90)
    async def test_progress_and_status_are_pushed(self, world: World, db: Any, base_url: str) -> None:
        _, people, series_id = await team(world)
        listener = await Client.connect(ws_url(base_url), token=people["member"].token)
        data = cad("assembly.step")
        member = people["member"].api
        url = await member.post("/api/designs/upload-url/", {"filename": "as1.stp", "file_size": len(data)})
        await people["member"].api.request("PUT", url.json["upload_url"], raw=data)
        created = (
            await people["member"].api.post(
                "/api/designs/", {"series": series_id, "filename": "as1.stp", "upload_id": url.json["upload_id"]}
            )
        ).json
        await listener.ok("subscribe", channel=f"design:{created['id']}")
        final = await people["member"].api.post(
            f"/api/designs/{created['id']}/finalize_upload/",
            {"file_hash": "sha256:" + hashlib.sha256(data).hexdigest()},
        )
        assert final.status == 200
        events = []
        while True:
            message = await listener.next_event(timeout=60)
            events.append(message)
            if message["event"] == "design.status" and message["data"]["status"] in ("READY", "FAILED"):
                break
        progress = [e["data"] for e in events if e["event"] == "job.progress"]
        assert progress, [e["event"] for e in events]
        assert progress[-1]["percent"] >= progress[0]["percent"]
        assert events[-1]["data"]["status"] == "READY"
        offsets = [e["offset"] for e in events]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
        listener.close()
