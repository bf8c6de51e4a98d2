"""Attacks on the WebSocket protocol against the real server: sockets authenticating while their user logs out
or is disabled, protocol messages that used to crash or close the socket, and the caps and budget that bound
what one caller or one address may hold or spend."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgpack
import pytest

from models.database import next_id
from models.organizations import OrganizationIn
from tests.helpers import PASSWORD, Caller, World
from tests.realtime.client import Client, Closed, masked_frame, read_frame
from tests.realtime.test_access_changes import markup, team, ws_url

# The races open many sockets from one address for one user: the caps under test elsewhere stay out of the way.
ROOMY = {"realtime_max_sockets_per_user": 1000, "realtime_max_unauthenticated_per_address": 1000}


async def survivors_of(
    base_url: str, token: str, count: int, revoke: Callable[[], Awaitable[None]], spacing: float = 0.002
) -> list[Client]:
    """Issue 25 #1's reproduction: `count` sockets send {"type": "auth"} `spacing` seconds apart and `revoke`
    runs halfway. Returns the sockets still open and answering a second after everything settled."""
    clients = [await Client.connect(ws_url(base_url), token=None) for _ in range(count)]
    revoking: asyncio.Future[None] | None = None
    for index, client in enumerate(clients):
        if index == count // 2:
            revoking = asyncio.ensure_future(revoke())
        client.next_id += 1
        await client.send({"type": "auth", "id": client.next_id, "token": token})
        await asyncio.sleep(spacing)
    assert revoking is not None
    await revoking

    async def alive(client: Client) -> bool:
        try:
            answer = await client.reply(1, timeout=30)
            if answer["type"] == "error":
                await client.closed(timeout=10)
                return False
            # Authenticated before or while the revocation ran: it must be closed soon after, by itself.
            await client.closed(timeout=1.0)
            return False
        except Closed:
            return False
        except TimeoutError:
            pass
        try:
            return (await client.request("ping", timeout=5))["type"] == "result"
        except (Closed, TimeoutError):
            return False

    states = await asyncio.gather(*[alive(c) for c in clients])
    for client in clients:
        client.close()
    return [c for c, up in zip(clients, states, strict=True) if up]


async def member_of_many(db: Any, caller: Caller, count: int, tag: str) -> None:
    """`caller` becomes a VIEWER of `count` new organizations (written in bulk: the API would take minutes)."""
    now = datetime.now(UTC)
    orgs = [
        {
            "_id": str(uuid.uuid4()),
            **OrganizationIn(name=f"Client {tag}-{i}", slug=f"client-{tag}-{i}", is_us_organization=False).model_dump(
                mode="json"
            ),
            "created_at": now,
            "updated_at": now,
            "version": 1,
            "created_by": caller.id,
        }
        for i in range(count)
    ]
    await db.organizations.insert_many(orgs)
    ids = [await next_id(db, "memberships") for _ in orgs]
    await db.memberships.insert_many(
        [
            {"_id": ident, "organization_id": org["_id"], "user_id": caller.id, "role": "VIEWER", "joined_at": now}
            for ident, org in zip(ids, orgs, strict=True)
        ]
    )


class TestRevocationRacesAuthentication:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return ROOMY

    @pytest.mark.gen_test(timeout=300)
    async def test_no_socket_authenticating_during_a_logout_survives_it(self, world: World, base_url: str) -> None:
        """50 sockets authenticate with one session's token 2 ms apart; the session logs out halfway. REST
        refuses the token at once, and so must every socket: none answers afterwards (bounded loop of rounds)."""
        for round_ in range(3):
            login = await world.api.post("/api/auth/login/", {"username": f"racer{round_}", "password": PASSWORD})
            if login.status == 401:
                await world.user(f"racer{round_}")
                login = await world.api.post("/api/auth/login/", {"username": f"racer{round_}", "password": PASSWORD})
            token = login.json["access_token"]

            async def logout(token: str = token) -> None:
                assert (await world.api.as_token(token).post("/api/auth/logout/")).status == 204

            alive = await survivors_of(base_url, token, 50, logout)
            assert alive == [], f"round {round_}: {len(alive)} of 50 sockets kept the logged-out session"
            assert (await world.api.as_token(token).get("/api/auth/verify/")).status == 401

    @pytest.mark.gen_test(timeout=300)
    async def test_no_socket_authenticating_during_a_deactivation_survives_it(
        self, world: World, db: Any, base_url: str
    ) -> None:
        """The same race with {"is_active": false}, 100 sockets a round. The account belongs to 150
        organizations, as a consultant's might: reading its memberships then takes longer than writing the
        deactivation's audit entry, which is what leaves a socket registering after the sweep."""
        staff = await world.user("staff", is_staff=True)
        for round_ in range(3):
            victim: Caller = await world.user(f"victim{round_}")
            await member_of_many(db, victim, 150, f"r{round_}")

            async def disable(victim: Caller = victim) -> None:
                resp = await staff.api.patch(f"/api/users/{victim.id}/", {"is_active": False})
                assert resp.status == 200, resp.body

            alive = await survivors_of(base_url, victim.token, 200, disable)
            assert alive == [], f"round {round_}: {len(alive)} of 100 sockets kept the disabled account"


