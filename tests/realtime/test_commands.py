"""Every WebSocket command end to end against the real models: the stored state REST then shows, and the event
each one pushes to the review's subscribers."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import World
from tests.realtime.client import Client
from tests.realtime.test_access_changes import markup, team, ws_url


@pytest.mark.gen_test(timeout=90)
async def test_each_socket_command_changes_what_rest_shows_and_is_pushed(world: World, db: Any, base_url: str) -> None:
    t = await team(world)
    target = await t.reviewed(db, "commands")
    member, admin, owner = t.people["member"], t.people["admin"], t.people["owner"]
    writer = await Client.connect(ws_url(base_url), token=member.token)
    watcher = await Client.connect(ws_url(base_url), codec="msgpack", token=owner.token)
    await watcher.ok("subscribe", channel=f"review:{target.review}")
    await watcher.ok("subscribe", channel=f"design:{target.design}")

    created = await writer.ok("markup.create", **markup(target, "Fillet radius too small"))
    pushed = await watcher.next_event("markup.created")
    assert pushed["data"]["markup"] == {k: v for k, v in created.items() if k != "replies"}
    shown = (await owner.api.get(f"/api/markups/{created['id']}/")).json
    assert shown["annotation_text"] == "Fillet radius too small" and shown["status"] == "OPEN"
    assert shown["author"] == member.id, shown

    updated = await writer.ok("markup.update", markup_id=created["id"], annotation_text="Radius 2 mm", severity="MINOR")
    assert updated["annotation_text"] == "Radius 2 mm" and updated["severity"] == "MINOR"
    pushed = await watcher.next_event("markup.updated")
    assert pushed["data"]["markup"]["annotation_text"] == "Radius 2 mm"
    shown = (await owner.api.get(f"/api/markups/{created['id']}/")).json
    assert (shown["annotation_text"], shown["severity"]) == ("Radius 2 mm", "MINOR")

    resolved = await writer.ok("markup.resolve", markup_id=created["id"], resolution_notes="Changed in rev B")
    assert resolved["status"] == "RESOLVED"
    pushed = await watcher.next_event("markup.resolved")
    assert pushed["data"]["markup"]["status"] == "RESOLVED"
    shown = (await owner.api.get(f"/api/markups/{created['id']}/")).json
    assert shown["status"] == "RESOLVED" and shown["resolution_notes"] == "Changed in rev B"
    assert shown["resolved_by"] == member.id, shown

    second = await writer.ok("markup.create", **markup(target, "Not an issue"))
    await watcher.next_event("markup.created")
    dismissed = await writer.ok("markup.dismiss", markup_id=second["id"], reason="Duplicate of #1")
    assert dismissed["status"] == "DISMISSED"
    pushed = await watcher.next_event("markup.dismissed")
    assert pushed["data"]["markup"]["id"] == second["id"]
    shown = (await owner.api.get(f"/api/markups/{second['id']}/")).json
    assert shown["status"] == "DISMISSED" and shown["dismiss_reason"] == "Duplicate of #1"

    # A command naming a markup that does not exist is the REST 404, and changes nothing.
    missing = await writer.request("markup.resolve", markup_id=10**9, resolution_notes="x")
    assert missing["type"] == "error" and missing["error"]["code"] == "RESOURCE_NOT_FOUND", missing
    # The envelope's id stays the message id: a markup id is `markup_id`.
    unnamed = await writer.request("markup.dismiss", reason="x")
    assert unnamed["type"] == "error" and unnamed["error"]["code"] == "VALIDATION_ERROR", unnamed
    assert "markup_id" in unnamed["error"]["field_errors"], unnamed

    first_vote = await writer.ok("review.vote", review_id=target.review, decision="APPROVE", comments="ok by me")
    assert first_vote["status"] == "IN_PROGRESS", first_vote
    pushed = await watcher.next_event("review.vote")
    assert (pushed["data"]["reviewer"], pushed["data"]["decision"]) == (member.id, "APPROVE")
    admin_socket = await Client.connect(ws_url(base_url), token=admin.token)
    final_vote = await admin_socket.ok("review.vote", review_id=target.review, decision="APPROVE")
    assert final_vote["status"] == "COMPLETED" and final_vote["outcome"] == "APPROVED", final_vote
    completed = await watcher.next_event("review.completed")
    assert completed["data"]["outcome"] == "APPROVED"
    review = (await owner.api.get(f"/api/reviews/{target.review}/")).json
    assert review["status"] == "COMPLETED", review
    assert {v["reviewer"]: v["decision"] for v in review["votes"]} == {member.id: "APPROVE", admin.id: "APPROVE"}
    assert (await owner.api.get(f"/api/designs/{target.design}/")).json["status"] == "APPROVED"
    for client in (writer, watcher, admin_socket):
        client.close()
