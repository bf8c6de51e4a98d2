"""Socket access follows every kind of access change within the request that made it, proven over real sockets
against the real server: subscriptions end with subscription.ended and commands are refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from models import audit
from models.channels import event_visible
from models.organizations import MemberIn
from models.policy import Principal, Role
from realtime.events import Event
from tests.helpers import Caller, World, cad, upload
from tests.helpers import team as acme_team
from tests.realtime.client import Client


def ws_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://") + "/ws/"


@dataclass
class Reviewed:
    """A READY design with an open review in which the member and the admin are reviewers."""

    design: str
    review: str


@dataclass
class Team:
    org: dict[str, Any]
    people: dict[str, Caller]
    staff: Caller
    moderator: Caller  # an ADMIN who is no reviewer: writes in reviews by role alone
    series: str

    async def reviewed(self, db: Any, name: str, classification: str = "UNCLASSIFIED") -> Reviewed:
        data = cad("wire.brep")
        design = await upload(self.people["owner"], self.series, f"{name}.brep", data, classification=classification)
        await db.designs.update_one({"_id": design["id"]}, {"$set": {"status": "READY"}})
        review = await self.people["owner"].api.post(
            "/api/reviews/",
            {"design_asset": design["id"], "reviewers": [self.people["member"].id, self.people["admin"].id]},
        )
        assert review.status == 201, review.body
        return Reviewed(design["id"], review.json["id"])


async def team(world: World) -> Team:
    org, people, series = await acme_team(world)
    staff = await world.user("staff", is_staff=True, is_us_person=True, security_clearance_level="TOP_SECRET")
    moderator = await world.user("moderator", is_us_person=True, security_clearance_level="SECRET")
    await world.services.orgs.add_member(
        await world.staff_principal(), org["_id"], MemberIn(user_id=moderator.id, role=Role.ADMIN), audit.Actor.system()
    )
    return Team(org, people, staff, moderator, series)


def markup(target: Reviewed, text: str = "over the socket") -> dict[str, Any]:
    return {
        "design_asset": target.design,
        "review_session": target.review,
        "position": {"x": 1, "y": 2, "z": 3},
        "annotation_text": text,
        "severity": "MAJOR",
    }


async def pushed_before_reply(client: Client) -> list[dict[str, Any]]:
    """Everything the server pushed before it answered a ping sent now: the socket is ordered, so an event
    that precedes the reply was written before the server read the ping."""
    reply = await client.request("ping")
    assert reply["type"] == "result", reply
    got = list(client.stash)
    client.stash.clear()
    return got


def ended(messages: list[dict[str, Any]]) -> dict[str, str]:
    """channel -> code of each subscription.ended among `messages`."""
    return {m["channel"]: m["data"]["code"] for m in messages if m.get("event") == "subscription.ended"}


@pytest.mark.gen_test(timeout=90)
async def test_an_organization_losing_us_status_ends_itar_access_on_live_sockets(
    world: World, db: Any, base_url: str
) -> None:
    """Issue 10 #2, the attacker's session: staff turn off is_us_organization while a member's sockets are open;
    neither the subscribed socket nor an idle one (no subscriptions) keeps ITAR access."""
    t = await team(world)
    itar = await t.reviewed(db, "itar", "ITAR")
    other_itar = await upload(t.people["owner"], t.series, "other.brep", cad("wire.brep"), classification="ITAR")
    member = t.people["member"]
    listening = await Client.connect(ws_url(base_url), token=member.token)
    await listening.ok("subscribe", channel=f"org:{t.org['_id']}")
    await listening.ok("subscribe", channel=f"design:{itar.design}")
    await listening.ok("subscribe", channel=f"review:{itar.review}")
    idle = await Client.connect(ws_url(base_url), token=member.token)  # authenticated, subscribed to nothing
    assert (await idle.ok("markup.create", **markup(itar, "while the org is US")))["annotation_text"]

    changed = await t.staff.api.patch(f"/api/organizations/{t.org['_id']}/", {"is_us_organization": False})
    assert changed.status == 200, changed.body

    gone = ended(await pushed_before_reply(listening))
    assert gone == {f"design:{itar.design}": "ITAR_VIOLATION", f"review:{itar.review}": "ITAR_VIOLATION"}, gone
    # The org feed stays (still a member) but carries no ITAR event any more.
    await world.services.realtime.publish(
        f"org:{t.org['_id']}",
        "design.status",
        {"design_id": itar.design, "organization_id": t.org["_id"], "classification": "ITAR", "status": "READY"},
    )
    assert [m for m in await pushed_before_reply(listening) if m.get("type") == "event"] == []
    for client in (listening, idle):
        refused = await client.request("subscribe", channel=f"design:{other_itar['id']}")
        assert refused["type"] == "error" and refused["error"]["code"] == "ITAR_VIOLATION", refused
        write = await client.request("markup.create", **markup(itar))
        assert write["type"] == "error" and write["error"]["code"] == "ITAR_VIOLATION", write
        vote = await client.request("review.vote", review_id=itar.review, decision="APPROVE")
        assert vote["type"] == "error" and vote["error"]["code"] == "ITAR_VIOLATION", vote
    stored = await db.markups.count_documents({"review_id": itar.review})
    assert stored == 1, "only the markup made while the organization was a US one"
    assert (await db.reviews.find_one({"_id": itar.review}))["votes"] in ({}, None)
    for client in (listening, idle):
        client.close()


# kind -> (design classification the member follows, the subscription.ended code expected, the command's code)
KINDS: dict[str, tuple[str, str | None, str]] = {
    "membership_removed": ("UNCLASSIFIED", "RESOURCE_NOT_FOUND", "RESOURCE_NOT_FOUND"),
    "role_lowered": ("UNCLASSIFIED", None, "PERMISSION_DENIED"),  # a VIEWER still reads, but writes nothing
    "clearance_lowered": ("SECRET", "PERMISSION_DENIED", "PERMISSION_DENIED"),
    "us_person_revoked": ("ITAR", "ITAR_VIOLATION", "ITAR_VIOLATION"),
    "organization_not_us": ("ITAR", "ITAR_VIOLATION", "ITAR_VIOLATION"),
    "organization_inactive": ("UNCLASSIFIED", "RESOURCE_NOT_FOUND", "RESOURCE_NOT_FOUND"),
    "design_reclassified": ("UNCLASSIFIED", "PERMISSION_DENIED", "PERMISSION_DENIED"),
}


def subject(kind: str, t: Team) -> Caller:
    """Whose access changes: a reviewer, except for a role change, which matters to whoever writes by role."""
    return t.moderator if kind == "role_lowered" else t.people["member"]


async def change(kind: str, t: Team, target: Reviewed) -> None:
    """The one REST request that makes the access change."""
    member, owner, org = subject(kind, t), t.people["owner"], t.org["_id"]
    if kind == "membership_removed":
        resp = await owner.api.delete(f"/api/organizations/{org}/members/{member.id}/")
    elif kind == "role_lowered":
        resp = await owner.api.patch(f"/api/organizations/{org}/members/{member.id}/", {"role": "VIEWER"})
    elif kind == "clearance_lowered":
        resp = await t.staff.api.patch(f"/api/users/{member.id}/", {"security_clearance_level": "CONFIDENTIAL"})
    elif kind == "us_person_revoked":
        resp = await t.staff.api.patch(f"/api/users/{member.id}/", {"is_us_person": False})
    elif kind == "organization_not_us":
        resp = await t.staff.api.patch(f"/api/organizations/{org}/", {"is_us_organization": False})
    elif kind == "organization_inactive":
        resp = await t.staff.api.patch(f"/api/organizations/{org}/", {"is_active": False})
    else:
        resp = await owner.api.patch(f"/api/designs/{target.design}/", {"classification": "TOP_SECRET"})
    assert resp.status in (200, 204), (kind, resp.status, resp.body)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.gen_test(timeout=90)
async def test_socket_access_follows_every_kind_of_access_change_within_the_request(
    kind: str, world: World, db: Any, base_url: str
) -> None:
    """Issue 10's Done-when: by the time the REST response of the change returns, the member's socket
    subscription has ended (subscription.ended precedes the reply to a ping sent afterwards) and a command
    made with the same socket is refused."""
    t = await team(world)
    classification, ended_code, command_code = KINDS[kind]
    target = await t.reviewed(db, kind, classification)
    socket = await Client.connect(ws_url(base_url), token=subject(kind, t).token)
    await socket.ok("subscribe", channel=f"design:{target.design}")
    await socket.ok("subscribe", channel=f"review:{target.review}")
    assert await socket.ok("markup.create", **markup(target, "before"))
    await socket.quiet(0.1)

    await change(kind, t, target)

    gone = ended(await pushed_before_reply(socket))
    if ended_code is None:
        assert gone == {}, gone
    else:
        assert gone == {f"design:{target.design}": ended_code, f"review:{target.review}": ended_code}, gone
    write = await socket.request("markup.create", **markup(target, "after"))
    assert write["type"] == "error" and write["error"]["code"] == command_code, write
    assert [m["annotation_text"] async for m in db.markups.find({"review_id": target.review})] == ["before"]
    socket.close()


@pytest.mark.gen_test(timeout=90)
async def test_an_uncleared_subscriber_sees_no_last_event_of_a_design_raised_above_their_clearance(
    world: World, db: Any, base_url: str
) -> None:
    """Issue 10 #12: access ends before the change is announced, so the SECRET-cleared admin's socket gets
    subscription.ended and never the design.updated that shows the new TOP_SECRET label; the cleared owner does."""
    t = await team(world)
    target = await t.reviewed(db, "raised")
    uncleared = await Client.connect(ws_url(base_url), token=t.people["admin"].token)
    cleared = await Client.connect(ws_url(base_url), token=t.people["owner"].token)
    for client in (uncleared, cleared):
        for channel in (f"design:{target.design}", f"review:{target.review}", f"org:{t.org['_id']}"):
            await client.ok("subscribe", channel=channel)

    raised = await t.people["owner"].api.patch(f"/api/designs/{target.design}/", {"classification": "TOP_SECRET"})
    assert raised.status == 200, raised.body

    seen = [m for m in await pushed_before_reply(uncleared) if not m["event"].startswith("presence.")]
    assert [m["event"] for m in seen] == ["subscription.ended", "subscription.ended"], seen
    assert ended(seen) == {
        f"design:{target.design}": "PERMISSION_DENIED",
        f"review:{target.review}": "PERMISSION_DENIED",
    }
    owner_seen = await cleared.next_event("design.updated")
    assert owner_seen["data"]["classification"] == "TOP_SECRET"
    for client in (uncleared, cleared):
        client.close()


def test_events_about_a_classified_design_reach_only_the_cleared_on_every_channel() -> None:
    """The event filter's rule (models/channels.event_visible), which keeps an event announcing a reclassification
    from a listener whose subscription a process has not re-checked yet."""
    secret_us = Principal({"_id": 1, "username": "a", "security_clearance_level": "SECRET", "is_us_person": True})
    secret_us.us_orgs = frozenset({"us-org"})
    foreign = Principal({"_id": 2, "username": "b", "security_clearance_level": "TOP_SECRET", "is_us_person": False})

    def event(channel: str, **data: Any) -> Event:
        return Event(channel, "e", 1, "design.updated", data)

    raised = event("design:d1", classification="TOP_SECRET", organization_id="us-org")
    assert not event_visible(secret_us, raised) and event_visible(foreign, raised)
    itar = event("review:r1", classification="ITAR", organization_id="us-org")
    assert event_visible(secret_us, itar) and not event_visible(foreign, itar)
    elsewhere = event("design:d2", classification="ITAR", organization_id="other-org")
    assert not event_visible(secret_us, elsewhere)
    assert event_visible(secret_us, event("org:us-org", classification="ITAR"))
    assert not event_visible(secret_us, event("org:other-org", classification="ITAR"))
    # An event that does not name its organization (a job's) keeps the channel's authorization for ITAR.
    assert event_visible(secret_us, event("job:j1", classification="ITAR"))
    assert not event_visible(secret_us, event("job:j1", classification="TOP_SECRET"))
    assert event_visible(foreign, event("design:d3", classification="UNCLASSIFIED"))
    assert not event_visible(None, event("design:d3"))