async def raw_socket(port: int, protocol: str = "enginel.v1.json") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket opened by hand, without credentials, so a test controls exactly which bytes go in one write."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            f"GET /ws/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {protocol}\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert b" 101 " in head.split(b"\r\n")[0], head
    return reader, writer


async def frames_until_close(reader: asyncio.StreamReader, decode: Callable[[bytes], Any]) -> tuple[list[Any], int]:
    """Every message until the close frame, and the close code (1006 when the connection just dropped)."""
    messages: list[Any] = []
    while True:
        try:
            opcode, payload = await asyncio.wait_for(read_frame(reader), 10)
        except asyncio.IncompleteReadError:
            return messages, 1006
        if opcode == 0x8:
            return messages, int.from_bytes(payload[:2], "big")
        messages.append(decode(payload))


def port_of(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])


@pytest.mark.gen_test(timeout=60)
async def test_an_auth_message_and_a_command_in_one_write_are_answered_in_order(world: World, base_url: str) -> None:
    """Issue 25 #6b: the command behind the auth message waits for the auth result instead of closing 4001."""
    caller = await world.user("quick")
    reader, writer = await raw_socket(port_of(base_url))
    auth = json.dumps({"type": "auth", "id": 1, "token": caller.token}).encode()
    ping = json.dumps({"type": "ping", "id": 2}).encode()
    subscribe = json.dumps({"type": "subscribe", "id": 3, "channel": f"user:{caller.id}"}).encode()
    writer.write(masked_frame(auth) + masked_frame(ping) + masked_frame(subscribe))
    got = []
    for _ in range(4):
        opcode, payload = await asyncio.wait_for(read_frame(reader), 10)
        assert opcode == 0x1, (opcode, payload)
        got.append(json.loads(payload))
    assert [(m["type"], m.get("id")) for m in got] == [("result", 1), ("welcome", None), ("result", 2), ("result", 3)]
    # Without an auth message the first command still closes the socket, when it is processed.
    reader2, writer2 = await raw_socket(port_of(base_url))
    writer2.write(masked_frame(ping))
    messages, code = await frames_until_close(reader2, json.loads)
    assert code == 4001 and messages[0]["error"]["code"] == "AUTHENTICATION_FAILED", (code, messages)
    for w in (writer, writer2):
        w.close()


