"""Design series and design asset endpoints: lists, signed streaming uploads, downloads and metadata."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable
from typing import Any
from urllib.parse import quote

import tornado.ioloop
from pydantic import ValidationError

from handlers.base import LIST, UUID, APIHandler, authenticated, public
from handlers.multipart import Event, FieldPart, FileData, FileStart, MultipartReader
from models.designs import (
    CONTENT_TYPES,
    ContentReceiver,
    DesignIn,
    DesignPatch,
    DirectUpload,
    FinalizeIn,
    MultipartDesignIn,
    UploadUrlIn,
)
from models.errors import APIError, ValidationFailed, field_errors_from
from models.ratelimit import Window
from models.series import SeriesIn, SeriesPatch
from models.storage import FileTooLarge


class DesignsBase(APIHandler):
    """Rendering one design, waking this process's job runner, and the per-caller upload budget."""

    async def render_design(self, doc: dict[str, Any]) -> dict[str, Any]:
        return (await self.services.designs.render_many([doc]))[0]

    def wake_runner(self) -> None:
        # A new job starts now on this process rather than at the runner's next poll.
        if self.services.runner is not None:
            self.services.runner.wake()

    async def upload_budget(self) -> None:
        principal = self.require_principal()
        decision = await self.services.limiter.hit(
            f"upload:{principal.id}", (Window(self.config.uploads_per_hour, 3600),)
        )
        decision.raise_if_denied("Upload")


# ---------------------------------------------------------------- series


class SeriesListHandler(APIHandler):
    """GET: the series the caller may see; POST: a new series (a part number) in one of their organizations."""

    query_params = LIST

    @authenticated
    async def get(self) -> None:
        page = await self.services.series.list_visible(
            self.require_principal(), self.request.query_arguments, self.absolute_url(self.request.path)
        )
        self.write_json(page)

    @authenticated
    async def post(self) -> None:
        principal = self.require_principal()
        doc = await self.services.series.create(principal, self.parse_body(SeriesIn), self.actor)
        self.write_json((await self.services.series.render_many([doc], principal))[0], status=201)


class SeriesHandler(APIHandler):
    """One series: read, edit (PATCH/PUT), delete (with its designs only when forced)."""

    @authenticated
    async def get(self, series_id: str) -> None:
        principal = self.require_principal()
        doc = await self.services.series.get_visible(principal, series_id)
        self.write_json((await self.services.series.render_many([doc], principal))[0])

    async def _update(self, series_id: str, patch: dict[str, Any]) -> None:
        principal = self.require_principal()
        doc = await self.services.series.update(principal, series_id, patch, self.actor)
        self.write_json((await self.services.series.render_many([doc], principal))[0])

    @authenticated
    async def patch(self, series_id: str) -> None:
        await self._update(series_id, self.parse_body(SeriesPatch).model_dump(exclude_unset=True))

    @authenticated
    async def put(self, series_id: str) -> None:
        body = self.parse_body(SeriesIn)
        await self._update(series_id, body.model_dump(exclude={"organization"}))

    @authenticated
    async def delete(self, series_id: str) -> None:
        force = self.get_query_argument("force", "false").lower() == "true"
        await self.services.designs.delete_series(self.require_principal(), series_id, self.actor, force=force)
        self.no_content()


class SeriesDesignsHandler(APIHandler):
    """GET: the series' versions the caller may see, oldest first."""

    @authenticated
    async def get(self, series_id: str) -> None:
        self.write_json(await self.services.designs.series_versions(self.require_principal(), series_id))


# ---------------------------------------------------------------- designs


