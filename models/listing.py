"""The list-query layer: pagination, filters, search, ordering and projection, safe from injection."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any
from urllib.parse import urlencode

from pymongo.asynchronous.collection import AsyncCollection

from models.errors import ValidationFailed

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
MAX_SEARCH_LENGTH = 200
MAX_PARAM_LENGTH = 500
# A request's query arguments as Tornado hands them over (each name with its values).
QueryArgs = Mapping[str, Sequence[bytes | str]]
# Parameters every list understands; anything else must be a declared filter.
RESERVED = frozenset({"page", "page_size", "search", "ordering", "fields"})


class Kind(str, Enum):
    STR = "str"
    INT = "int"
    BOOL = "bool"
    UUID = "uuid"
    DATETIME = "datetime"
    ENUM = "enum"


@dataclass(frozen=True)
class Filter:
    """One query parameter that filters a list; `path` is the stored field it compares."""

    kind: Kind
    path: str
    choices: frozenset[str] = frozenset()
    ranges: bool = False  # also accept <name>__gte / <name>__lte
    nullable: bool = False  # accept "null" to match a missing/None value
    # STR only. case_insensitive: any case matches (an anchored, escaped regex). lowered: `path` holds the value
    # lower-cased (a uniqueness key, indexed), so the input is lower-cased and compared exactly; it implies
    # case_insensitive. Either way `?part_number=TB-002` finds "tb-002" and "TB-002" alike.
    case_insensitive: bool = False
    lowered: bool = False

    def __post_init__(self) -> None:
        if (self.case_insensitive or self.lowered) and self.kind is not Kind.STR:
            raise ValueError("only text filters compare case-insensitively")

    def condition(self, value: Any) -> Any:
        """What the stored field must match for an exact (not range) value of this filter."""
        if isinstance(value, str) and self.lowered:
            return value.lower()
        if isinstance(value, str) and self.case_insensitive:
            return {"$regex": "^" + re.escape(value) + "$", "$options": "i"}
        return value


@dataclass(frozen=True)
class ListSpec:
    """What one list endpoint allows: filters, searchable fields, orderable fields and projectable fields."""

    filters: Mapping[str, Filter] = field(default_factory=dict)
    search: Sequence[str] = ()
    ordering: Mapping[str, str] = field(default_factory=dict)  # public name -> stored path
    default_ordering: str = "-created_at"
    fields: frozenset[str] = frozenset()  # output fields `fields=` may name


@dataclass
class ListQuery:
    """A validated list request, ready to run."""

    filter: dict[str, Any]
    sort: list[tuple[str, int]]
    page: int
    page_size: int
    fields: list[str] | None
    page_size_capped: bool = False  # the client asked for more than MAX_PAGE_SIZE

    @property
    def skip(self) -> int:
        return (self.page - 1) * self.page_size


def _one(args: QueryArgs, name: str) -> str:
    values = args[name]
    if len(values) != 1:
        raise ValidationFailed(f"Give '{name}' once.", field_errors={name: ["Give this parameter once."]})
    raw = values[0]
    try:
        value = raw.decode("utf-8", errors="strict") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise ValidationFailed(f"'{name}' is not valid UTF-8.", field_errors={name: ["Not valid UTF-8."]}) from None
    if len(value) > MAX_PARAM_LENGTH:
        raise ValidationFailed(f"'{name}' is too long.", field_errors={name: ["Too long."]})
    return value


def _positive_int(name: str, raw: str, default: int) -> int:
    if raw == "":
        return default
    if not re.fullmatch(r"[0-9]{1,9}", raw) or int(raw) < 1:
        raise ValidationFailed(
            f"'{name}' must be a positive integer.", field_errors={name: ["Must be a positive integer."]}
        )
    return int(raw)


def parse_datetime(raw: str) -> datetime:
    text = raw.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _convert(name: str, spec: Filter, raw: str) -> Any:
    """A query-string value as the stored type; never a dict, so it can never become an operator."""
    try:
        if spec.nullable and raw == "null":
            return None
        if spec.kind is Kind.STR:
            return raw
        if spec.kind is Kind.INT:
            if not re.fullmatch(r"-?[0-9]{1,18}", raw):
                raise ValueError("Must be an integer.")
            return int(raw)
        if spec.kind is Kind.BOOL:
            lowered = raw.lower()
            if lowered in ("true", "1"):
                return True
            if lowered in ("false", "0"):
                return False
            raise ValueError("Must be true or false.")
        if spec.kind is Kind.UUID:
            return str(uuid.UUID(raw))
        if spec.kind is Kind.DATETIME:
            return parse_datetime(raw)
        if spec.kind is Kind.ENUM:
            if raw not in spec.choices:
                raise ValueError("Must be one of: " + ", ".join(sorted(spec.choices)) + ".")
            return raw
    except ValueError as exc:
        message = str(exc) if str(exc).startswith("Must") else f"Not a valid {spec.kind.value}."
        raise ValidationFailed(f"Invalid value for '{name}'.", field_errors={name: [message]}) from None
    raise AssertionError(spec.kind)


def parse_list_query(spec: ListSpec, args: QueryArgs) -> ListQuery:
    """Validate a request's query arguments against `spec`; unknown parameters are refused, not ignored."""
    conditions: list[dict[str, Any]] = []
    filters: dict[str, Any] = {}
    for name in args:
        value = _one(args, name)
        if name in RESERVED:
            continue
        base, _, op = name.partition("__")
        fspec = spec.filters.get(base)
        if fspec is None or (op and (op not in ("gte", "lte") or not fspec.ranges)):
            raise ValidationFailed(
                f"Unknown query parameter '{name}'.", field_errors={name: ["Unknown query parameter."]}
            )
        converted = _convert(name, fspec, value)
        if op:
            if fspec.lowered and isinstance(converted, str):
                converted = converted.lower()
            filters.setdefault(fspec.path, {})
            if not isinstance(filters[fspec.path], dict):
                filters[fspec.path] = {"$eq": filters[fspec.path]}
            filters[fspec.path]["$" + op] = converted
        elif isinstance(condition := fspec.condition(converted), dict):
            conditions.append({fspec.path: condition})
        elif fspec.path in filters and isinstance(filters[fspec.path], dict):
            filters[fspec.path]["$eq"] = condition
        else:
            filters[fspec.path] = condition

    search = _one(args, "search").strip() if "search" in args else ""
    if search:
        if len(search) > MAX_SEARCH_LENGTH:
            raise ValidationFailed("Search text is too long.", field_errors={"search": ["Too long."]})
        if not spec.search:
            raise ValidationFailed("This list cannot be searched.", field_errors={"search": ["Not supported."]})
        pattern = re.escape(search)
        conditions.append({"$or": [{path: {"$regex": pattern, "$options": "i"}} for path in spec.search]})

    sort = parse_ordering(spec, _one(args, "ordering") if "ordering" in args else "")
    page = _positive_int("page", _one(args, "page") if "page" in args else "", 1)
    requested = _positive_int("page_size", _one(args, "page_size") if "page_size" in args else "", DEFAULT_PAGE_SIZE)
    # Above the maximum is served at the maximum, as list APIs written to the reference expect, and said so in a
    # header (see Page) rather than refused.
    page_size = min(requested, MAX_PAGE_SIZE)

    fields = parse_fields(args)
    if fields is not None:
        check_fields(fields, spec.fields)

    query: dict[str, Any] = dict(filters)
    if conditions:
        query = (
            {"$and": [query, *conditions]}
            if query
            else ({"$and": conditions} if len(conditions) > 1 else conditions[0])
        )
    return ListQuery(
        filter=query, sort=sort, page=page, page_size=page_size, fields=fields, page_size_capped=requested > page_size
    )