@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.gen_test(timeout=60)
async def test_deeply_nested_messages_are_malformed_messages_before_and_after_authentication(
    codec: str, world: World, base_url: str
) -> None:
    """Issue 25 #6a: 30,000 nested arrays get an error reply (the socket stays open), as does nesting deep
    enough to pass the decoder but not the server's bound; repeated, they close the socket with 4000."""
    if codec == "json":
        deep, opcode, decode = b"[" * 30_000, 0x1, json.loads
        shallow_but_deep = b'{"type": "ping", "id": 2, "x": ' + b"[" * 500 + b"]" * 500 + b"}"
    else:
        deep, opcode, decode = b"\x91" * 30_000 + b"\xc0", 0x2, msgpack.unpackb
        shallow_but_deep = b"\x83\xa4type\xa4ping\xa2id\x02\xa1x" + b"\x91" * 500 + b"\xc0"
    reader, writer = await raw_socket(port_of(base_url), f"enginel.v1.{codec}")
    writer.write(masked_frame(deep, opcode))
    opcode_back, payload = await asyncio.wait_for(read_frame(reader), 10)
    reply = decode(payload)
    assert reply["type"] == "error" and reply["error"]["code"] == "VALIDATION_ERROR", reply
    assert reply["id"] is None
    # Still open and usable: authenticate, then the merely deep message is refused the same way.
    caller = await world.user(f"nested-{codec}")
    auth = {"type": "auth", "id": 1, "token": caller.token}
    writer.write(masked_frame(json.dumps(auth).encode() if codec == "json" else msgpack.packb(auth), opcode))
    assert decode((await read_frame(reader))[1])["type"] == "result"
    assert decode((await read_frame(reader))[1])["type"] == "welcome"
    writer.write(masked_frame(shallow_but_deep, opcode))
    reply = decode((await asyncio.wait_for(read_frame(reader), 10))[1])
    assert reply["type"] == "error" and reply["error"]["code"] == "VALIDATION_ERROR", reply
    writer.write(masked_frame(deep, opcode) * 25)
    messages, code = await frames_until_close(reader, decode)
    assert code == 4000, (code, messages[-3:])
    assert all(m["type"] == "error" for m in messages)
    writer.close()


class TestCommandsSpendTheRestBudget:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        # An hourly budget small enough to spend in a test (a minute window could roll over mid-test).
        return {"rate_limit_per_hour": 6}

    @pytest.mark.gen_test(timeout=90)
    async def test_socket_commands_and_rest_requests_draw_on_one_budget(
        self, world: World, db: Any, base_url: str
    ) -> None:
        """Issue 10 #7: commands are charged to the caller's REST budget (user:<id>, or key:<id> for an API key),
        so a socket cannot write past the limit REST enforces, and spending it over the socket exhausts REST."""
        t = await team(world)  # the setup spends the owner's and member's budgets, not the admin's
        target = await t.reviewed(db, "budget")
        admin = t.people["admin"]
        socket = await Client.connect(ws_url(base_url), token=admin.token)
        for n in range(6):
            assert (await socket.ok("markup.create", **markup(target, f"note {n}")))["id"]
        refused = await socket.request("markup.create", **markup(target, "one too many"))
        assert refused["type"] == "error" and refused["error"]["code"] == "RATE_LIMIT_EXCEEDED", refused
        rest = await admin.api.get("/api/markups/")
        assert rest.status == 429, (rest.status, rest.body)
        assert await db.markups.count_documents({"author_id": admin.id}) == 6
        # Reads that mirror no REST write (ping, subscribe) stay within the connection's own bucket.
        assert (await socket.ok("ping"))["ts"]
        socket.close()

    @pytest.mark.gen_test(timeout=90)
    async def test_an_api_key_socket_spends_the_keys_budget(self, world: World, db: Any, base_url: str) -> None:
        t = await team(world)
        target = await t.reviewed(db, "keyed")
        admin = t.people["admin"]
        created = await admin.api.post("/api/auth/api-keys/", {"name": "bot", "scopes": ["read", "write"]})
        assert created.status == 201, created.body
        key = created.json["key"]
        socket = await Client.connect(ws_url(base_url), headers={"Authorization": f"ApiKey {key}"}, wait_welcome=False)
        assert (await socket.recv())["type"] == "welcome"
        for n in range(6):
            assert (await socket.ok("markup.create", **markup(target, f"bot {n}")))["id"]
        keyed = await admin.api.get("/api/markups/", headers={"Authorization": f"ApiKey {key}"})
        assert keyed.status == 429, (keyed.status, keyed.body)
        # The user's own session budget (user:<id>) is another caller's, as for REST.
        assert (await admin.api.get("/api/markups/")).status == 200
        socket.close()


async def refused_connection(base_url: str, token: str | None) -> tuple[int | None, str | None]:
    client = await Client.connect(ws_url(base_url), token=token, wait_welcome=False)
    return await client.closed()