class DesignsHandler(DesignsBase):
    """GET: the designs the caller may see; POST: a design from a finished upload, or a one-request multipart
    upload, streamed: authorized before the file's first byte (from ``?series=`` before the body, else from the
    form fields, which must precede the file part), stored as it arrives, never held in memory."""

    query_params = LIST

    _form: MultipartReader | None = None
    _direct: DirectUpload | None = None
    _form_error: Exception | None = None

    @property
    def body_limit(self) -> int:
        ctype = self.request.headers.get("Content-Type", "")
        return self.config.max_multipart_bytes if ctype.startswith("multipart/") else self.config.max_json_body_bytes

    async def prepare(self) -> None:
        await super().prepare()
        ctype = self.request.headers.get("Content-Type", "")
        if self.request.method != "POST" or not ctype.startswith("multipart/"):
            return
        await self.upload_budget()
        self._fields: dict[str, str] = {}
        self._file_seen = False
        series = self.get_query_argument("series", None)
        if series is not None:
            self._fields["series"] = series
            form = self._form_input()
            await self.services.designs.authorize_direct(self.require_principal(), form.series)
        self._form = MultipartReader(ctype)
        length = self.request.headers.get("Content-Length")
        self._bound = int(length) if length is not None else self.body_limit

    @authenticated
    async def get(self) -> None:
        page = await self.services.designs.list_visible(
            self.require_principal(), self.request.query_arguments, self.absolute_url(self.request.path)
        )
        self.write_json(page)

    @authenticated
    async def post(self) -> None:
        if self._form is not None:
            await self._multipart(self._form)
            return
        doc = await self.services.designs.create(self.require_principal(), self.parse_body(DesignIn), self.actor)
        self.write_json(await self.render_design(doc), status=201)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self._form is None:
            return super().data_received(chunk)
        return self._receive(self._form, chunk)

    async def _receive(self, form: MultipartReader, chunk: bytes) -> None:
        if self._form_error is not None:
            return  # refused already: the rest of the body is read and dropped, then the error is the answer
        try:
            for part in form.feed(chunk):
                await self._on_part(part)
        except Exception as exc:  # an unexpected one too: answered (500) once the body is in, not a dropped socket
            self._form_error = exc
            await self._abort_direct()

    async def _on_part(self, part: Event) -> None:
        if isinstance(part, FileData):
            assert self._direct is not None
            await self._direct.feed(part.data)
        elif isinstance(part, FieldPart):
            if self._file_seen:
                raise ValidationFailed(
                    "Send the form fields before the file part (or the series in ?series=).",
                    field_errors={part.name: ["Must come before the file part."]},
                )
            if part.name not in MultipartDesignIn.model_fields:
                raise ValidationFailed("Unknown form field.", field_errors={part.name: ["Unknown field."]})
            if part.name in self._fields and self._fields[part.name] != part.value:
                raise ValidationFailed("A form field is given twice.", field_errors={part.name: ["Given twice."]})
            self._fields[part.name] = part.value
        elif isinstance(part, FileStart):
            if part.name != "file" or self._file_seen:
                raise ValidationFailed(
                    "Send exactly one file part, named 'file'.", field_errors={part.name: ["Unexpected file part."]}
                )
            self._file_seen = True
            self._direct = await self.services.designs.open_direct(
                self.require_principal(), self._form_input(), part.filename, self._bound
            )

    def _form_input(self) -> MultipartDesignIn:
        try:
            return MultipartDesignIn.model_validate_json(json.dumps(self._fields))
        except ValidationError as exc:
            raise ValidationFailed("The form is not valid.", field_errors=field_errors_from(exc)) from None

    async def _multipart(self, form: MultipartReader) -> None:
        try:
            if self._form_error is not None:
                raise self._form_error
            form.close()
            direct, self._direct = self._direct, None
            if direct is None:
                raise ValidationFailed("Send exactly one file part named 'file'.", field_errors={"file": ["Required."]})
            result = await direct.finish(self.actor)
        except BaseException:
            await self._abort_direct()
            raise
        self.wake_runner()
        self.write_json(await self.render_design(result), status=201)

    async def _abort_direct(self) -> None:
        direct, self._direct = self._direct, None
        if direct is not None:
            await direct.abort()

    def on_connection_close(self) -> None:
        if self._direct is not None:  # the client went away mid-body: leave nothing behind
            tornado.ioloop.IOLoop.current().add_callback(self._abort_direct)


class UploadUrlHandler(DesignsBase):
    """POST: a signed, single-use URL to PUT one file's bytes to."""

    @authenticated
    async def post(self) -> None:
        body = self.parse_body(UploadUrlIn)
        await self.upload_budget()
        self.write_json(
            await self.services.designs.create_upload(self.require_principal(), body, self.base_url()), status=201
        )


