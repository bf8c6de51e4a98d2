"""The list-query layer: pagination, filters, search, ordering and projection, safe from injection."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
    case_insensitive: bool = False


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


def _positive_int(name: str, raw: str, default: int, maximum: int | None = None) -> int:
    if raw == "":
        return default
    if not re.fullmatch(r"[0-9]{1,9}", raw) or int(raw) < 1:
        raise ValidationFailed(
            f"'{name}' must be a positive integer.", field_errors={name: ["Must be a positive integer."]}
        )
    value = int(raw)
    if maximum is not None and value > maximum:
        raise ValidationFailed(
            f"'{name}' must be at most {maximum}.", field_errors={name: [f"Must be at most {maximum}."]}
        )
    return value


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
            filters.setdefault(fspec.path, {})
            if not isinstance(filters[fspec.path], dict):
                filters[fspec.path] = {"$eq": filters[fspec.path]}
            filters[fspec.path]["$" + op] = converted
        elif fspec.case_insensitive and isinstance(converted, str):
            conditions.append({fspec.path: {"$regex": "^" + re.escape(converted) + "$", "$options": "i"}})
        elif fspec.path in filters and isinstance(filters[fspec.path], dict):
            filters[fspec.path]["$eq"] = converted
        else:
            filters[fspec.path] = converted

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
    page_size = _positive_int(
        "page_size", _one(args, "page_size") if "page_size" in args else "", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
    )

    fields: list[str] | None = None
    if "fields" in args and _one(args, "fields").strip():
        fields = [f.strip() for f in _one(args, "fields").split(",") if f.strip()]
        unknown = [f for f in fields if f not in spec.fields]
        if unknown:
            raise ValidationFailed(
                "Unknown field in 'fields': " + ", ".join(unknown) + ".",
                field_errors={"fields": [f"Unknown field '{f}'." for f in unknown]},
            )

    query: dict[str, Any] = dict(filters)
    if conditions:
        query = (
            {"$and": [query, *conditions]}
            if query
            else ({"$and": conditions} if len(conditions) > 1 else conditions[0])
        )
    return ListQuery(filter=query, sort=sort, page=page, page_size=page_size, fields=fields)


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
    """Absolute next/previous URLs that keep every other parameter the client sent."""
    kept = [(k, (v.decode() if isinstance(v, bytes) else v)) for k, vs in args.items() if k != "page" for v in vs]

    def link(target: int) -> str:
        return base_url + "?" + urlencode(kept + [("page", str(target))])

    last = max(1, -(-count // page_size))
    nxt = link(page + 1) if page < last else None
    prev = link(min(page - 1, last)) if page > 1 else None
    return nxt, prev


PageRenderer = Callable[[list[dict[str, Any]]], Awaitable[list[dict[str, Any]]]]


async def run_list(
    collection: AsyncCollection[dict[str, Any]],
    base_filter: dict[str, Any],
    query: ListQuery,
    *,
    render: PageRenderer,
    base_url: str,
    args: QueryArgs,
) -> dict[str, Any]:
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
    return {"count": count, "next": nxt, "previous": prev, "results": results}


def each(render: Callable[[dict[str, Any]], dict[str, Any]]) -> PageRenderer:
    """Adapt a one-document renderer to run_list's page renderer."""

    async def render_page(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [render(d) for d in docs]

    return render_page
