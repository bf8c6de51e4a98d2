"""Stand-ins for identity and policy in the realtime tests (everything else is real): users, credentials, a
deny-list policy, and a few commands; shared by the fixtures, the tests and the cross-process node."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.errors import ITARViolation, NotFound, PermissionDenied, ValidationFailed
from realtime import Credential, Gateway


@dataclass(frozen=True)
class User:
    id: int
    username: str


ALICE = User(1, "alice")
BOB = User(2, "bob")
CAROL = User(3, "carol")
CREDENTIALS = {
    ("token", "alice-token"): ALICE,
    ("token", "bob-token"): BOB,
    ("token", "carol-token"): CAROL,
    ("bearer", "alice-bearer"): ALICE,
    ("api_key", "bob-key"): BOB,
    ("session", "carol-session"): CAROL,
}


@dataclass
class Policy:
    """The stand-in access policy: a deny-list tests edit mid-session, and fixed hidden channels."""

    denied: set[tuple[int, str]] = field(default_factory=set)
    active: set[int] = field(default_factory=lambda: {ALICE.id, BOB.id, CAROL.id})

    async def authenticate(self, credential: Credential) -> User | None:
        user = CREDENTIALS.get((credential.kind, credential.secret))
        return user if user is not None and user.id in self.active else None

    async def authorize(self, principal: User, channel: str) -> None:
        if channel == "review:itar":
            raise ITARViolation("This review is export-controlled.")
        if channel == "design:elsewhere":
            raise NotFound("No such design.")
        if channel == f"user:{principal.id}" or not channel.startswith("user:"):
            if (principal.id, channel) not in self.denied:
                return
        raise PermissionDenied(f"{principal.username} may not follow {channel}.")

    async def refresh(self, principal: User) -> User | None:
        return principal if principal.id in self.active else None


def make_commands(policy: Policy, gateway_ref: list[Gateway]) -> dict[str, Any]:
    async def echo(principal: User, payload: dict[str, Any]) -> dict[str, Any]:
        return {"user": principal.id, "payload": payload}

    async def invalid(principal: User, payload: dict[str, Any]) -> dict[str, Any]:
        raise ValidationFailed("The markup is not valid.", field_errors={"anchor": ["This field is required."]})

    async def crash(principal: User, payload: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("boom")

    async def publish(principal: User, payload: dict[str, Any]) -> dict[str, Any]:
        # Like markup.create: a write whose effect every subscriber sees as an event.
        epoch, offset = await gateway_ref[0].publish(
            payload["channel"], "markup.created", {"by": principal.id, **payload.get("data", {})}
        )
        return {"epoch": epoch, "offset": offset}

    return {"test.echo": echo, "test.invalid": invalid, "test.crash": crash, "markup.create": publish}