class UploadHandler(APIHandler):
    """PUT <upload_url>: the signed URL is the credential; the body streams to storage, never into memory."""

    _upload: dict[str, Any] | None = None
    _receiver: ContentReceiver | None = None
    _error: APIError | None = None

    @property
    def body_limit(self) -> int:
        return self.config.max_upload_bytes

    async def prepare(self) -> None:
        if self.request.method != "PUT":
            await super().prepare()
            return
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.body_limit:
            raise FileTooLarge(f"The file is {length} bytes; the limit is {self.body_limit}.")
        await super().prepare()
        designs = self.services.designs
        self._upload = await designs.begin_receive(
            self.path_args[0],
            self.get_query_argument("expires", ""),
            self.get_query_argument("signature", ""),
            int(length) if length and length.isdigit() else None,
        )
        try:
            self._receiver = await designs.receiver(self._upload["format"], self._upload["declared_size"])
        except BaseException:
            await designs.fail_receive(self._upload)
            raise

    async def data_received(self, chunk: bytes) -> None:
        if self._receiver is None or self._error is not None:
            return
        try:
            await self._receiver.feed(chunk)
        except APIError as exc:
            # Remember and stop storing; the answer goes out once the client has finished sending.
            self._error = exc
            await self._discard()

    async def _discard(self) -> None:
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            await receiver.abort()
        if self._upload is not None:
            await self.services.designs.fail_receive(self._upload)

    def on_connection_close(self) -> None:
        if self._receiver is not None:  # the client went away mid-body: leave nothing behind
            tornado.ioloop.IOLoop.current().add_callback(self._discard)

    @public
    async def put(self, upload_id: str) -> None:
        if self._error is not None:
            raise self._error
        assert self._upload is not None and self._receiver is not None
        try:
            stored = await self._receiver.finish()
        except BaseException:
            await self._discard()
            raise
        self._receiver = None
        self.write_json(await self.services.designs.finish_receive(self._upload, stored))


class DesignHandler(DesignsBase):
    """One design: read, edit (revision, material, classification, archive), delete."""

    @authenticated
    async def get(self, design_id: str) -> None:
        doc = await self.services.designs.get_visible(self.require_principal(), design_id)
        self.set_header("ETag", f'"{doc["version"]}"')
        self.write_json(await self.render_design(doc))

    @authenticated
    async def patch(self, design_id: str) -> None:
        body = self.parse_body(DesignPatch)
        doc = await self.services.designs.update(
            self.require_principal(), design_id, body, self.actor, self.request.headers.get("If-Match")
        )
        self.set_header("ETag", f'"{doc["version"]}"')
        self.write_json(await self.render_design(doc))

    @authenticated
    async def delete(self, design_id: str) -> None:
        await self.services.designs.delete(self.require_principal(), design_id, self.actor)
        self.no_content()


class FinalizeHandler(DesignsBase):
    """POST: confirm the upload's hash and queue its analysis."""

    @authenticated
    async def post(self, design_id: str) -> None:
        body = self.parse_body(FinalizeIn)
        result = await self.services.designs.finalize(self.require_principal(), design_id, body.file_hash, self.actor)
        self.wake_runner()
        self.write_json(result)


class DownloadHandler(DesignsBase):
    """GET: the original bytes, whole or one byte range, streamed and re-authorized as they go; audited."""

    query_params: frozenset[str] = frozenset()  # bytes, not JSON: nothing to pick

    @authenticated
    async def get(self, design_id: str) -> None:
        transfer = await self.services.designs.download(
            self.require_principal(), design_id, self.actor, self.request.headers.get("Range")
        )
        doc = transfer.design
        if transfer.partial:
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {transfer.start}-{transfer.end - 1}/{doc['file_size_bytes']}")
        filename = doc["filename"]
        ascii_name = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
        self.set_header("Content-Type", CONTENT_TYPES.get(doc["file_format"], "application/octet-stream"))
        self.set_header(
            "Content-Disposition", f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
        )
        self.set_header("Content-Length", str(transfer.length))
        self.set_header("Accept-Ranges", "bytes")
        self.set_header("ETag", f'"{doc["content_sha256"]}"')
        self.set_header("Cache-Control", "private, no-store")
        await self.send_transfer(transfer)

    def compute_etag(self) -> str | None:
        return None  # set explicitly from the content hash; never hash a streamed body


class MetadataHandler(DesignsBase):
    """GET: geometry, material and validation from the design's analysis."""

    @authenticated
    async def get(self, design_id: str) -> None:
        self.write_json(await self.services.designs.metadata(self.require_principal(), design_id))


routes = [
    (r"/api/series/", SeriesListHandler),
    (rf"/api/series/{UUID}/", SeriesHandler),
    (rf"/api/series/{UUID}/designs/", SeriesDesignsHandler),
    (r"/api/designs/", DesignsHandler),
    (r"/api/designs/upload-url/", UploadUrlHandler),
    (rf"/api/uploads/{UUID}/", UploadHandler),
    (rf"/api/designs/{UUID}/", DesignHandler),
    (rf"/api/designs/{UUID}/finalize_upload/", FinalizeHandler),
    (rf"/api/designs/{UUID}/download/", DownloadHandler),
    (rf"/api/designs/{UUID}/metadata/", MetadataHandler),
]
