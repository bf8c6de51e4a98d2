"""Review gates: an organization's rules on the property deltas of a version, what a review started on it must
then satisfy, the digest every vote records, and the ADMIN override."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError
from pymongo import IndexModel, ReturnDocument

from models import audit
from models.collections import REVIEW_GATE_RULES, REVIEWS
from models.database import Db, register_indexes, utcnow
from models.errors import Conflict, LimitExceeded, NotFound, ValidationFailed
from models.events import Publisher, announce
from models.policy import Principal, require, require_write
from models.reviews import OPEN_STATUSES, Reviews
from models.revisions import Revisions, covers
from models.schema import Input, RequiredText, Text

MAX_RULES = 50  # per organization

register_indexes(REVIEW_GATE_RULES, [IndexModel([("organization_id", 1), ("created_at", 1)])])


class Metric(str, Enum):
    MASS = "mass_kg"
    VOLUME = "volume_mm3"
    SURFACE_AREA = "surface_area_mm2"
    CENTER_OF_MASS_SHIFT = "center_of_mass_shift_mm"
    BOUNDING_BOX_DIAGONAL = "bounding_box_diagonal_mm"
    SOLIDS = "solids"
    FACES = "faces"
    BOM_CHANGES = "bom_changes"  # rows added, removed or with a changed quantity
    NEW_VALIDITY_ERRORS = "new_validity_errors"  # validation error codes that appeared


class Mode(str, Enum):
    RELATIVE = "relative"  # threshold in percent of the previous version's value
    ABSOLUTE = "absolute"  # threshold in the metric's own unit


class Effect(str, Enum):
    EXTRA_APPROVALS = "EXTRA_APPROVALS"  # the review needs `extra_approvals` more approvals
    ADMIN_OVERRIDE = "ADMIN_OVERRIDE"  # approval waits until an ADMIN/OWNER overrides


# Counts have no meaningful "percent of before": only absolute thresholds.
ABSOLUTE_ONLY = frozenset({Metric.BOM_CHANGES, Metric.NEW_VALIDITY_ERRORS})
UNITS = {
    Metric.MASS: "kg",
    Metric.VOLUME: "mm³",
    Metric.SURFACE_AREA: "mm²",
    Metric.CENTER_OF_MASS_SHIFT: "mm",
    Metric.BOUNDING_BOX_DIAGONAL: "mm",
    Metric.SOLIDS: "solids",
    Metric.FACES: "faces",
    Metric.BOM_CHANGES: "BOM changes",
    Metric.NEW_VALIDITY_ERRORS: "new validation errors",
}
LABELS = {
    Metric.MASS: "mass",
    Metric.VOLUME: "volume",
    Metric.SURFACE_AREA: "surface area",
    Metric.CENTER_OF_MASS_SHIFT: "centre of mass",
    Metric.BOUNDING_BOX_DIAGONAL: "bounding-box diagonal",
    Metric.SOLIDS: "solid count",
    Metric.FACES: "face count",
    Metric.BOM_CHANGES: "BOM",
    Metric.NEW_VALIDITY_ERRORS: "validity",
}


class GateRuleIn(Input):
    name: RequiredText = Field(max_length=200)
    description: Text = ""
    metric: Metric
    mode: Mode = Mode.RELATIVE
    threshold: float = Field(ge=0, le=1e12)
    effect: Effect
    extra_approvals: int | None = Field(None, ge=1, le=10)
    enabled: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> GateRuleIn:
        check_rule_shape(self.metric, self.mode, self.effect, self.extra_approvals)
        return self


class GateRulePatch(Input):
    name: RequiredText | None = Field(None, max_length=200)
    description: Text | None = None
    metric: Metric | None = None
    mode: Mode | None = None
    threshold: float | None = Field(None, ge=0, le=1e12)
    effect: Effect | None = None
    extra_approvals: int | None = Field(None, ge=1, le=10)
    enabled: bool | None = None


class OverrideIn(Input):
    reason: RequiredText


def check_rule_shape(metric: Metric, mode: Mode, effect: Effect, extra: int | None) -> None:
    if metric in ABSOLUTE_ONLY and mode is Mode.RELATIVE:
        raise PydanticCustomError("absolute_only", f"{metric.value} takes an absolute threshold (mode absolute).")
    if effect is Effect.EXTRA_APPROVALS and extra is None:
        raise PydanticCustomError("extra_required", "EXTRA_APPROVALS needs extra_approvals (1-10).")
    if effect is Effect.ADMIN_OVERRIDE and extra is not None:
        raise PydanticCustomError("extra_unexpected", "extra_approvals goes with EXTRA_APPROVALS only.")


def render_rule(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": doc["_id"],
        "organization": doc["organization_id"],
        "name": doc["name"],
        "description": doc.get("description", ""),
        "metric": doc["metric"],
        "mode": doc["mode"],
        "threshold": doc["threshold"],
        "effect": doc["effect"],
        "extra_approvals": doc.get("extra_approvals"),
        "enabled": doc["enabled"],
        "created_by": doc.get("created_by"),
        "created_at": doc["created_at"],
        "updated_at": doc["updated_at"],
        "version": doc["version"],
    }


def observed(metric: Metric, compare: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(absolute, relative) change of ``metric`` in a processing.compare result; None where unknown."""
    props = compare.get("properties") or {}
    if metric in (Metric.MASS, Metric.VOLUME, Metric.SURFACE_AREA):
        change = props.get(metric.value) or {}
        return change.get("absolute"), change.get("relative")
    if metric is Metric.CENTER_OF_MASS_SHIFT:
        com = props.get("center_of_mass") or {}
        return com.get("shift_mm"), com.get("relative")
    if metric is Metric.BOUNDING_BOX_DIAGONAL:
        diagonal = (props.get("bounding_box") or {}).get("diagonal") or {}
        return diagonal.get("absolute"), diagonal.get("relative")
    if metric in (Metric.SOLIDS, Metric.FACES):
        change = (props.get("topology") or {}).get(metric.value) or {}
        return change.get("absolute"), change.get("relative")
    if metric is Metric.BOM_CHANGES:
        counts = (compare.get("bom") or {}).get("counts")
        return (
            (None, None) if counts is None else (counts["added"] + counts["removed"] + counts["quantity_changed"], None)
        )
    appeared = ((props.get("validity") or {}).get("errors") or {}).get("appeared")
    return (None, None) if appeared is None else (len(appeared), None)


