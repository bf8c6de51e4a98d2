"""Bad input at every door: each route's query, path and body parsers fed malformed data over real HTTP must answer
the error envelope (never a 5xx) and change nothing; and the specific 500s the security reviews found."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import tornado.web
from pydantic import BaseModel

import server
from handlers.base import HTTP_METHODS, APIHandler
from tests.helpers import (
    PASSWORD,
    Api,
    Caller,
    World,
    assert_envelope,
    cad,
    multipart,
    open_review,
    put_bytes,
    ready_design,
    review_team,
)

# Thousands of requests from one caller: the rate limits are not what this module is about.
UNLIMITED = {
    "rate_limit_per_minute": 10_000_000,
    "rate_limit_per_hour": 10_000_000,
    "uploads_per_hour": 100_000,
    "login_attempts_per_minute": 1_000_000,
}
DIGITS = "9" * 5000
# A JSON number Python cannot turn into an int (more than 4,300 digits) and one no float can hold.
HUGE_INT = "1" + "0" * 5000
HUGE_FLOAT = "1e400"
# Reads the API audits by design: a download, a viewer model or an export that succeeded (the junk in its query
# being ignored) leaves exactly one entry of these.
AUDITED_READS = {"DOWNLOAD", "EXPORT"}
AUDITED_READ_ROUTES = ("/download/", "/viewable/", "/audit-logs/export/", "/bcf/")

BAD_QUERIES = [
    "search=%ff",
    "q=%ff",
    "search=%00",
    "search=" + "x" * 10_000,
    "page=%ff",
    "page=" + DIGITS,
    "page_size=-1",
    "page=1&page=2",
    "ordering=%00",
    "ordering=-" + "x" * 2000,
    "fields=%ff",
    "fields=__class__",
    "zz_unknown=1",
    "%ff=1",
    "status[$gt]=",
    "organization=%7B%22%24gt%22%3A%22%22%7D",
    "actor_id=" + DIGITS,
    "version_number=" + HUGE_FLOAT,
    "timestamp__gte=%ff",
    "created_at__gte=99999-99-99T99:99",
    "format=%ff",
    "expires=" + DIGITS + "&signature=%ff",
    "days=" + DIGITS,
    "value=" + DIGITS,
    "value=%00&from_unit=%ff&to_unit=mm",
    "force=%ff",
    "job_type=%ff",
    "design_asset=%ff",
    "parent=" + DIGITS,
]
BAD_PATH_SEGMENTS = ["%ff", "%00", "%c0%af", DIGITS, "%2e%2e", "%zz"]


@dataclass
class Seed:
    """A US organization with data in place, and who to act as."""

    caller: Caller
    ids: dict[str, Any]
    body_fixtures: dict[str, Any] = field(default_factory=dict)


async def seed(world: World, db: Any, api: Api) -> Seed:
    """Every kind of thing a route can name: series, a READY design with a job, BOM node and viewer model, an
    open review with a markup and a reply, a pending upload, a material, an API key and a second session."""
    org, p, series_id = await review_team(world)
    owner = p["owner"]
    design = await ready_design(db, p["author"], series_id)
    # The viewer model: the stored original stands in (the route streams whatever content it names).
    record = {"sha256": design["content_sha256"], "bytes": design["file_size_bytes"], "format": "glb"}
    assert await world.services.viewables.attach(design["_id"], record)
    review = await open_review(p["author"], design["_id"], [p["r1"], p["r2"]])
    markup = await p["r1"].api.post(
        "/api/markups/",
        {
            "review_session": review["id"],
            "annotation_text": "Check the fillet",
            "position": {"x": 1, "y": 2, "z": 3},
            "camera_position": {"x": 100, "y": 100, "z": 100},
            "camera_target": {"x": 1, "y": 2, "z": 3},
        },
    )
    assert markup.status == 201, markup.body
    assert (await p["r2"].api.post(f"/api/markups/{markup.json['id']}/replies/", {"text": "Agreed"})).status == 201
    node = await p["author"].api.post("/api/bom-nodes/", {"design_asset": design["_id"], "part_name": "bracket"})
    assert node.status == 201, node.body
    url = await owner.api.post("/api/designs/upload-url/", {"filename": "next.brep", "file_size": 100})
    assert url.status == 201, url.body
    material = await owner.api.post(
        "/api/materials/", {"organization": org["_id"], "name": "Unobtainium", "density_kg_m3": 1234.0}
    )
    assert material.status == 201, material.body
    key = await owner.api.post("/api/auth/api-keys/", {"name": "ci", "scopes": ["read"]})
    assert key.status == 201, key.body
    other = await world.services.identity.open_session(owner.user, device="laptop", ip="127.0.0.1")
    outsider = await world.user("bad-input-outsider")
    invitation = await owner.api.post(f"/api/organizations/{org['_id']}/add_member/", {"user_id": outsider.id})
    assert invitation.status == 202, invitation.body
    rule = await owner.api.post(
        f"/api/organizations/{org['_id']}/review-rules/",
        {"name": "Mass", "metric": "mass_kg", "threshold": 5, "effect": "ADMIN_OVERRIDE"},
    )
    assert rule.status == 201, rule.body
    first_entry = await db.audit_log.find_one({}, sort=[("_id", 1)])
    ids = {
        "organizations": [org["_id"]],
        "invitations": [invitation.json["invitation"]["id"]],
        "series": [series_id],
        "designs": [design["_id"]],
        "uploads": [url.json["upload_id"]],
        "reviews": [review["id"]],
        "markups": [markup.json["id"]],
        "analysis-jobs": [design["analysis_job_id"]],
        "bom-nodes": [node.json["id"]],
        "users": [p["r1"].id],
        "audit-logs": [first_entry["_id"]],
        "sessions": [other["session_id"]],
        "api-keys": [key.json["id"]],
        "review-rules": [rule.json["id"]],
    }
    return Seed(owner, ids)


def fill(pattern: str, values: list[Any]) -> str:
    """A route pattern with each capture group replaced by the next value."""
    out, depth, taken = [], 0, 0
    for ch in pattern.strip("^$"):
        if ch == "(":
            if depth == 0:
                out.append(str(values[taken]))
                taken += 1
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out).replace("{{", "{").replace("}}", "}")


# Path segments whose id is another resource's: an organization's members are users.
ID_OF_SEGMENT = {"members": "users", "compare": "designs"}


def ids_for(pattern: str, seed: Seed) -> list[Any]:
    """The seeded id each of a route's groups names, by the path segment just before the group."""
    segments = re.findall(r"([a-z-]+)/\(", pattern)
    return [seed.ids[ID_OF_SEGMENT.get(name, name)][0] for name in segments]


