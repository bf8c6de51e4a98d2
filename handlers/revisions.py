"""Revision endpoints: compare two versions, their diff GLB, carried markups, review rules, override, timeline, BCF."""

from __future__ import annotations

import asyncio
import re

from handlers.base import DETAIL, UUID, APIHandler, authenticated
from handlers.viewables import GLB_TYPE
from models.errors import ValidationFailed
from models.gates import GateRuleIn, GateRulePatch, Gates, OverrideIn
from models.revisions import Revisions
from models.viewables import RETRY_AFTER_SECONDS, Pending, render_pending

CHUNK = 1 << 20


class RevisionsBase(APIHandler):
    @property
    def revisions(self) -> Revisions:
        return self.services.revisions

    @property
    def gates(self) -> Gates:
        return self.services.gates


class CompareHandler(RevisionsBase):
    """GET /api/designs/{id}/compare/?to={other}: BOM changes and property deltas, and the geometric diff's state."""

    query_params = DETAIL | {"to"}

    @authenticated
    async def get(self, design_id: str) -> None:
        values = self.request.query_arguments.get("to") or []
        if len(values) > 1:
            raise ValidationFailed("Give one 'to' only.", field_errors={"to": ["Give one 'to' only."]})
        other = values[0].decode() if values else None
        if other is not None and not re.fullmatch(r"[0-9a-fA-F-]{36}", other):
            raise ValidationFailed("'to' is not a design id.", field_errors={"to": ["Expected a UUID."]})
        self.write_json(await self.revisions.compare(self.require_principal(), design_id, other))


class DiffViewableHandler(RevisionsBase):
    """GET /api/designs/{id}/compare/{other}/viewable/: the diff GLB (added and removed material), or 202 and its
    job, as /viewable/ answers for a design's model."""

    query_params: frozenset[str] = frozenset()  # bytes, not JSON: nothing to pick

    @authenticated
    async def get(self, design_id: str, other_id: str) -> None:
        answer = await self.revisions.diff_viewable(
            self.require_principal(), design_id, other_id, self.actor, self.request.headers.get("If-None-Match")
        )
        if isinstance(answer, Pending):
            if self.services.runner is not None:
                self.services.runner.wake()
            self.set_header("Retry-After", str(RETRY_AFTER_SECONDS))
            self.set_header("Location", f"/api/analysis-jobs/{answer.job['_id']}/")
            body = render_pending(answer.job)
            body["detail"] = "The geometric diff is being computed. Follow job:<job_id> on the WebSocket, or ask again."
            self.write_json(body, status=202)
            return
        self.set_header("ETag", f'"{answer.sha256}"')
        self.set_header("Cache-Control", "private, no-cache")
        if not answer.modified:
            self.set_status(304)
            self.finish()
            return
        self.set_header("Content-Type", GLB_TYPE)
        self.set_header("Content-Length", str(answer.size))
        self.set_header("Content-Disposition", f'inline; filename="diff-{design_id[:8]}-{other_id[:8]}.glb"')
        await self.send_transfer(answer.transfer)

    def compute_etag(self) -> str | None:
        return None


class CarriedMarkupsHandler(RevisionsBase):
    """GET /api/designs/{id}/carried-markups/: the previous version's open markups, re-anchored on this one."""

    @authenticated
    async def get(self, design_id: str) -> None:
        self.write_json(await self.revisions.carry_offer(self.require_principal(), design_id))


class ReviewRulesHandler(RevisionsBase):
    """GET: an organization's review rules (members); POST: a new rule (ADMIN/OWNER, audited)."""

    @authenticated
    async def get(self, org_id: str) -> None:
        principal = self.require_principal()
        await self.services.orgs.get_visible(principal, org_id)
        self.write_json({"results": await self.gates.list_rules(principal, org_id)})

    @authenticated
    async def post(self, org_id: str) -> None:
        principal = self.require_principal()
        body = self.parse_body(GateRuleIn)
        await self.services.orgs.get_visible(principal, org_id)
        self.write_json(await self.gates.create_rule(principal, org_id, body, self.actor), status=201)


class ReviewRuleHandler(RevisionsBase):
    """One review rule: read, PATCH, DELETE (ADMIN/OWNER, audited)."""

    @authenticated
    async def get(self, org_id: str, rule_id: str) -> None:
        self.write_json(await self.gates.get_rule(self.require_principal(), org_id, rule_id))

    @authenticated
    async def patch(self, org_id: str, rule_id: str) -> None:
        body = self.parse_body(GateRulePatch)
        self.write_json(await self.gates.update_rule(self.require_principal(), org_id, rule_id, body, self.actor))

    @authenticated
    async def delete(self, org_id: str, rule_id: str) -> None:
        await self.gates.delete_rule(self.require_principal(), org_id, rule_id, self.actor)
        self.no_content()


class ReviewOverrideHandler(RevisionsBase):
    """POST /api/reviews/{id}/override/: an ADMIN/OWNER releases approval held by a review rule."""

    @authenticated
    async def post(self, review_id: str) -> None:
        body = self.parse_body(OverrideIn)
        doc = await self.gates.override(self.require_principal(), review_id, body, self.actor)
        self.set_header("ETag", f'"{doc["version"]}"')
        self.write_json(await self.services.reviews.render_detail(doc))


class TimelineHandler(RevisionsBase):
    """GET /api/reviews/{id}/timeline/?after=&limit=: what happened in the review, in order."""

    query_params = DETAIL | {"after", "limit"}

    @authenticated
    async def get(self, review_id: str) -> None:
        self.write_json(
            await self.services.timeline.timeline(self.require_principal(), review_id, self.request.query_arguments)
        )


class BcfHandler(RevisionsBase):
    """GET /api/reviews/{id}/bcf/: the review's markups as a BCF 3.0 archive (a download: same policy, audited)."""

    query_params: frozenset[str] = frozenset()

    @authenticated
    async def get(self, review_id: str) -> None:
        name, archive, size = await self.services.bcf.export(
            self.require_principal(), review_id, self.actor, self.base_url()
        )
        try:
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Content-Length", str(size))
            self.set_header("Content-Disposition", f'attachment; filename="{re.sub(r"[^A-Za-z0-9._-]", "_", name)}"')
            while chunk := await asyncio.to_thread(archive.read, CHUNK):
                self.write(chunk)
                if not await self.flush_bounded():
                    return
            self.finish()
        finally:
            archive.close()

    def compute_etag(self) -> str | None:
        return None


routes = [
    (rf"/api/designs/{UUID}/compare/", CompareHandler),
    (rf"/api/designs/{UUID}/compare/{UUID}/viewable/", DiffViewableHandler),
    (rf"/api/designs/{UUID}/carried-markups/", CarriedMarkupsHandler),
    (rf"/api/organizations/{UUID}/review-rules/", ReviewRulesHandler),
    (rf"/api/organizations/{UUID}/review-rules/{UUID}/", ReviewRuleHandler),
    (rf"/api/reviews/{UUID}/override/", ReviewOverrideHandler),
    (rf"/api/reviews/{UUID}/timeline/", TimelineHandler),
    (rf"/api/reviews/{UUID}/bcf/", BcfHandler),
]
