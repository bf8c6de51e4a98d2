"""Who may listen on which realtime channel, and which events of a shared channel each listener may see."""

from __future__ import annotations

from typing import Protocol

from models.designs import Designs
from models.errors import NotFound, PermissionDenied
from models.jobs import Jobs
from models.organizations import Organizations
from models.policy import Classification, Principal, classification_allows, require
from models.reviews import Reviews


class ChannelEvent(Protocol):
    """What the policy reads of an event on its way to a subscriber (realtime.events.Event has it)."""

    @property
    def channel(self) -> str: ...

    @property
    def data(self) -> dict[str, object] | None: ...


class ChannelPolicy:
    """The access policy applied to channels: the same repositories, hence the same rules, as REST."""

    def __init__(self, *, designs: Designs, reviews: Reviews, jobs: Jobs, orgs: Organizations) -> None:
        self.designs = designs
        self.reviews = reviews
        self.jobs = jobs
        self.orgs = orgs

    async def authorize(self, principal: Principal, channel: str) -> None:
        """Raise the REST answer (404, 403 PERMISSION_DENIED or ITAR_VIOLATION) for a refused subscription."""
        kind, _, ident = channel.partition(":")
        if kind == "design":
            await self.designs.get_visible(principal, ident)
        elif kind == "review":
            await self.reviews.can_read(principal, ident)
        elif kind == "job":
            await self.jobs.get_visible(principal, ident)
        elif kind == "org":
            await self.orgs.get_visible(principal, ident)
            require(principal, "org.read", ident)
        elif kind == "user":
            if not ident.isdigit() or int(ident) != principal.id:
                raise PermissionDenied("A user channel is for its own user.")
        else:
            raise NotFound("No such channel.")


def event_visible(principal: Principal | None, event: ChannelEvent) -> bool:
    """On an organization's feed, events about a classified design reach only the cleared. Other channels
    were authorized for one resource at subscribe time and are re-checked when access changes."""
    if principal is None:
        return False
    kind, _, ident = event.channel.partition(":")
    if kind != "org":
        return True
    classification = (event.data or {}).get("classification")
    if classification is None or classification == Classification.UNCLASSIFIED.value:
        return True
    return classification_allows(
        principal.clearance, principal.is_us_person, str(classification), org_is_us=ident in principal.us_orgs
    )
