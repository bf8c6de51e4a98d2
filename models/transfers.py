"""Downloads on their way out: the one byte range served, and the design's policy applied again while bytes stream."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from models import audit
from models.collections import DESIGNS
from models.database import Db
from models.errors import APIError, Conflict
from models.policy import Principal

log = logging.getLogger("enginel.transfers")

# One range only: `bytes=first-last`, `bytes=first-` or `bytes=-suffix`. A multi-range header is answered with
# the whole body (HTTP lets a server ignore Range), so no request makes the server plan thousands of parts.
_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$")
# Longer numbers than this are past the end of any file; they are never handed to int() (whose digit limit
# would raise) and compare as "beyond everything".
MAX_RANGE_DIGITS = 18
BEYOND = 1 << 62


def _number(digits: str) -> int:
    return BEYOND if len(digits) > MAX_RANGE_DIGITS else int(digits)


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The [start, end) a single-range `Range: bytes=...` header asks of `size` bytes, or None for the whole
    body (no header, or one this server does not serve partially). Past the end: 416 with Content-Range."""
    match = _RANGE.match(header or "")
    if not match or not (match.group(1) or match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if first:
        start, end = _number(first), (min(_number(last) + 1, size) if last else size)
    else:
        start, end = max(0, size - _number(last)), size
    if start >= size or start >= end:
        raise APIError(
            "The requested range is outside the file.",
            status=416,
            code="RANGE_NOT_SATISFIABLE",
            title="Range not satisfiable",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return start, end


def audited_range(wanted: tuple[int, int] | None) -> dict[str, Any]:
    """What a download's audit entry says about its range: the parsed numbers, never the raw header."""
    return {} if wanted is None else {"range": {"start": wanted[0], "end": wanted[1] - 1}}


class VisibleDesigns(Protocol):
    db: Db

    async def get_visible(self, principal: Principal, design_id: str) -> dict[str, Any]: ...


Refresh = Callable[[Principal], Awaitable[Principal]]


@dataclass
class Transfer:
    """One authorized download of a design's stored bytes (the original file or its viewer GLB)."""

    designs: VisibleDesigns
    principal: Principal
    actor: audit.Actor
    design: dict[str, Any]
    sha256: str
    start: int
    end: int
    partial: bool
    artifact: str  # "original" or "viewable"

    @property
    def length(self) -> int:
        return self.end - self.start

    async def still_allowed(self, sent: int, refresh: Refresh) -> bool:
        """Apply the policy again with the caller's current session, memberships and clearance and the
        design's current classification and content. A refusal is audited (DOWNLOAD_REVOKED) and ends it."""
        design_id = self.design["_id"]
        try:
            self.principal = await refresh(self.principal)
            doc = await self.designs.get_visible(self.principal, design_id)
            if self.sha256 not in (doc.get("content_sha256"), (doc.get("viewable") or {}).get("sha256")):
                raise Conflict("The design's content changed during the download.")
        except APIError as exc:
            current = await self.designs.db[DESIGNS].find_one({"_id": design_id}, projection={"classification": 1})
            await audit.record(
                self.designs.db,
                self.actor,
                "DOWNLOAD_REVOKED",
                "DesignAsset",
                design_id,
                organization_id=self.design["organization_id"],
                classification=(current or self.design)["classification"],
                design_id=design_id,
                changes={
                    "artifact": self.artifact,
                    "reason": exc.code,
                    "bytes_sent": sent,
                    "bytes_total": self.length,
                    **audited_range((self.start, self.end) if self.partial else None),
                },
            )
            log.info("download of %s (%s) ended after %d bytes: %s", design_id, self.artifact, sent, exc.code)
            return False
        return True
