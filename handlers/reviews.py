"""Review session endpoints, and the design-level start_review/, approve/ and reject/ that act on its review."""

from __future__ import annotations

from typing import Any

from handlers.base import LIST, UUID, APIHandler, authenticated
from models.reviews import ApproveIn, CancelIn, DesignApproveIn, RejectIn, ReviewIn, ReviewPatch, Reviews, StartReviewIn


class ReviewsBase(APIHandler):
    """The reviews repository, and writing one session with its version as ETag."""

    @property
    def reviews(self) -> Reviews:
        return self.services.reviews

    async def write_review(self, doc: dict[str, Any], status: int = 200) -> None:
        self.set_header("ETag", f'"{doc["version"]}"')
        self.write_json(await self.reviews.render_detail(doc), status=status)


class ReviewsHandler(ReviewsBase):
    """GET: the review sessions the caller may see; POST: open one on a READY design."""

    query_params = LIST

    @authenticated
    async def get(self) -> None:
        page = await self.reviews.list_visible(
            self.require_principal(), self.request.query_arguments, self.absolute_url(self.request.path)
        )
        self.write_json(page)

    @authenticated
    async def post(self) -> None:
        doc = await self.reviews.create(self.require_principal(), self.parse_body(ReviewIn), self.actor)
        await self.write_review(doc, status=201)


class ReviewHandler(ReviewsBase):
    """One session: read with votes and markup counts; PATCH reviewers, rule, due date, notes or status."""

    @authenticated
    async def get(self, review_id: str) -> None:
        await self.write_review(await self.reviews.get_visible(self.require_principal(), review_id))

    @authenticated
    async def patch(self, review_id: str) -> None:
        body = self.parse_body(ReviewPatch)
        doc = await self.reviews.update(
            self.require_principal(), review_id, body, self.actor, self.request.headers.get("If-Match")
        )
        await self.write_review(doc)


class ReviewApproveHandler(ReviewsBase):
    """POST: the caller's approving vote."""

    @authenticated
    async def post(self, review_id: str) -> None:
        vote = self.parse_body(ApproveIn).vote()
        await self.write_review(await self.reviews.vote(self.require_principal(), review_id, vote, self.actor))


class ReviewRejectHandler(ReviewsBase):
    """POST: the caller's rejecting vote, with a reason."""

    @authenticated
    async def post(self, review_id: str) -> None:
        vote = self.parse_body(RejectIn).vote()
        await self.write_review(await self.reviews.vote(self.require_principal(), review_id, vote, self.actor))


class ReviewCancelHandler(ReviewsBase):
    """POST: cancel the session (its creator or ADMIN/OWNER); the design returns to READY."""

    @authenticated
    async def post(self, review_id: str) -> None:
        body = self.parse_body(CancelIn)
        await self.write_review(await self.reviews.cancel(self.require_principal(), review_id, body, self.actor))


class StartReviewHandler(ReviewsBase):
    """POST /api/designs/{id}/start_review/: open a session on that design."""

    @authenticated
    async def post(self, design_id: str) -> None:
        body = self.parse_body(StartReviewIn)
        doc = await self.reviews.start_review(self.require_principal(), design_id, body, self.actor)
        self.write_json(
            {"review_session_id": doc["_id"], "status": "IN_REVIEW", "review": await self.reviews.render_detail(doc)},
            status=201,
        )


class DesignApproveHandler(ReviewsBase):
    """POST /api/designs/{id}/approve/: an approving vote in that design's open session."""

    @authenticated
    async def post(self, design_id: str) -> None:
        vote = self.parse_body(DesignApproveIn).vote()
        await self.write_review(
            await self.reviews.vote_on_design(self.require_principal(), design_id, vote, self.actor)
        )


class DesignRejectHandler(ReviewsBase):
    """POST /api/designs/{id}/reject/: a rejecting vote in that design's open session."""

    @authenticated
    async def post(self, design_id: str) -> None:
        vote = self.parse_body(RejectIn).vote()
        await self.write_review(
            await self.reviews.vote_on_design(self.require_principal(), design_id, vote, self.actor)
        )


routes = [
    (r"/api/reviews/", ReviewsHandler),
    (rf"/api/reviews/{UUID}/", ReviewHandler),
    (rf"/api/reviews/{UUID}/approve/", ReviewApproveHandler),
    (rf"/api/reviews/{UUID}/reject/", ReviewRejectHandler),
    (rf"/api/reviews/{UUID}/cancel/", ReviewCancelHandler),
    (rf"/api/designs/{UUID}/start_review/", StartReviewHandler),
    (rf"/api/designs/{UUID}/approve/", DesignApproveHandler),
    (rf"/api/designs/{UUID}/reject/", DesignRejectHandler),
]