def _number(value: float, unit: str) -> str:
    return f"{value:+.6g} {unit}" if unit not in ("solids", "faces") else f"{value:+g} {unit}"


def evaluate(rules: Sequence[Mapping[str, Any]], compare: Mapping[str, Any], withhold: str | None) -> dict[str, Any]:
    """Which enabled rules the compare trips, and why; ``withhold`` replaces the figures in the reasons (the
    previous version is labelled above this one: its figures must not reach this version's readers)."""
    previous = (compare.get("from") or {}).get("version_number")
    tripped, not_evaluated = [], []
    for rule in rules:
        metric, mode, threshold = Metric(rule["metric"]), Mode(rule["mode"]), float(rule["threshold"])
        absolute, relative = observed(metric, compare) if compare.get("from") else (None, None)
        value = (relative * 100 if relative is not None else None) if mode is Mode.RELATIVE else absolute
        if value is None:
            why = "no previous version" if not compare.get("from") else f"the {LABELS[metric]} change is unknown"
            not_evaluated.append({"rule_id": rule["_id"], "name": rule["name"], "reason": why})
            continue
        if abs(value) <= threshold:
            continue
        limit = f"{threshold:g} %" if mode is Mode.RELATIVE else f"{threshold:g} {UNITS[metric]}"
        if withhold:
            reason = f"The {LABELS[metric]} changed by more than {limit} since version {previous} ({withhold})."
        elif mode is Mode.RELATIVE:
            reason = (
                f"The {LABELS[metric]} changed by {value:+.2f} % ({_number(absolute or 0.0, UNITS[metric])}) "
                f"since version {previous}, over the {limit} limit."
            )
        else:
            change = _number(value, UNITS[metric])
            reason = f"The {LABELS[metric]} changed by {change} since version {previous}, over the {limit} limit."
        tripped.append(
            {
                "rule_id": rule["_id"],
                "name": rule["name"],
                "metric": metric.value,
                "mode": mode.value,
                "threshold": threshold,
                "effect": rule["effect"],
                "extra_approvals": rule.get("extra_approvals"),
                "observed": None if withhold else value,
                "reason": reason,
            }
        )
    return {
        "tripped": tripped,
        "not_evaluated": not_evaluated,
        "extra_approvals": sum(int(t["extra_approvals"] or 0) for t in tripped),
        "override_required": any(t["effect"] == Effect.ADMIN_OVERRIDE.value for t in tripped),
    }