def body_model(handler: type, method: str) -> type[BaseModel] | None:
    """The input model a handler method parses its body with (parse_body(Model) in its source), if any."""
    source = inspect.getsource(getattr(handler, method))
    match = re.search(r"parse_body\((\w+)\)", source)
    if match is None:
        return None
    model = vars(inspect.getmodule(handler))[match.group(1)]
    assert issubclass(model, BaseModel)
    return model


def wrong_type(annotation: Any) -> Any:
    text = str(annotation)
    if "str" in text or "Classification" in text or "Status" in text or "Role" in text:
        return 12345
    if "int" in text or "float" in text:
        return "12"
    if "bool" in text:
        return "true"
    if "list" in text:
        return "x"
    return 5


def bodies(model: type[BaseModel] | None) -> list[tuple[str, bytes, str]]:
    """(what, body, content type) for one route: malformed JSON, wrong shapes, then each field of its model
    with a wrong type, an operator, an overlong string, a NUL and numbers no parser should keep."""
    out: list[tuple[str, bytes, str]] = [
        ("malformed json", b'{"a": ', "application/json"),
        ("json array", b"[]", "application/json"),
        ("array of objects", b'[{"name": "x"}]', "application/json"),
        ("json string", b'"text"', "application/json"),
        ("json null", b"null", "application/json"),
        ("deep nesting", b"[" * 100_000, "application/json"),
        ("invalid utf-8", b'{"name": "\xff\xfe"}', "application/json"),
        ("unknown field", b'{"zz_unknown_field": 1}', "application/json"),
        ("operator key", b'{"$where": "1 == 1"}', "application/json"),
        ("not json", b"name=x", "text/plain"),
    ]
    if model is None:
        return out
    fields = model.model_fields
    out.append(("wrong types", json.dumps({k: wrong_type(f.annotation) for k, f in fields.items()}).encode(), ""))
    for name in fields:
        for what, value in (
            ("operator", '{"$gt": ""}'),
            ("overlong", json.dumps("x" * 100_001)),
            ("nul", json.dumps("a\x00b")),
            ("huge int", HUGE_INT),
            ("huge float", HUGE_FLOAT),
            ("negative huge", "-" + HUGE_INT),
        ):
            out.append((f"{name}: {what}", f'{{"{name}": {value}}}'.encode(), ""))
    return [(w, b, t or "application/json") for w, b, t in out]


@dataclass
class Outcome:
    route: str
    method: str
    what: str
    status: int
    body: bytes
    content_type: str


