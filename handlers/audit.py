"""Audit trail endpoints: list, detail, search, export and chain verification."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from handlers.base import LIST, APIHandler, authenticated, dumps
from models import audit

CSV_COLUMNS = [
    "id",
    "timestamp",
    "actor_id",
    "actor_username",
    "action",
    "resource_type",
    "resource_id",
    "organization",
    "classification",
    "ip_address",
    "changes",
    "hash",
]
FLUSH_BYTES = 1 << 20  # an export is sent on in pieces of about this size, never held whole
# A spreadsheet runs a cell that starts with one of these as a formula (=HYPERLINK(...) in a material name).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """A cell a spreadsheet shows as text: one that could start a formula gets a leading apostrophe."""
    return "'" + text if text.startswith(FORMULA_START) else text


def csv_row(row: dict[str, Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(
        [
            csv_cell(
                json.dumps(row[c], default=str)
                if c == "changes"
                else dumps(row[c]).strip('"')
                if row[c] is not None
                else ""
            )
            for c in CSV_COLUMNS
        ]
    )
    return buffer.getvalue()


class AuditBase(APIHandler):
    """The audit trail repository."""

    @property
    def trail(self) -> audit.AuditTrail:
        return self.services.audit


class AuditListHandler(AuditBase):
    """GET: the entries the caller may see, filtered, searched and paged like every list."""

    query_params = LIST

    @authenticated
    async def get(self) -> None:
        page = await self.trail.list_visible(
            self.require_principal(), self.request.query_arguments, self.absolute_url(self.request.path)
        )
        self.write_json(page)


class AuditSearchHandler(AuditBase):
    """GET /search/?q=: the list's search under its other name."""

    query_params = LIST

    @authenticated
    async def get(self) -> None:
        page = await self.trail.search(
            self.require_principal(), self.request.query_arguments, self.absolute_url(self.request.path)
        )
        self.write_json(page)


class AuditEntryHandler(AuditBase):
    """GET: one entry, if the caller may see it."""

    @authenticated
    async def get(self, entry_id: str) -> None:
        self.write_json(audit.render(await self.trail.get_visible(self.require_principal(), int(entry_id))))


class AuditExportHandler(AuditBase):
    """GET ?format=csv|json: the caller's visible entries, streamed; the export is itself audited."""

    query_params = LIST  # the list's filters, validated by the trail, with format, start_date and end_date

    @authenticated
    async def get(self) -> None:
        fmt = self.get_query_argument("format", "csv")
        cursor = await self.trail.export(self.require_principal(), fmt, self.request.query_arguments, self.actor)
        self.set_header("Content-Type", "text/csv; charset=UTF-8" if fmt == "csv" else "application/json")
        self.set_header("Content-Disposition", f'attachment; filename="enginel-audit.{fmt}"')
        self.write("[" if fmt == "json" else ",".join(CSV_COLUMNS) + "\r\n")
        first, pending = True, 0
        try:
            async for entry in cursor:
                row = audit.render(entry)
                chunk = ("" if first else ",") + dumps(row) if fmt == "json" else csv_row(row)
                self.write(chunk)
                first, pending = False, pending + len(chunk)
                if pending > FLUSH_BYTES:
                    if not await self.flush_bounded():
                        return  # the client left or stopped reading
                    pending = 0
        finally:
            await cursor.close()
        if fmt == "json":
            self.write("]")
        self.finish()


class AuditVerifyHandler(AuditBase):
    """GET: walk the whole hash chain (platform staff)."""

    @authenticated
    async def get(self) -> None:
        self.write_json(await self.trail.verify(self.require_principal()))


routes = [
    (r"/api/audit-logs/", AuditListHandler),
    (r"/api/audit-logs/search/", AuditSearchHandler),
    (r"/api/audit-logs/export/", AuditExportHandler),
    (r"/api/audit-logs/verify/", AuditVerifyHandler),
    (r"/api/audit-logs/([0-9]{1,12})/", AuditEntryHandler),
]
