"""Who may listen on which realtime channel, and which events of a shared channel each listener may see."""

from __future__ import annotations

from typing import Protocol

from models.designs import Designs
from models.errors import NotFound, PermissionDenied
from models.jobs import Jobs
from models.organizations import Organizations
from models.policy import Classification, Principal, classification_allows, require
from models.reviews import Reviews
from models.timeline import Timeline


class ChannelEvent(Protocol):
    """What the policy reads of an event on its way to a subscriber (realtime.events.Event has it)."""

    @property
    def channel(self) -> str: ...

    @property
    def data(self) -> dict[str, object] | None: ...


class ChannelPolicy:
    """The access policy applied to channels: the same repositories, hence the same rules, as REST."""

    def __init__(
        self, *, designs: Designs, reviews: Reviews, jobs: Jobs, orgs: Organizations, timeline: Timeline | None = None
    ) -> None:
        self.designs = designs
        self.reviews = reviews
        self.jobs = jobs
        self.orgs = orgs
        self.timeline = timeline

    async def authorize(self, principal: Principal, channel: str) -> None:
        """Raise the REST answer (404, 403 PERMISSION_DENIED or ITAR_VIOLATION) for a refused subscription."""
        kind, _, ident = channel.partition(":")
        if kind == "design":
            await self.designs.get_visible(principal, ident)
        elif kind == "review":
            await self.reviews.can_read(principal, ident)
            if self.timeline is not None:
                # Joining the room is part of the review's story: the first join of each user is kept.
                await self.timeline.joined(principal, ident)
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
    """An event about a classified design reaches only listeners cleared for the label it carries, on every
    channel. On an organization's feed that is the policy itself; on a design's, review's or job's channel,
    authorized at subscribe time and re-checked when access changes, it is the last line: an event announcing
    a reclassification never reaches a listener whose subscription another process has not re-checked yet."""
    if principal is None:
        return False
    data = event.data or {}
    classification = data.get("classification")
    if classification is None or classification == Classification.UNCLASSIFIED.value:
        return True
    kind, _, ident = event.channel.partition(":")
    org_id = ident if kind == "org" else data.get("organization_id")
    if org_id is None and classification == Classification.ITAR.value:
        # An event that does not name its organization is as visible as the resource its channel was authorized
        # for; the clearance levels above need no organization and are applied regardless.
        return True
    return classification_allows(
        principal.clearance, principal.is_us_person, str(classification), org_is_us=org_id in principal.us_orgs
    )