async def send(api: Api, method: str, path: str, what: str, route: str, **kw: Any) -> Outcome:
    resp = await api.request(method.upper(), path, **kw)
    return Outcome(route, method, what, resp.status, resp.body, resp.headers.get("Content-Type", ""))


def api_routes() -> list[tuple[str, type]]:
    """Every route whose handler is an APIHandler (the browser app's files and /ws/ parse no API input)."""
    return [(p, h) for p, h in server.routes() if issubclass(h, APIHandler)]


def methods(handler: type) -> list[str]:
    return [
        m
        for m in HTTP_METHODS
        if m != "options"
        and getattr(handler, m, None) is not None
        and getattr(handler, m) is not getattr(tornado.web.RequestHandler, m)
    ]


async def snapshot(db: Any) -> dict[str, int]:
    return {name: await db[name].count_documents({}) for name in sorted(await db.list_collection_names())}


@pytest.mark.parametrize("settings_overrides", [UNLIMITED])
@pytest.mark.gen_test(timeout=900)
async def test_every_parser_refuses_bad_input_with_the_envelope(world: World, db: Any, api: Api) -> None:
    """Issue 25 #5: for every API route and method, as the OWNER of an organization with data in place: bad
    queries, bad path segments and bad bodies answer 4xx in the envelope, never a 5xx, and create or delete
    nothing (the audited reads that still succeed leave only their DOWNLOAD/EXPORT entries)."""
    s = await seed(world, db, api)
    caller = s.caller.api
    jobs: list[Any] = []
    for pattern, handler in api_routes():
        ids = ids_for(pattern, s)
        groups = pattern.count("(") - pattern.count("(?")
        good = fill(pattern, ids[:groups]) if groups else pattern
        for method in methods(handler):
            for i in range(groups):
                for segment in BAD_PATH_SEGMENTS:
                    values = list(ids[:groups])
                    values[i] = segment
                    jobs.append((method, fill(pattern, values), f"path {segment[:10]}", pattern, {}))
            if method == "get":
                for query in BAD_QUERIES:
                    jobs.append((method, f"{good}?{query}", f"query {query[:40]}", pattern, {}))
            elif (model := body_model(handler, method)) is not None:
                for what, body, ctype in bodies(model):
                    jobs.append((method, good, what, pattern, {"raw": body, "headers": {"Content-Type": ctype}}))
                    if what == "wrong types":
                        for query in BAD_QUERIES[:6]:
                            kw = {"raw": body, "headers": {"Content-Type": ctype}}
                            jobs.append((method, f"{good}?{query}", f"wrong types + {query[:30]}", pattern, kw))
    # The parsers no parse_body() call names: the signed upload PUT and the one-request multipart upload.
    upload = f"/api/uploads/{s.ids['uploads'][0]}/"
    for query in (f"expires={DIGITS}&signature=x", "expires=%ff&signature=x", "expires=%C2%B2&signature=%ff", ""):
        jobs.append(("put", f"{upload}?{query}", f"upload {query[:20]}", upload, {"raw": b"x" * 100}))
    series = s.ids["series"][0]
    for filename in ("a\x00b.stp", "../../x\x01.stp", "a\r\nX-Injected: 1.stp", 'a"; name="series.stp'):
        form, ctype = multipart({"series": series}, "placeholder.stp", cad("box.step"))
        form = form.replace(b"placeholder.stp", filename.encode("utf-8", "surrogateescape"))
        jobs.append(
            (
                "post",
                "/api/designs/",
                f"multipart {filename!r}",
                "multipart",
                {"raw": form, "headers": {"Content-Type": ctype}},
            )
        )
    for form, ctype in (
        (b"--x\r\nContent-Disposition: form-data\r\n\r\nx\r\n--x--\r\n", "multipart/form-data"),
        (b"garbage", "multipart/form-data; boundary=x"),
        (
            b'--x\r\nContent-Disposition: form-data; name="series"\r\n\r\n%s\r\n--x--\r\n' % series.encode(),
            "multipart/form-data; boundary=x",
        ),
    ):
        jobs.append(
            (
                "post",
                "/api/designs/",
                "multipart malformed",
                "multipart",
                {"raw": form, "headers": {"Content-Type": ctype}},
            )
        )
    download = f"/api/designs/{s.ids['designs'][0]}/download/"
    for header in (f"bytes={DIGITS}-", f"bytes=0-{DIGITS}", f"bytes=-{DIGITS}", "bytes=%ff-", "bytes=\u00b2-"):
        jobs.append(("get", download, f"range {header[:12]}", download, {"headers": {"Range": header}}))
    design = f"/api/designs/{s.ids['designs'][0]}/"
    for header in ('W/"' + DIGITS + '"', "\u00e9", "*"):
        kw = {"raw": b'{"revision": "B"}', "headers": {"Content-Type": "application/json", "If-Match": header}}
        jobs.append(("patch", design, f"if-match {header[:10]}", design, kw))
    # A browser session: the XSRF header is compared with the cookie's token (a non-ASCII one was a 500).
    login = await api.post("/api/auth/login/", {"username": "owner", "password": PASSWORD})
    assert login.status == 200, login.body
    cookies = "; ".join(c.split(";", 1)[0] for c in login.headers.get_list("Set-Cookie"))
    for header in ("\u00e9", "x" * 5000, ""):
        hdrs = {"Content-Type": "application/json", "Cookie": cookies, "X-XSRF-Token": header, "Authorization": ""}
        kw = {"raw": b"{}", "headers": hdrs}
        jobs.append(("post", "/api/series/", f"xsrf {header[:5]!r}", "cookie session", kw))

    before = await snapshot(db)
    last_entry = (await db.audit_log.find_one({}, sort=[("_id", -1)]))["_id"]
    outcomes: list[Outcome] = []
    for start in range(0, len(jobs), 8):
        batch = jobs[start : start + 8]
        outcomes += await asyncio.gather(
            *[send(caller, m, path, what, route, **kw) for m, path, what, route, kw in batch]
        )

    failures = []
    for o in outcomes:
        if o.status >= 500:
            failures.append(f"{o.status} {o.method.upper()} {o.route} [{o.what}]: {o.body[:200]!r}")
        elif o.status >= 400:
            try:
                body = json.loads(o.body)
                ok = set(body) >= {"error", "detail", "code", "field_errors"} and "application/json" in o.content_type
            except ValueError:
                ok = False
            if not ok:
                failures.append(
                    f"{o.status} {o.method.upper()} {o.route} [{o.what}] not the envelope: {o.body[:120]!r}"
                )
    assert not failures, f"{len(failures)} of {len(outcomes)} requests:\n" + "\n".join(failures[:40])

    after = await snapshot(db)
    audited_reads = sum(
        1 for o in outcomes if o.status in (200, 206) and o.method == "get" and o.route.endswith(AUDITED_READ_ROUTES)
    )
    new_entries = Counter([e["action"] async for e in db.audit_log.find({"_id": {"$gt": last_entry}})])
    assert set(new_entries) <= AUDITED_READS, new_entries
    assert sum(new_entries.values()) == audited_reads
    assert {k: v for k, v in after.items() if k != "audit_log"} == {k: v for k, v in before.items() if k != "audit_log"}
    statuses = Counter(o.status for o in outcomes)
    assert statuses[400] > len(outcomes) // 2, statuses  # most of it was refused as malformed, as it should be