class TestSocketCaps:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"realtime_max_sockets_per_user": 3, "realtime_max_unauthenticated_per_address": 4}

    @pytest.mark.gen_test(timeout=60)
    async def test_sockets_per_user_are_capped(self, world: World, base_url: str) -> None:
        hoarder = await world.user("hoarder")
        other = await world.user("other")
        held = [await Client.connect(ws_url(base_url), token=hoarder.token) for _ in range(3)]
        code, reason = await refused_connection(base_url, hoarder.token)
        assert code == 4029 and "sockets" in (reason or ""), (code, reason)
        # An auth message meets the same cap, with an error reply first.
        late = await Client.connect(ws_url(base_url))
        answer = await late.request("auth", token=hoarder.token)
        assert answer["type"] == "error" and answer["error"]["code"] == "TOO_MANY_CONNECTIONS", answer
        assert (await late.closed())[0] == 4029
        assert await Client.connect(ws_url(base_url), token=other.token)  # another user's budget of sockets
        held.pop().close()
        for _ in range(50):  # the slot is released once the server has seen the close
            client = await Client.connect(ws_url(base_url), token=hoarder.token, wait_welcome=False)
            first = await client.next()
            if first.get("type") == "welcome":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("closing a socket never freed its slot")
        for c in held:
            c.close()

    @pytest.mark.gen_test(timeout=60)
    async def test_unauthenticated_sockets_per_address_are_capped(self, world: World, base_url: str) -> None:
        waiting = [await Client.connect(ws_url(base_url)) for _ in range(4)]
        for client in waiting:
            assert await client.quiet(0.05) == []  # open, waiting for their auth message
        code, reason = await refused_connection(base_url, None)
        assert code == 4029 and "address" in (reason or ""), (code, reason)
        # Authenticating frees the address's slot: the next unauthenticated socket is let in.
        caller = await world.user("patient")
        assert (await waiting[0].request("auth", token=caller.token))["type"] == "result"
        let_in = await Client.connect(ws_url(base_url))
        assert await let_in.quiet(0.3) == []
        for c in [*waiting, let_in]:
            c.close()


class TestAddressesBehindATrustedProxy:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"realtime_max_unauthenticated_per_address": 2, "trusted_proxies": ["127.0.0.1/32"]}

    @pytest.mark.gen_test(timeout=60)
    async def test_the_per_address_cap_counts_the_clients_a_trusted_proxy_names(
        self, http_server: Any, base_url: str
    ) -> None:
        """Behind a configured proxy each client address has its own cap, as REST's per-address limits do."""

        def via(address: str) -> dict[str, str]:
            return {"X-Forwarded-For": f"{address}, 127.0.0.1"}

        first = [await Client.connect(ws_url(base_url), headers=via("203.0.113.5")) for _ in range(2)]
        refused = await Client.connect(ws_url(base_url), headers=via("203.0.113.5"))
        assert (await refused.closed())[0] == 4029
        other = await Client.connect(ws_url(base_url), headers=via("203.0.113.6"))
        assert await other.quiet(0.3) == []  # let in, waiting for its auth message
        for client in [*first, other]:
            client.close()


@pytest.mark.gen_test(timeout=120)
async def test_the_socket_cap_holds_across_server_processes_sharing_redis(
    mongo_uri: str, redis_url: str, tmp_path: Any
) -> None:
    """With Redis the per-user count is shared: two sockets on process A and B fill a cap of 2 for both."""
    from tests.helpers import ROOT_PASSWORD, shared_servers
    from tests.realtime.test_two_servers import call

    with shared_servers(mongo_uri, redis_url, tmp_path, realtime_max_sockets_per_user="2") as (a, b):
        token = (await call(a, "POST", "/api/auth/login/", {"username": "root", "password": ROOT_PASSWORD}))[
            "access_token"
        ]
        first = await Client.connect(f"ws://127.0.0.1:{a}/ws/", token=token)
        second = await Client.connect(f"ws://127.0.0.1:{b}/ws/", token=token)
        for port in (a, b):
            third = await Client.connect(f"ws://127.0.0.1:{port}/ws/", token=token, wait_welcome=False)
            assert (await third.closed())[0] == 4029
        second.close()
        for _ in range(100):
            retry = await Client.connect(f"ws://127.0.0.1:{a}/ws/", token=token, wait_welcome=False)
            if (await retry.next()).get("type") == "welcome":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the slot process B released never reached process A")
        first.close()
        retry.close()
