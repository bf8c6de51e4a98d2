"""The WebSocket command table: socket messages that mirror REST writes, run through the same repositories."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from models import audit
from models.markups import (
    DismissIn,
    MarkupDismissCommand,
    MarkupIn,
    MarkupPatch,
    MarkupResolveCommand,
    Markups,
    MarkupUpdateCommand,
    ResolveIn,
)
from models.policy import Principal
from models.reviews import Reviews, ReviewVoteCommand
from models.schema import parse_payload

SocketCommand = Callable[[Principal, dict[str, Any]], Awaitable[dict[str, Any]]]


def socket_actor(principal: Principal) -> audit.Actor:
    """Who a socket command's audit entries name: the connection's user, with "websocket" as the client."""
    return audit.Actor(principal.id, principal.username, None, "websocket")


def socket_commands(reviews: Reviews, markups: Markups) -> dict[str, SocketCommand]:
    """The commands by message type, ready for Gateway.add_command: each takes (principal, payload dict),
    validates the payload like a REST body and returns what REST would."""

    async def markup_create(principal: Principal, payload: dict[str, Any]) -> dict[str, Any]:
        doc = await markups.create(principal, parse_payload(MarkupIn, payload), socket_actor(principal))
        return await markups.render_detail(doc)

    async def markup_update(principal: Principal, payload: dict[str, Any]) -> dict[str, Any]:
        cmd = parse_payload(MarkupUpdateCommand, payload)
        patch = MarkupPatch(**{k: getattr(cmd, k) for k in cmd.model_fields_set if k != "markup_id"})
        updated = await markups.update(principal, cmd.markup_id, patch, socket_actor(principal))
        return await markups.render_detail(updated)

    async def markup_resolve(principal: Principal, payload: dict[str, Any]) -> dict[str, Any]:
        cmd = parse_payload(MarkupResolveCommand, payload)
        notes = ResolveIn(resolution_notes=cmd.resolution_notes)
        return await markups.render_detail(
            await markups.resolve(principal, cmd.markup_id, notes, socket_actor(principal))
        )

    async def markup_dismiss(principal: Principal, payload: dict[str, Any]) -> dict[str, Any]:
        cmd = parse_payload(MarkupDismissCommand, payload)
        reason = DismissIn(reason=cmd.reason)
        return await markups.render_detail(
            await markups.dismiss(principal, cmd.markup_id, reason, socket_actor(principal))
        )

    async def review_vote(principal: Principal, payload: dict[str, Any]) -> dict[str, Any]:
        cmd = parse_payload(ReviewVoteCommand, payload)
        return await reviews.render_detail(await reviews.vote(principal, cmd.review_id, cmd, socket_actor(principal)))

    return {
        "markup.create": markup_create,
        "markup.update": markup_update,
        "markup.resolve": markup_resolve,
        "markup.dismiss": markup_dismiss,
        "review.vote": review_vote,
    }