def parse_fields(args: QueryArgs) -> list[str] | None:
    """The output fields `fields=a,b` names, in order; None when it is absent or blank."""
    if "fields" not in args or not _one(args, "fields").strip():
        return None
    return [f.strip() for f in _one(args, "fields").split(",") if f.strip()]


def check_fields(fields: list[str], allowed: Collection[str]) -> None:
    unknown = [f for f in fields if f not in allowed]
    if unknown:
        raise ValidationFailed(
            "Unknown field in 'fields': " + ", ".join(unknown) + ".",
            field_errors={"fields": [f"Unknown field '{f}'." for f in unknown]},
        )


def refuse_unknown(args: QueryArgs, allowed: Collection[str]) -> None:
    """A request that is not a list refuses parameters it does not take, as lists do: a misspelt parameter must
    never be silently ignored."""
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ValidationFailed(
            f"Unknown query parameter '{unknown[0]}'.",
            field_errors={name: ["Unknown query parameter."] for name in unknown},
        )
    for name in args:
        _one(args, name)  # each once, UTF-8, bounded, as on lists


def project_answer(answer: Any, fields: list[str]) -> Any:
    """`fields` applied to a JSON answer that is not a paged list: the keys of an object, or of each object of an
    array or of a `results` array. A name none of them has is a 400, as on lists."""
    items = answer if isinstance(answer, list) else answer.get("results") if isinstance(answer, dict) else None
    if isinstance(items, list):
        objects = [item for item in items if isinstance(item, dict)]
        if objects:
            check_fields(fields, {k for item in objects for k in item})
        projected = [project(item, fields) if isinstance(item, dict) else item for item in items]
        return projected if isinstance(answer, list) else {**answer, "results": projected}
    if isinstance(answer, dict):
        check_fields(fields, answer.keys())
        return project(answer, fields)
    return answer


