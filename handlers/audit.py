"""Audit trail endpoints: list, detail, search, export and chain verification."""

from __future__ import annotations

import csv
import io
import json

from handlers.base import APIHandler, authenticated, dumps
from models import audit
from models.errors import ValidationFailed
from models.listing import each, parse_list_query, run_list

EXPORT_LIMIT = 100_000
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


class AuditListHandler(APIHandler):
    @authenticated
    async def get(self) -> None:
        principal = self.require_principal()
        query = parse_list_query(audit.AUDIT_LIST, self.request.query_arguments)
        page = await run_list(
            self.db[audit.COLLECTION],
            audit.visible_filter(principal),
            query,
            each(audit.render),
            self.absolute_url(self.request.path),
            self.request.query_arguments,
        )
        self.write_json(page)


class AuditSearchHandler(APIHandler):
    """The seed's /search/?q=: the list's search under its other name."""

    @authenticated
    async def get(self) -> None:
        args = {("search" if k == "q" else k): v for k, v in self.request.query_arguments.items()}
        query = parse_list_query(audit.AUDIT_LIST, args)
        page = await run_list(
            self.db[audit.COLLECTION],
            audit.visible_filter(self.require_principal()),
            query,
            each(audit.render),
            self.absolute_url(self.request.path),
            args,
        )
        self.write_json(page)


class AuditEntryHandler(APIHandler):
    @authenticated
    async def get(self, entry_id: str) -> None:
        self.write_json(audit.render(await audit.get_visible(self.db, self.require_principal(), int(entry_id))))


class AuditExportHandler(APIHandler):
    @authenticated
    async def get(self) -> None:
        principal = self.require_principal()
        fmt = self.get_query_argument("format", "csv")
        if fmt not in ("csv", "json"):
            raise ValidationFailed("format must be csv or json.", field_errors={"format": ["Use csv or json."]})
        args = {k: v for k, v in self.request.query_arguments.items() if k not in ("format", "start_date", "end_date")}
        if "start_date" in self.request.query_arguments:
            args["timestamp__gte"] = self.request.query_arguments["start_date"]
        if "end_date" in self.request.query_arguments:
            args["timestamp__lte"] = self.request.query_arguments["end_date"]
        query = parse_list_query(audit.AUDIT_LIST, args)
        cursor = audit.export_cursor(self.db, principal, query.filter, EXPORT_LIMIT)
        self.set_header("Content-Type", "text/csv; charset=UTF-8" if fmt == "csv" else "application/json")
        self.set_header("Content-Disposition", f'attachment; filename="enginel-audit.{fmt}"')
        await audit.record(self.db, self.actor, "EXPORT", "AuditLog", fmt, changes={"filter": str(query.filter)[:500]})
        first = True
        if fmt == "json":
            self.write("[")
        else:
            self.write(",".join(CSV_COLUMNS) + "\r\n")
        # Streamed in batches so an export of the whole trail never sits in memory at once.
        async for entry in cursor:
            row = audit.render(entry)
            if fmt == "json":
                self.write(("" if first else ",") + dumps(row))
            else:
                buffer = io.StringIO()
                csv.writer(buffer).writerow(
                    [
                        json.dumps(row[c], default=str)
                        if c == "changes"
                        else dumps(row[c]).strip('"')
                        if row[c] is not None
                        else ""
                        for c in CSV_COLUMNS
                    ]
                )
                self.write(buffer.getvalue())
            first = False
            if self._write_buffer and sum(len(b) for b in self._write_buffer) > 1 << 20:
                await self.flush()
        if fmt == "json":
            self.write("]")
        self.finish()


class AuditVerifyHandler(APIHandler):
    @authenticated
    async def get(self) -> None:
        self.write_json(await audit.verify(self.db, self.require_principal()))


routes = [
    (r"/api/audit-logs/", AuditListHandler),
    (r"/api/audit-logs/search/", AuditSearchHandler),
    (r"/api/audit-logs/export/", AuditExportHandler),
    (r"/api/audit-logs/verify/", AuditVerifyHandler),
    (r"/api/audit-logs/([0-9]{1,12})/", AuditEntryHandler),
]