class Gates:
    """Rules per organization and their application to reviews; plugged into Reviews as its revision hooks."""

    def __init__(self, db: Db, revisions: Revisions, reviews: Reviews, publisher: Publisher) -> None:
        self.db = db
        self.revisions = revisions
        self.reviews = reviews
        self.publisher = publisher

    # ------------------------------------------------------------------ rules

    async def list_rules(self, principal: Principal, org_id: str) -> list[dict[str, Any]]:
        require(principal, "org.read", org_id)
        cursor = self.db[REVIEW_GATE_RULES].find({"organization_id": org_id}, sort=[("created_at", 1)], limit=MAX_RULES)
        return [render_rule(d) async for d in cursor]

    async def _rule(self, principal: Principal, org_id: str, rule_id: str) -> dict[str, Any]:
        require(principal, "org.read", org_id)
        doc = await self.db[REVIEW_GATE_RULES].find_one({"_id": rule_id, "organization_id": org_id})
        if doc is None:
            raise NotFound("Review rule not found.")
        return doc

    async def get_rule(self, principal: Principal, org_id: str, rule_id: str) -> dict[str, Any]:
        return render_rule(await self._rule(principal, org_id, rule_id))

    async def create_rule(
        self, principal: Principal, org_id: str, data: GateRuleIn, actor: audit.Actor
    ) -> dict[str, Any]:
        """A new rule (ADMIN/OWNER), audited; it applies to reviews started from now on."""
        require_write(principal)
        require(principal, "review.manage", org_id, hide=True)
        if await self.db[REVIEW_GATE_RULES].count_documents({"organization_id": org_id}) >= MAX_RULES:
            raise LimitExceeded(f"An organization has at most {MAX_RULES} review rules.")
        now = utcnow()
        doc = {
            "_id": str(uuid.uuid4()),
            "organization_id": org_id,
            **data.model_dump(mode="json"),
            "created_by": principal.id,
            "created_at": now,
            "updated_at": now,
            "version": 1,
        }
        await self.db[REVIEW_GATE_RULES].insert_one(doc)
        await audit.record(
            self.db,
            actor,
            "CREATE",
            "ReviewGateRule",
            doc["_id"],
            organization_id=org_id,
            changes={
                k: doc[k] for k in ("name", "metric", "mode", "threshold", "effect", "extra_approvals", "enabled")
            },
        )
        return render_rule(doc)

    async def update_rule(
        self, principal: Principal, org_id: str, rule_id: str, patch: GateRulePatch, actor: audit.Actor
    ) -> dict[str, Any]:
        require_write(principal)
        doc = await self._rule(principal, org_id, rule_id)
        require(principal, "review.manage", org_id, hide=False)
        values = patch.model_dump(exclude_unset=True, mode="json")
        for key in ("name", "metric", "mode", "threshold", "effect", "enabled"):
            if key in values and values[key] is None:
                raise ValidationFailed(f"{key} cannot be null.", field_errors={key: ["May not be null."]})
        merged = {**doc, **values}
        if merged["effect"] == Effect.ADMIN_OVERRIDE.value and "effect" in values and "extra_approvals" not in values:
            merged["extra_approvals"] = None
        try:
            check_rule_shape(
                Metric(merged["metric"]), Mode(merged["mode"]), Effect(merged["effect"]), merged.get("extra_approvals")
            )
        except PydanticCustomError as exc:
            raise ValidationFailed(str(exc), field_errors={"__all__": [str(exc)]}) from None
        changes = {k: {"old": doc.get(k), "new": merged.get(k)} for k in merged if doc.get(k) != merged.get(k)}
        if not changes:
            return render_rule(doc)
        updated = await self.db[REVIEW_GATE_RULES].find_one_and_update(
            {"_id": rule_id, "version": doc["version"]},
            {"$set": {**{k: v["new"] for k, v in changes.items()}, "updated_at": utcnow()}, "$inc": {"version": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if updated is None:
            raise Conflict("The rule changed meanwhile; read it again and retry.")
        await audit.record(self.db, actor, "UPDATE", "ReviewGateRule", rule_id, organization_id=org_id, changes=changes)
        return render_rule(updated)

    async def delete_rule(self, principal: Principal, org_id: str, rule_id: str, actor: audit.Actor) -> None:
        require_write(principal)
        doc = await self._rule(principal, org_id, rule_id)
        require(principal, "review.manage", org_id, hide=False)
        await self.db[REVIEW_GATE_RULES].delete_one({"_id": rule_id})
        await audit.record(
            self.db,
            actor,
            "DELETE",
            "ReviewGateRule",
            rule_id,
            organization_id=org_id,
            changes={"name": doc["name"], "metric": doc["metric"], "threshold": doc["threshold"]},
        )

    # ------------------------------------------------------------------ the hooks Reviews calls

    async def gates_for(self, design: Mapping[str, Any]) -> dict[str, Any]:
        """The gate report of a review opening on ``design``: its deltas from the previous version, their
        digest and the rules they trip."""
        previous = await self.revisions.previous_version(design)
        compare = await self.revisions.compare_docs(previous, design)
        rules = [
            r
            async for r in self.db[REVIEW_GATE_RULES].find(
                {"organization_id": design["organization_id"], "enabled": True}, sort=[("created_at", 1)]
            )
        ]
        withhold = None
        if previous is not None and not covers(design["classification"], previous["classification"]):
            withhold = f"figures withheld: version {previous['version_number']} is {previous['classification']}"
        return {
            "previous_design_id": previous and previous["_id"],
            "previous_version_number": previous and previous["version_number"],
            "file_hash": design.get("file_hash"),
            "deltas_digest": compare["digest"],
            "evaluated_at": utcnow(),
            **evaluate(rules, compare, withhold),
            "override": None,
        }

    async def vote_basis(self, review: Mapping[str, Any], design: Mapping[str, Any]) -> dict[str, Any]:
        """What a vote is cast on now: the current digest, and a fresh gate report when it is no longer the
        digest the review's gates were evaluated on (earlier votes then stop counting)."""
        current = await self.gates_for(design)
        gates = review.get("gates")
        changed = gates is not None and gates.get("deltas_digest") != current["deltas_digest"]
        return {"deltas_digest": current["deltas_digest"], "gates": current if changed else None}

    async def plan_carry(self, principal: Principal, design: Mapping[str, Any], wanted: bool | list[int]) -> Any:
        return await self.revisions.plan_carry(principal, design, wanted)

    async def apply_carry(
        self, principal: Principal, review: Mapping[str, Any], plan: Any, actor: audit.Actor
    ) -> list[int]:
        return await self.revisions.apply_carry(principal, review, plan, actor)

    # ------------------------------------------------------------------ override

    async def override(
        self, principal: Principal, review_id: str, data: OverrideIn, actor: audit.Actor
    ) -> dict[str, Any]:
        """An ADMIN/OWNER lets a review whose gates require it be approved (audited); the rule is then applied."""
        require_write(principal)
        doc = await self.reviews.get_visible(principal, review_id)
        require(principal, "review.manage", doc["organization_id"], hide=False)
        self.reviews.require_open(doc, "be overridden")
        gates = doc.get("gates") or {}
        if not gates.get("override_required"):
            raise Conflict("No rule of this review waits for an override.")
        if gates.get("override"):
            raise Conflict("This review was already overridden.")
        now = utcnow()
        record = {"by": principal.id, "username": principal.username, "at": now, "reason": data.reason}
        updated = await self.db[REVIEWS].find_one_and_update(
            {
                "_id": review_id,
                "status": {"$in": list(OPEN_STATUSES)},
                "gates.deltas_digest": gates.get("deltas_digest"),
                "gates.override": None,
            },
            {"$set": {"gates.override": record, "updated_at": now}, "$inc": {"version": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if updated is None:
            raise Conflict("The review changed meanwhile; read it again and retry.")
        await audit.record(
            self.db,
            actor,
            "OVERRIDE",
            "ReviewSession",
            review_id,
            organization_id=doc["organization_id"],
            classification=doc["classification"],
            design_id=doc["design_id"],
            changes={
                "reason": data.reason,
                "rules": [t["name"] for t in gates.get("tripped") or [] if t["effect"] == Effect.ADMIN_OVERRIDE.value],
                "deltas_digest": gates.get("deltas_digest"),
            },
        )
        await announce(
            self.publisher,
            [f"review:{review_id}"],
            "review.overridden",
            {
                "review_id": review_id,
                "design_id": doc["design_id"],
                "classification": doc["classification"],
                "by": principal.id,
                "reason": data.reason,
            },
        )
        return await self.reviews.settle(updated, actor)