def parse_ordering(spec: ListSpec, raw: str) -> list[tuple[str, int]]:
    text = raw.strip() or spec.default_ordering
    sort: list[tuple[str, int]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        direction = -1 if part.startswith("-") else 1
        name = part.lstrip("-")
        path = spec.ordering.get(name)
        if path is None:
            allowed = ", ".join(sorted(spec.ordering)) or "none"
            raise ValidationFailed(
                f"Cannot order by '{name}'. Allowed: {allowed}.",
                field_errors={"ordering": [f"Unknown ordering field '{name}'."]},
            )
        if all(p != path for p, _ in sort):
            sort.append((path, direction))
    if all(p != "_id" for p, _ in sort):
        sort.append(("_id", 1))  # a total order, so pages never overlap or skip
    return sort


def project(item: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    return item if fields is None else {k: item[k] for k in fields if k in item}


def page_links(base_url: str, args: QueryArgs, page: int, page_size: int, count: int) -> tuple[str | None, str | None]:
    """Absolute next/previous URLs that keep every other parameter the client sent (page_size as served)."""
    kept = [
        (k, str(page_size) if k == "page_size" else (v.decode() if isinstance(v, bytes) else v))
        for k, vs in args.items()
        if k != "page"
        for v in vs
    ]

    def link(target: int) -> str:
        return base_url + "?" + urlencode(kept + [("page", str(target))])

    last = max(1, -(-count // page_size))
    nxt = link(page + 1) if page < last else None
    prev = link(min(page - 1, last)) if page > 1 else None
    return nxt, prev


class Page(dict[str, Any]):
    """A list's envelope ({count, next, previous, results}) and the response headers that describe it; handlers
    write both (APIHandler.write_json)."""

    def __init__(self, envelope: dict[str, Any], headers: Mapping[str, str] | None = None) -> None:
        super().__init__(envelope)
        self.headers: dict[str, str] = dict(headers or {})


# The response header that says a list was served at MAX_PAGE_SIZE although the client asked for more.
PAGE_SIZE_CAPPED = "X-Page-Size-Capped"

PageRenderer = Callable[[list[dict[str, Any]]], Awaitable[list[dict[str, Any]]]]


async def run_list(
    collection: AsyncCollection[dict[str, Any]],
    base_filter: dict[str, Any],
    query: ListQuery,
    *,
    render: PageRenderer,
    base_url: str,
    args: QueryArgs,
) -> Page:
    """Run a validated query inside `base_filter` (the caller's visibility) and build the page envelope.

    The access filter is combined with $and so a client filter can only narrow what the policy allows.
    A page is rendered as a whole so related data is fetched once per page, not once per item.
    """
    combined = {"$and": [base_filter, query.filter]} if base_filter and query.filter else (base_filter or query.filter)
    count = await collection.count_documents(combined)
    cursor = collection.find(combined).sort(query.sort).skip(query.skip).limit(query.page_size)
    docs = [doc async for doc in cursor]
    results = [project(item, query.fields) for item in await render(docs)]
    nxt, prev = page_links(base_url, args, query.page, query.page_size, count)
    headers = {PAGE_SIZE_CAPPED: str(query.page_size)} if query.page_size_capped else {}
    return Page({"count": count, "next": nxt, "previous": prev, "results": results}, headers)


def each(render: Callable[[dict[str, Any]], dict[str, Any]]) -> PageRenderer:
    """Adapt a one-document renderer to run_list's page renderer."""

    async def render_page(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [render(d) for d in docs]

    return render_page
