"""GET /api/designs/{id}/viewable/: the design's GLB for the browser viewer, or 202 and the job making it."""

from __future__ import annotations

import re

from handlers.base import UUID, APIHandler, authenticated
from models.viewables import RETRY_AFTER_SECONDS, Pending, Viewables, render_pending

GLB_TYPE = "model/gltf-binary"


class ViewableHandler(APIHandler):
    """GET: the GLB (or 202 and the job making it); bytes, so no `fields`."""

    query_params: frozenset[str] = frozenset()

    @property
    def viewables(self) -> Viewables:
        return self.services.viewables

    @authenticated
    async def get(self, design_id: str) -> None:
        answer = await self.viewables.get(
            self.require_principal(), design_id, self.actor, self.request.headers.get("If-None-Match")
        )
        if isinstance(answer, Pending):
            if self.services.runner is not None:
                self.services.runner.wake()
            self.set_header("Retry-After", str(RETRY_AFTER_SECONDS))
            self.set_header("Location", f"/api/analysis-jobs/{answer.job['_id']}/")
            self.write_json(render_pending(answer.job), status=202)
            return
        # Cached by the browser only per user, and checked again on every use: access may have changed.
        self.set_header("ETag", f'"{answer.sha256}"')
        self.set_header("Cache-Control", "private, no-cache")
        if not answer.modified:
            self.set_status(304)
            self.finish()
            return
        name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{answer.design['part_number']}-v{answer.design['version_number']}")
        self.set_header("Content-Type", GLB_TYPE)
        self.set_header("Content-Length", str(answer.size))
        self.set_header("Content-Disposition", f'inline; filename="{name}.glb"')
        await self.send_transfer(answer.transfer)

    def compute_etag(self) -> str | None:
        return None  # the content hash, set above; never hash a streamed body


routes = [
    (rf"/api/designs/{UUID}/viewable/", ViewableHandler),
]