@pytest.mark.parametrize("settings_overrides", [UNLIMITED])
@pytest.mark.gen_test(timeout=120)
async def test_the_reported_500s(world: World, db: Any, api: Api) -> None:
    """Issues 10 #14 and 25 #5, as reported: an undecodable search, a 5,000-digit upload expiry and a multipart
    filename with a NUL each answered 500; now a 400 in the envelope that changes nothing."""
    s = await seed(world, db, api)
    caller = s.caller.api
    for path in ("/api/designs/?search=%ff", "/api/series/?search=%ff", "/api/audit-logs/search/?q=%ff"):
        body = assert_envelope(await caller.get(path), 400, "VALIDATION_ERROR")
        assert body["field_errors"], body
    before = await snapshot(db)
    url = await caller.post("/api/designs/upload-url/", {"filename": "part.brep", "file_size": 10})
    after_url = await snapshot(db)
    expiry = f"/api/uploads/{url.json['upload_id']}/?expires={DIGITS}&signature=00"
    body = assert_envelope(await put_bytes(caller, expiry, b"x" * 10), 400, "VALIDATION_ERROR")
    assert "expires" in body["field_errors"]
    upload = await db.uploads.find_one({"_id": url.json["upload_id"]})
    assert upload["status"] == "PENDING"  # still usable with its real URL
    data = cad("box.step")
    form, ctype = multipart({"series": s.ids["series"][0]}, "placeholder.stp", data)
    form = form.replace(b"placeholder.stp", b"a\x00b.stp")
    sent = await caller.request("POST", "/api/designs/", raw=form, headers={"Content-Type": ctype})
    assert_envelope(sent, 400, "VALIDATION_ERROR")
    assert await snapshot(db) == {**after_url, "audit_log": after_url["audit_log"]}
    assert before["designs"] == after_url["designs"]
