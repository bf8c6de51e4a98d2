"""The foundation over real HTTP: health, the error envelope, body limits and the list-query layer."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
from typing import Any

import pytest
import tornado.web
from tornado.httpclient import HTTPRequest

from handlers.base import LIST, APIHandler, authenticated, public, unmarked_methods
from models.errors import APIError
from models.listing import Filter, Kind, ListSpec, each, parse_list_query, run_list
from models.schema import Input
from models.transfers import byte_range
from server import make_app, routes
from tests.helpers import assert_envelope

WIDGET_SPEC = ListSpec(
    filters={
        "colour": Filter(Kind.ENUM, "colour", choices=frozenset({"red", "blue"})),
        "size": Filter(Kind.INT, "size", ranges=True),
        "name": Filter(Kind.STR, "name"),
    },
    search=("name",),
    ordering={"name": "name", "size": "size"},
    default_ordering="size",
    fields=frozenset({"name", "size", "colour"}),
)


class WidgetIn(Input):
    name: str
    size: int = 1


class WidgetsHandler(APIHandler):
    """A list endpoint that exists only in these tests, to exercise the shared layer end to end."""

    query_params = LIST

    @public
    async def get(self) -> None:
        query = parse_list_query(WIDGET_SPEC, self.request.query_arguments)
        page = await run_list(
            self.services.db.widgets,
            {"hidden": {"$ne": True}},
            query,
            render=each(lambda d: {"name": d["name"], "size": d["size"], "colour": d["colour"]}),
            base_url=self.absolute_url(self.request.path),
            args=self.request.query_arguments,
        )
        self.write_json(page)

    @public
    async def post(self) -> None:
        body = self.parse_body(WidgetIn)
        found = await self.services.db.widgets.count_documents({"name": body.name})
        self.write_json({"matches": found})


class BoomHandler(APIHandler):
    @public
    async def get(self) -> None:
        raise RuntimeError("secret internal detail /etc/passwd")


@pytest.fixture
def app(services: Any) -> Any:
    application = make_app(services)
    application.add_handlers(r".*", [(r"/test/widgets/", WidgetsHandler), (r"/test/boom/", BoomHandler)])
    return application


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"max_json_body_bytes": 2048}


async def seed_widgets(db: Any) -> None:
    docs = [{"name": f"w{i:03d}", "size": i, "colour": "red" if i % 2 else "blue"} for i in range(1, 121)]
    docs += [
        {"name": "literal .* stars", "size": 500, "colour": "red"},
        {"name": "secret", "size": 999, "colour": "red", "hidden": True},
    ]
    await db.widgets.insert_many(docs)


# ---------------------------------------------------------------- health


@pytest.mark.gen_test
async def test_health(api: Any) -> None:
    resp = await api.get("/api/health/")
    assert resp.status == 200
    assert resp.json == {"status": "ok", "service": "enginel"}
    assert resp.headers["X-Request-ID"]


@pytest.mark.gen_test
async def test_health_detailed_reports_each_check(api: Any) -> None:
    resp = await api.get("/api/health/detailed/")
    assert resp.status == 200
    body = resp.json
    assert body["status"] == "healthy"
    assert body["checks"]["database"] == "ok"
    assert body["timestamp"].endswith("Z")


@pytest.mark.gen_test
async def test_health_detailed_degraded_when_database_is_gone(api: Any, services: Any) -> None:
    from pymongo import AsyncMongoClient

    # A client pointed at a port nobody listens on stands for a database that went away.
    gone: Any = AsyncMongoClient("mongodb://127.0.0.1:9/?directConnection=true", serverSelectionTimeoutMS=200)
    real_db, services.db = services.db, gone["x"]
    try:
        resp = await api.get("/api/health/detailed/")
    finally:
        services.db = real_db
        await gone.close()
    assert resp.status == 503
    assert resp.json["status"] == "degraded"
    assert resp.json["checks"]["database"].startswith("error")


@pytest.mark.gen_test
async def test_health_detailed_checks_redis_when_configured(
    http_client: Any, base_url: str, services: Any, redis_url: str
) -> None:
    import redis.asyncio as aioredis

    services.redis = aioredis.from_url(redis_url)  # closed by the runtime's stop like a configured one
    resp = await http_client.fetch(base_url + "/api/health/detailed/", raise_error=False)
    assert resp.code == 200
    assert json.loads(resp.body)["checks"]["redis"] == "ok"


# ---------------------------------------------------------------- error envelope


@pytest.mark.gen_test
async def test_unknown_path_is_404_envelope(api: Any) -> None:
    resp = await api.get("/api/does-not-exist/")
    body = assert_envelope(resp, 404, "RESOURCE_NOT_FOUND")
    assert body["request_id"] == resp.headers["X-Request-ID"]


@pytest.mark.gen_test
async def test_wrong_method_is_405_envelope_with_allow(api: Any) -> None:
    resp = await api.delete("/api/health/")
    assert_envelope(resp, 405, "METHOD_NOT_ALLOWED")
    assert resp.headers["Allow"] == "GET"


@pytest.mark.gen_test
async def test_malformed_json_is_400(api: Any) -> None:
    resp = await api.post("/test/widgets/", raw=b'{"name": "x",', headers={"Content-Type": "application/json"})
    body = assert_envelope(resp, 400, "VALIDATION_ERROR")
    assert body["error"] == "Malformed JSON"


@pytest.mark.gen_test
async def test_non_object_json_is_400(api: Any) -> None:
    resp = await api.post("/test/widgets/", raw=b'["name"]', headers={"Content-Type": "application/json"})
    assert_envelope(resp, 400, "VALIDATION_ERROR")


@pytest.mark.gen_test
async def test_unknown_body_field_is_400_with_field_errors(api: Any) -> None:
    resp = await api.post("/test/widgets/", {"name": "x", "owner": "me"})
    body = assert_envelope(resp, 400, "VALIDATION_ERROR")
    assert body["field_errors"] == {"owner": ["Unknown field."]}


@pytest.mark.gen_test
async def test_wrong_type_and_missing_field_are_400(api: Any) -> None:
    resp = await api.post("/test/widgets/", {"size": "5"})
    body = assert_envelope(resp, 400, "VALIDATION_ERROR")
    assert body["field_errors"]["name"] == ["This field is required."]
    assert "size" in body["field_errors"]


@pytest.mark.gen_test
async def test_operator_injection_in_json_body_is_refused(api: Any, db: Any) -> None:
    await seed_widgets(db)
    resp = await api.post("/test/widgets/", {"name": {"$ne": None}})
    body = assert_envelope(resp, 400, "VALIDATION_ERROR")
    assert "name" in body["field_errors"]
    ok = await api.post("/test/widgets/", {"name": "w001"})
    assert ok.status == 200 and ok.json == {"matches": 1}


@pytest.mark.gen_test
async def test_body_over_limit_is_413(api: Any) -> None:
    resp = await api.post("/test/widgets/", {"name": "x" * 4000})
    assert_envelope(resp, 413, "PAYLOAD_TOO_LARGE")


@pytest.mark.gen_test
async def test_chunked_body_over_limit_is_413(http_client: Any, base_url: str) -> None:
    async def producer(write: Any) -> None:
        for _ in range(3):
            await write(b'{"name": "' + b"x" * 1000)

    req = HTTPRequest(
        base_url + "/test/widgets/", method="POST", body_producer=producer, headers={"Content-Type": "application/json"}
    )
    resp = await http_client.fetch(req, raise_error=False)
    assert resp.code == 413
    assert json.loads(resp.body)["code"] == "PAYLOAD_TOO_LARGE"


@pytest.mark.gen_test
async def test_wrong_content_type_is_415(api: Any) -> None:
    resp = await api.post(
        "/test/widgets/", raw=b"name=x", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert_envelope(resp, 415, "UNSUPPORTED_MEDIA_TYPE")


@pytest.mark.gen_test
async def test_unexpected_exception_is_500_without_traceback(api: Any, caplog: Any) -> None:
    with caplog.at_level(logging.ERROR, logger="enginel.http"):
        resp = await api.get("/test/boom/")
    body = assert_envelope(resp, 500, "INTERNAL_ERROR")
    text = resp.body.decode()
    assert "Traceback" not in text and "/etc/passwd" not in text and "RuntimeError" not in text
    request_id = resp.headers["X-Request-ID"]
    assert body["request_id"] == request_id
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None


@pytest.mark.gen_test
async def test_request_id_is_echoed_when_sane_and_replaced_when_not(api: Any) -> None:
    resp = await api.get("/api/health/", headers={"X-Request-ID": "client-supplied-1234"})
    assert resp.headers["X-Request-ID"] == "client-supplied-1234"
    resp = await api.get("/api/health/", headers={"X-Request-ID": "<script>"})
    assert resp.headers["X-Request-ID"] != "<script>"


# ---------------------------------------------------------------- list layer


@pytest.mark.gen_test
async def test_pagination_defaults_and_links(api: Any, db: Any, base_url: str) -> None:
    await seed_widgets(db)
    resp = await api.get("/test/widgets/")
    body = resp.json
    assert resp.status == 200
    assert body["count"] == 121  # the hidden document is outside the base filter
    assert len(body["results"]) == 50
    assert body["previous"] is None
    assert body["next"] == base_url + "/test/widgets/?page=2"
    second = (await api.get("/test/widgets/?page=2&colour=red")).json
    assert second["count"] == 61 and len(second["results"]) == 11 and second["next"] is None


@pytest.mark.gen_test
async def test_pagination_keeps_parameters_and_pages_do_not_overlap(api: Any, db: Any, base_url: str) -> None:
    await seed_widgets(db)
    first = (await api.get("/test/widgets/?colour=red&page_size=25")).json
    assert first["count"] == 61
    assert first["next"].startswith(base_url + "/test/widgets/?")
    assert "colour=red" in first["next"] and "page_size=25" in first["next"] and "page=2" in first["next"]
    seen = [w["name"] for w in first["results"]]
    nxt = first["next"]
    while nxt:
        page = (await api.get(nxt)).json
        seen += [w["name"] for w in page["results"]]
        nxt = page["next"]
    assert len(seen) == len(set(seen)) == 61
    assert page["previous"] is not None and "page=2" in page["previous"]


@pytest.mark.gen_test
async def test_page_past_the_end_is_empty_with_previous_link(api: Any, db: Any) -> None:
    await seed_widgets(db)
    resp = await api.get("/test/widgets/?page=99")
    assert resp.status == 200
    assert resp.json["results"] == [] and resp.json["count"] == 121 and resp.json["next"] is None
    assert "page=3" in resp.json["previous"]


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "query",
    ["page_size=0", "page_size=abc", "page=0", "page=-1", "page=1.5", "page_size=", "page=1&page=2"],
)
async def test_invalid_paging_is_400(api: Any, query: str) -> None:
    resp = await api.get("/test/widgets/?" + query)
    if query == "page_size=":
        assert resp.status == 200  # an empty value means the default
        return
    assert_envelope(resp, 400, "VALIDATION_ERROR")


@pytest.mark.gen_test
async def test_page_size_100_is_allowed(api: Any, db: Any) -> None:
    await seed_widgets(db)
    resp = await api.get("/test/widgets/?page_size=100")
    assert resp.status == 200 and len(resp.json["results"]) == 100
    assert "X-Page-Size-Capped" not in resp.headers


@pytest.mark.gen_test
async def test_page_size_above_100_is_served_at_100_and_says_so(api: Any, db: Any, base_url: str) -> None:
    """Issue 20: the reference's "max: 100" is a cap, not a refusal (it answered 400); the header tells the client,
    and the links page on at the size served."""
    await seed_widgets(db)
    resp = await api.get("/test/widgets/?page_size=500&colour=red")
    assert resp.status == 200, resp.body
    assert resp.headers["X-Page-Size-Capped"] == "100"
    assert resp.json["count"] == 61 and len(resp.json["results"]) == 61 and resp.json["next"] is None
    whole = await api.get("/test/widgets/?page_size=999999999")
    assert whole.status == 200 and len(whole.json["results"]) == 100
    assert whole.json["next"] == base_url + "/test/widgets/?page_size=100&page=2"
    second = await api.get(whole.json["next"])
    assert len(second.json["results"]) == 21 and "X-Page-Size-Capped" not in second.headers


@pytest.mark.gen_test
async def test_search_is_escaped_and_case_insensitive(api: Any, db: Any) -> None:
    await seed_widgets(db)
    literal = await api.get("/test/widgets/?search=.*")
    assert [w["name"] for w in literal.json["results"]] == ["literal .* stars"]
    upper = await api.get("/test/widgets/?search=W00")
    assert upper.json["count"] == 9
    regex = await api.get("/test/widgets/?search=w0[0-9]")
    assert regex.json["count"] == 0
    hidden = await api.get("/test/widgets/?search=secret")
    assert hidden.json["count"] == 0


@pytest.mark.gen_test
async def test_ordering_whitelist_and_multiple_fields(api: Any, db: Any) -> None:
    await seed_widgets(db)
    desc = (await api.get("/test/widgets/?ordering=-size&page_size=3")).json["results"]
    assert [w["size"] for w in desc] == [500, 120, 119]
    multi = (await api.get("/test/widgets/?ordering=colour")).status
    assert multi == 400
    both = (await api.get("/test/widgets/?ordering=-name,size&page_size=2")).json["results"]
    assert [w["name"] for w in both] == ["w120", "w119"]
    resp = await api.get("/test/widgets/?ordering=password")
    body = assert_envelope(resp, 400, "VALIDATION_ERROR")
    assert "ordering" in body["field_errors"]


@pytest.mark.gen_test
async def test_exact_and_range_filters(api: Any, db: Any) -> None:
    await seed_widgets(db)
    resp = await api.get("/test/widgets/?size__gte=10&size__lte=19&colour=blue")
    assert resp.json["count"] == 5
    assert all(10 <= w["size"] <= 19 and w["colour"] == "blue" for w in resp.json["results"])
    bad = await api.get("/test/widgets/?size__gte=ten")
    assert_envelope(bad, 400, "VALIDATION_ERROR")
    enum = await api.get("/test/widgets/?colour=green")
    assert_envelope(enum, 400, "VALIDATION_ERROR")
    unknown = await api.get("/test/widgets/?hidden=true")
    assert_envelope(unknown, 400, "VALIDATION_ERROR")
    name_range = await api.get("/test/widgets/?name__gte=a")
    assert_envelope(name_range, 400, "VALIDATION_ERROR")


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "query", ["name[$ne]=x", "name=%7B%22%24ne%22%3A+null%7D", "size[$gt]=0", "$where=1", "name__ne=x"]
)
async def test_operator_injection_in_query_string_never_reaches_mongo(api: Any, db: Any, query: str) -> None:
    await seed_widgets(db)
    resp = await api.get("/test/widgets/?" + query)
    if query.startswith("name="):
        # The JSON text of an operator is just a name nobody has.
        assert resp.status == 200 and resp.json["count"] == 0
    else:
        assert_envelope(resp, 400, "VALIDATION_ERROR")


@pytest.mark.gen_test
async def test_fields_projection(api: Any, db: Any) -> None:
    await seed_widgets(db)
    resp = await api.get("/test/widgets/?fields=name,size&page_size=1")
    assert resp.json["results"] == [{"name": "w001", "size": 1}]
    bad = await api.get("/test/widgets/?fields=name,_id")
    assert_envelope(bad, 400, "VALIDATION_ERROR")


# ---------------------------------------------------------------- structure


def test_every_served_method_declares_its_authentication() -> None:
    assert unmarked_methods(routes()) == []

    class Forgetful(APIHandler):
        async def get(self) -> None:  # no marker
            pass

        @authenticated
        async def post(self) -> None:
            pass

    assert unmarked_methods([(r"/x/", Forgetful)]) == [f"{__name__}.Forgetful.get"]


def test_list_query_is_pure_data() -> None:
    query = parse_list_query(WIDGET_SPEC, {"search": [b"a+b"], "size__gte": [b"3"], "size__lte": [b"9"]})
    assert query.filter == {
        "$and": [{"size": {"$gte": 3, "$lte": 9}}, {"$or": [{"name": {"$regex": r"a\+b", "$options": "i"}}]}]
    }
    assert query.sort == [("size", 1), ("_id", 1)]


def test_byte_range_forms() -> None:
    assert byte_range(None, 100) is None
    assert byte_range("bytes=0-9", 100) == (0, 10)
    assert byte_range("bytes=90-", 100) == (90, 100)
    assert byte_range("bytes=-10", 100) == (90, 100)
    assert byte_range("bytes=-500", 100) == (0, 100)
    assert byte_range("bytes=95-200", 100) == (95, 100)
    # Forms this server does not serve partially get the whole body.
    for whole in ("bytes=-", "bytes=0-1,5-6", "items=0-9", "bytes=a-b"):
        assert byte_range(whole, 100) is None, whole
    for beyond in ("bytes=100-", "bytes=5-2", "bytes=-0"):
        with pytest.raises(APIError) as caught:
            byte_range(beyond, 100)
        assert caught.value.status == 416 and caught.value.headers == {"Content-Range": "bytes */100"}, beyond


class TestWithAnalysisWorkers:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"workers": 1}

    @pytest.mark.gen_test(timeout=60)
    async def test_health_detailed_reports_live_workers(self, api: Any, services: Any) -> None:
        resp = await api.get("/api/health/detailed/")
        assert resp.status == 200 and resp.json["checks"]["workers"] == "ok"
        for pid in services.pool.stats()["pids"]:
            os.kill(pid, signal.SIGKILL)
        # The pool replaces a dead worker by itself and the check follows it back to ok.
        for _ in range(300):
            await asyncio.sleep(0.1)
            resp = await api.get("/api/health/detailed/")
            if services.pool.stats()["replaced"] >= 1 and resp.json["checks"]["workers"] == "ok":
                break
        assert services.pool.stats()["replaced"] >= 1
        assert resp.status == 200 and resp.json["checks"]["workers"] == "ok"

    @pytest.mark.gen_test(timeout=60)
    async def test_health_detailed_is_degraded_without_live_workers(self, api: Any, services: Any) -> None:
        assert (await api.get("/api/health/detailed/")).status == 200
        # Every worker gone and none coming back, as once the pool has shut down.
        await services.pool.close()
        assert services.pool.stats()["alive"] == 0
        resp = await api.get("/api/health/detailed/")
        assert resp.status == 503 and resp.json["status"] == "degraded"
        assert resp.json["checks"] == {"database": "ok", "workers": "no live analysis workers"}


def every_list_spec() -> dict[str, ListSpec]:
    """Every list the API serves, by its module and name (the ListSpec constants in models/)."""
    import importlib
    import pkgutil

    import models

    specs = {}
    for info in pkgutil.iter_modules(models.__path__):
        module = importlib.import_module(f"models.{info.name}")
        specs.update({f"{info.name}.{k}": v for k, v in vars(module).items() if isinstance(v, ListSpec)})
    return specs


# Text filters that match exactly on purpose: identifiers the API itself writes, in one spelling.
EXACT_TEXT_FILTERS = {("audit.AUDIT_LIST", "resource_type"), ("audit.AUDIT_LIST", "resource_id")}


@pytest.mark.gen_test
async def test_every_text_filter_matches_whatever_the_case(db: Any) -> None:
    """Issue 20: `?part_number=TB-002` found nothing on series (the filter compared the lower-cased stored key with
    the raw input). Every text filter of every list is checked here against a stored value as its repository writes
    it: a case-insensitive one matches any case, exactly (not a prefix); the rest are the listed exact ones."""
    specs = every_list_spec()
    assert {"series.SERIES_LIST", "designs.DESIGN_LIST", "bom.BOM_LIST", "audit.AUDIT_LIST"} <= set(specs)
    exact, checked = set(), []
    for spec_name, spec in specs.items():
        for name, fspec in spec.filters.items():
            if fspec.kind is not Kind.STR:
                continue
            if not (fspec.case_insensitive or fspec.lowered):
                exact.add((spec_name, name))
                continue
            stored = "Tb-002 Ä.*" if not fspec.lowered else "tb-002 ä.*"
            await db.scratch.delete_many({})
            await db.scratch.insert_one({fspec.path: stored})
            for given in ("TB-002 Ä.*", "tb-002 ä.*", "Tb-002 Ä.*"):
                query = parse_list_query(spec, {name: [given.encode()]})
                assert await db.scratch.count_documents(query.filter) == 1, (spec_name, name, given)
            for miss in ("TB-002", "TB-002 Ä.*x", "TB-002 ÄX*"):
                query = parse_list_query(spec, {name: [miss.encode()]})
                assert await db.scratch.count_documents(query.filter) == 0, (spec_name, name, miss)
            checked.append((spec_name, name))
    assert exact == EXACT_TEXT_FILTERS
    assert ("series.SERIES_LIST", "part_number") in checked and len(checked) >= 5


def _route_path(pattern: str) -> str:
    """A route pattern with each group filled with a well-formed id (a UUID, else 1)."""
    return (
        re.sub(
            r"\(([^()]*)\)", lambda m: "0f8fad5b-d9cb-469f-a165-70867728950e" if "a-f" in m.group(1) else "1", pattern
        )
        .replace("{{", "{")
        .replace("}}", "}")
    )


@pytest.mark.gen_test(timeout=120)
async def test_every_get_refuses_unknown_query_parameters(world: Any) -> None:
    """Issue 20: detail endpoints ignored their query strings, contradicting the rule lists follow. Every GET of the
    API now refuses a parameter it does not take with a 400 naming it, before it looks anything up."""
    staff = await world.staff_principal()
    token = (await world.services.identity.open_session(staff.user, device="t", ip=None))["access_token"]
    api = world.api.as_token(token)
    checked = 0
    for pattern, handler in routes():
        if not issubclass(handler, APIHandler) or handler.get is tornado.web.RequestHandler.get:
            continue
        path = _route_path(pattern)
        resp = await api.get(path + "?zz_misspelt=1")
        body = assert_envelope(resp, 400, "VALIDATION_ERROR")
        assert body["field_errors"] == {"zz_misspelt": ["Unknown query parameter."]}, (pattern, body)
        checked += 1
    assert checked >= 40


@pytest.mark.gen_test(timeout=120)
async def test_fields_on_detail_endpoints(world: Any) -> None:
    """Issue 20: `fields` picks an answer's keys on detail endpoints as on lists (an object's keys, or each item's
    in an array or a `results` list); a name the answer does not have is a 400; a binary answer takes no fields."""
    user = await world.user("pick-fields")
    org = await world.org("pick-org", members={user: "OWNER"})
    me = await user.api.get("/api/users/me/?fields=id,username")
    assert me.status == 200 and me.json == {"id": user.id, "username": "pick-fields"}
    one = await user.api.get(f"/api/organizations/{org['_id']}/?fields=slug,member_count")
    assert one.json == {"slug": "pick-org", "member_count": 1}
    members = await user.api.get(f"/api/organizations/{org['_id']}/members/?fields=username,role")
    assert members.json == [{"username": "pick-fields", "role": "OWNER"}]
    sessions = await user.api.get("/api/auth/sessions/?fields=id")
    assert sessions.json["count"] == 1 and list(sessions.json["results"][0]) == ["id"]
    unknown = assert_envelope(await user.api.get("/api/users/me/?fields=id,password_hash"), 400, "VALIDATION_ERROR")
    assert unknown["field_errors"] == {"fields": ["Unknown field 'password_hash'."]}
    whole = await user.api.get("/api/users/me/?fields=")
    assert whole.status == 200 and "email" in whole.json  # blank means everything, as on lists
    design = "/api/designs/0f8fad5b-d9cb-469f-a165-70867728950e"
    for binary in (f"{design}/download/?fields=id", f"{design}/viewable/?fields=id"):
        assert_envelope(await user.api.get(binary), 400, "VALIDATION_ERROR")
