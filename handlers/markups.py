"""Markup endpoints: 3D annotations, their resolution, and their reply threads."""

from __future__ import annotations

from typing import Any

from handlers.base import LIST, APIHandler, authenticated
from models.markups import DismissIn, MarkupIn, MarkupPatch, Markups, ReplyIn, ResolveIn

MARKUP_ID = r"([1-9][0-9]{0,15})"


class MarkupsBase(APIHandler):
    """The markups repository, and writing one markup with its version as ETag."""

    @property
    def markups(self) -> Markups:
        return self.services.markups

    async def write_markup(self, doc: dict[str, Any], status: int = 200) -> None:
        self.set_header("ETag", f'"{doc["version"]}"')
        self.write_json(await self.markups.render_detail(doc), status=status)


class MarkupsHandler(MarkupsBase):
    """GET: the markups the caller may see; POST: a markup in an open review session."""

    query_params = LIST

    @authenticated
    async def get(self) -> None:
        page = await self.markups.list_visible(
            self.require_principal(), self.request.query_arguments, self.absolute_url(self.request.path)
        )
        self.write_json(page)

    @authenticated
    async def post(self) -> None:
        doc = await self.markups.create(self.require_principal(), self.parse_body(MarkupIn), self.actor)
        await self.write_markup(doc, status=201)


class MarkupHandler(MarkupsBase):
    """One markup: read with its thread, edit (its author) or reopen, delete."""

    @authenticated
    async def get(self, markup_id: str) -> None:
        await self.write_markup(await self.markups.get_visible(self.require_principal(), int(markup_id)))

    @authenticated
    async def patch(self, markup_id: str) -> None:
        body = self.parse_body(MarkupPatch)
        doc = await self.markups.update(
            self.require_principal(), int(markup_id), body, self.actor, self.request.headers.get("If-Match")
        )
        await self.write_markup(doc)

    @authenticated
    async def delete(self, markup_id: str) -> None:
        await self.markups.delete(self.require_principal(), int(markup_id), self.actor)
        self.no_content()


class MarkupResolveHandler(MarkupsBase):
    """POST: resolve the markup, with notes."""

    @authenticated
    async def post(self, markup_id: str) -> None:
        body = self.parse_body(ResolveIn)
        await self.write_markup(await self.markups.resolve(self.require_principal(), int(markup_id), body, self.actor))


class MarkupDismissHandler(MarkupsBase):
    """POST: dismiss the markup, with a reason."""

    @authenticated
    async def post(self, markup_id: str) -> None:
        body = self.parse_body(DismissIn)
        await self.write_markup(await self.markups.dismiss(self.require_principal(), int(markup_id), body, self.actor))


class MarkupRepliesHandler(MarkupsBase):
    """GET: the markup's thread; POST: a reply to it."""

    @authenticated
    async def get(self, markup_id: str) -> None:
        replies = await self.markups.replies(self.require_principal(), int(markup_id))
        self.write_json({"count": len(replies), "results": replies})

    @authenticated
    async def post(self, markup_id: str) -> None:
        body = self.parse_body(ReplyIn)
        self.write_json(
            await self.markups.reply(self.require_principal(), int(markup_id), body, self.actor), status=201
        )


routes = [
    (r"/api/markups/", MarkupsHandler),
    (rf"/api/markups/{MARKUP_ID}/", MarkupHandler),
    (rf"/api/markups/{MARKUP_ID}/resolve/", MarkupResolveHandler),
    (rf"/api/markups/{MARKUP_ID}/dismiss/", MarkupDismissHandler),
    (rf"/api/markups/{MARKUP_ID}/replies/", MarkupRepliesHandler),
]
