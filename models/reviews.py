"""Review sessions: reviewers, signed votes and decision rules, the design's review status, and who may read them."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import timedelta
from enum import Enum
from typing import Annotated, Any, Literal, Protocol

from pydantic import AwareDatetime, Field
from pymongo import IndexModel, ReturnDocument
from pymongo.errors import DuplicateKeyError

from models import audit
from models.collections import AUDIT_LOG, DESIGNS, MARKUPS, MEMBERSHIPS, ORGANIZATIONS, REVIEWS, USERS
from models.database import Db, register_indexes, utcnow
from models.designs import Designs, DesignStatus
from models.errors import Conflict, PermissionDenied, RateLimited, ValidationFailed
from models.events import Publisher, announce
from models.identity import Passwords
from models.listing import Filter, Kind, ListSpec, QueryArgs, parse_list_query, run_list
from models.policy import (
    Classification,
    Clearance,
    Principal,
    can,
    check_document,
    classification_allows,
    combine,
    documents_filter,
    require,
    require_write,
)
from models.schema import Input, Text, Uuid, refuse_nulls

MAX_REVIEWERS = 50
MAX_CARRY_IDS = 500  # markup ids one review may name to carry over (models.revisions offers at most as many)
MAX_DUE_AHEAD = timedelta(days=3660)
# A wrong signing password is a guess at someone's password: bound the guesses like logins are bounded.
MAX_SIGNATURE_FAILURES = 5
SIGNATURE_FAILURE_WINDOW = timedelta(minutes=15)

register_indexes(
    REVIEWS,
    [
        # The database's own guarantee of one open session per design version (the status guard is the first).
        IndexModel("design_id", unique=True, partialFilterExpression={"open": True}, name="one_open_review_per_design"),
        IndexModel([("design_id", 1), ("created_at", -1)]),
        IndexModel([("organization_id", 1), ("created_at", -1)]),
        IndexModel("reviewers"),
        IndexModel([("status", 1), ("due_date", 1)]),
    ],
)


class ReviewStatus(str, Enum):
    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"


OPEN_STATUSES = (ReviewStatus.PENDING.value, ReviewStatus.IN_PROGRESS.value)


class DecisionRule(str, Enum):
    ALL = "ALL"  # every reviewer approves
    ANY = "ANY"  # one approval suffices
    THRESHOLD = "THRESHOLD"  # `threshold` approvals out of all reviewers


class Decision(str, Enum):
    APPROVE = "APPROVE"
    REJECT = "REJECT"


class Outcome(str, Enum):
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"


class RejectReason(str, Enum):
    INCORRECT_DIMENSIONS = "INCORRECT_DIMENSIONS"
    TOLERANCE_ISSUE = "TOLERANCE_ISSUE"
    MATERIAL_ISSUE = "MATERIAL_ISSUE"
    INVALID_GEOMETRY = "INVALID_GEOMETRY"
    MANUFACTURABILITY = "MANUFACTURABILITY"
    REQUIREMENTS_NOT_MET = "REQUIREMENTS_NOT_MET"
    SAFETY_CONCERN = "SAFETY_CONCERN"
    COMPLIANCE_ISSUE = "COMPLIANCE_ISSUE"
    INCOMPLETE_DOCUMENTATION = "INCOMPLETE_DOCUMENTATION"
    OTHER = "OTHER"


UserId = Annotated[int, Field(ge=1, le=2**53)]
Password = Annotated[str, Field(min_length=1, max_length=256)]
MarkupId = Annotated[int, Field(ge=1, le=2**53)]
# True: every markup the previous version's review left open (as re-anchored on this version); a list: those ids.
CarryMarkups = bool | Annotated[list[MarkupId], Field(max_length=MAX_CARRY_IDS)]
Digest = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]


class RevisionHooks(Protocol):
    """What reviews take from the revision features (models.gates implements it; server.py plugs it in)."""

    async def gates_for(self, design: Mapping[str, Any]) -> dict[str, Any]: ...

    async def vote_basis(self, review: Mapping[str, Any], design: Mapping[str, Any]) -> dict[str, Any]: ...

    async def plan_carry(self, principal: Principal, design: Mapping[str, Any], wanted: bool | list[int]) -> Any: ...

    async def apply_carry(
        self, principal: Principal, review: Mapping[str, Any], plan: Any, actor: audit.Actor
    ) -> list[int]: ...


class ReviewIn(Input):
    design_asset: Uuid
    reviewers: list[UserId] = Field(min_length=1, max_length=MAX_REVIEWERS)
    due_date: AwareDatetime | None = None
    notes: Text = ""
    decision_rule: DecisionRule = DecisionRule.ALL
    threshold: int | None = Field(None, ge=1, le=MAX_REVIEWERS)
    veto: bool = True  # any reject completes the session as rejected, whatever the rule
    carry_markups: CarryMarkups = False


class StartReviewIn(Input):
    """The POST /api/designs/{id}/start_review/ body (the design comes from the path)."""

    reviewer_ids: list[UserId] = Field(min_length=1, max_length=MAX_REVIEWERS)
    due_date: AwareDatetime | None = None
    notes: Text = ""
    decision_rule: DecisionRule = DecisionRule.ALL
    threshold: int | None = Field(None, ge=1, le=MAX_REVIEWERS)
    veto: bool = True
    carry_markups: CarryMarkups = False

    def for_design(self, design_id: str) -> ReviewIn:
        return ReviewIn(
            design_asset=design_id,
            reviewers=self.reviewer_ids,
            due_date=self.due_date,
            notes=self.notes,
            decision_rule=self.decision_rule,
            threshold=self.threshold,
            veto=self.veto,
            carry_markups=self.carry_markups,
        )


class ReviewPatch(Input):
    reviewers: list[UserId] | None = Field(None, min_length=1, max_length=MAX_REVIEWERS)
    due_date: AwareDatetime | None = None
    notes: Text | None = None
    decision_rule: DecisionRule | None = None
    threshold: int | None = Field(None, ge=1, le=MAX_REVIEWERS)
    veto: bool | None = None
    status: Literal["IN_PROGRESS", "CANCELLED"] | None = None


class VoteIn(Input):
    """One reviewer's vote; `password` is required when the organization requires re-signing."""

    decision: Decision
    comments: Text = ""
    reason: RejectReason | None = None
    password: Password | None = None
    # What the voter looked at: a vote given on other geometry or other deltas is refused (409), not counted.
    file_hash: str | None = Field(None, max_length=80)
    deltas_digest: Digest | None = None


class ReviewVoteCommand(VoteIn):
    """The WebSocket `review.vote` payload: a vote plus the session it is cast in."""

    review_id: Uuid


class ApproveIn(Input):
    """The POST /api/reviews/{id}/approve/ body."""

    comments: Text = ""
    approved: bool = True
    password: Password | None = None
    file_hash: str | None = Field(None, max_length=80)
    deltas_digest: Digest | None = None

    def vote(self) -> VoteIn:
        if not self.approved:
            raise ValidationFailed(
                "To reject, POST to reject/ with a reason.",
                field_errors={"approved": ["Must be true here; use reject/ to reject."]},
            )
        return VoteIn(
            decision=Decision.APPROVE,
            comments=self.comments,
            password=self.password,
            file_hash=self.file_hash,
            deltas_digest=self.deltas_digest,
        )


class RejectIn(Input):
    """The POST /api/reviews/{id}/reject/ body."""

    comments: Text = ""
    reason: RejectReason
    password: Password | None = None
    file_hash: str | None = Field(None, max_length=80)
    deltas_digest: Digest | None = None

    def vote(self) -> VoteIn:
        return VoteIn(
            decision=Decision.REJECT,
            comments=self.comments,
            reason=self.reason,
            password=self.password,
            file_hash=self.file_hash,
            deltas_digest=self.deltas_digest,
        )


class DesignApproveIn(Input):
    """The POST /api/designs/{id}/approve/ body."""

    notes: Text = ""
    password: Password | None = None
    file_hash: str | None = Field(None, max_length=80)
    deltas_digest: Digest | None = None

    def vote(self) -> VoteIn:
        return VoteIn(
            decision=Decision.APPROVE,
            comments=self.notes,
            password=self.password,
            file_hash=self.file_hash,
            deltas_digest=self.deltas_digest,
        )


class CancelIn(Input):
    reason: Text = ""


REVIEW_FIELDS = frozenset(
    {
        "id",
        "design_asset",
        "organization",
        "series",
        "design_version_number",
        "classification",
        "reviewers",
        "reviewer_details",
        "status",
        "outcome",
        "decision_rule",
        "threshold",
        "veto",
        "required_approvals",
        "tally",
        "due_date",
        "is_overdue",
        "notes",
        "created_by",
        "created_by_username",
        "created_at",
        "updated_at",
        "started_at",
        "completed_at",
        "cancelled_at",
        "cancelled_by",
        "cancel_reason",
        "gates",
        "version",
    }
)

REVIEW_LIST = ListSpec(
    filters={
        "design_asset": Filter(Kind.UUID, "design_id"),
        "organization": Filter(Kind.UUID, "organization_id"),
        "status": Filter(Kind.ENUM, "status", choices=frozenset(s.value for s in ReviewStatus)),
        "outcome": Filter(Kind.ENUM, "outcome", choices=frozenset(o.value for o in Outcome), nullable=True),
        "decision_rule": Filter(Kind.ENUM, "decision_rule", choices=frozenset(r.value for r in DecisionRule)),
        "reviewers": Filter(Kind.INT, "reviewers"),
        "created_by": Filter(Kind.INT, "created_by"),
        "due_date": Filter(Kind.DATETIME, "due_date", ranges=True, nullable=True),
        "created_at": Filter(Kind.DATETIME, "created_at", ranges=True),
    },
    search=("notes",),
    ordering={
        "created_at": "created_at",
        "updated_at": "updated_at",
        "due_date": "due_date",
        "completed_at": "completed_at",
        "status": "status",
    },
    default_ordering="-created_at",
    fields=REVIEW_FIELDS,
)


def extra_approvals(doc: Mapping[str, Any]) -> int:
    """Approvals the review's gates add to its decision rule (models.gates)."""
    return int((doc.get("gates") or {}).get("extra_approvals") or 0)


def required_approvals(doc: Mapping[str, Any]) -> int:
    """Approvals that complete the session: the rule's, plus what its gates add. Under ALL every reviewer already
    approves; there the gates make the panel bigger instead (see _check_rule)."""
    count = len(doc["reviewers"])
    rule = doc["decision_rule"]
    if rule == DecisionRule.ANY.value:
        return 1 + extra_approvals(doc)
    if rule == DecisionRule.THRESHOLD.value:
        return int(doc["threshold"]) + extra_approvals(doc)
    return count


def is_stale(doc: Mapping[str, Any], vote: Mapping[str, Any]) -> bool:
    """A vote cast on other property deltas than the ones the review's gates stand on now never counts."""
    gates = doc.get("gates")
    return bool(gates and vote.get("deltas_digest") and vote["deltas_digest"] != gates.get("deltas_digest"))


def awaiting_override(doc: Mapping[str, Any]) -> bool:
    gates = doc.get("gates") or {}
    return bool(gates.get("override_required")) and not gates.get("override")


def tally(doc: Mapping[str, Any]) -> dict[str, int]:
    reviewers = {str(r) for r in doc["reviewers"]}
    current = [v for k, v in (doc.get("votes") or {}).items() if k in reviewers and not is_stale(doc, v)]
    approved = sum(1 for v in current if v["decision"] == Decision.APPROVE.value)
    rejected = sum(1 for v in current if v["decision"] == Decision.REJECT.value)
    return {
        "approved": approved,
        "rejected": rejected,
        "pending": len(reviewers) - approved - rejected,
        "required": required_approvals(doc),
        "reviewers": len(reviewers),
    }


def decide(doc: Mapping[str, Any]) -> Outcome | None:
    """The session's rule applied to the current votes. A veto is checked first: with concurrent votes, an
    on-record rejection must never be outvoted by an approval that raced it."""
    t = tally(doc)
    if t["rejected"] and doc.get("veto", True):
        return Outcome.REJECTED
    if t["approved"] >= t["required"]:
        # A gate that needs an ADMIN's override holds the approval (a rejection is never held).
        return None if awaiting_override(doc) else Outcome.APPROVED
    if t["rejected"] > t["reviewers"] - t["required"]:
        return Outcome.REJECTED  # the required approvals can no longer be reached
    return None


def is_overdue(doc: Mapping[str, Any], now: Any = None) -> bool:
    due = doc.get("due_date")
    return bool(due is not None and doc["status"] in OPEN_STATUSES and due < (now or utcnow()))


def _check_rule(
    rule: str, threshold: int | None, reviewers: Sequence[int], gates: Mapping[str, Any] | None = None
) -> None:
    extra = int((gates or {}).get("extra_approvals") or 0)
    if extra:
        base = {DecisionRule.ANY.value: 1, DecisionRule.THRESHOLD.value: threshold or 0}.get(rule, 1)
        if base + extra > len(reviewers):
            names = ", ".join(t["name"] for t in (gates or {}).get("tripped") or [] if t.get("extra_approvals"))
            what = "reviewers on the panel" if rule == DecisionRule.ALL.value else "approvals"
            raise ValidationFailed(
                f"This version trips review rules ({names}) that need {extra} more approval(s): {base + extra} "
                f"{what}, but the panel has {len(reviewers)} reviewers.",
                field_errors={"reviewers": [f"At least {base + extra} reviewers are needed."]},
            )
    if rule == DecisionRule.THRESHOLD.value:
        if threshold is None:
            raise ValidationFailed(
                "A THRESHOLD rule needs a threshold.",
                field_errors={"threshold": ["Required for decision_rule THRESHOLD."]},
            )
        if threshold > len(reviewers):
            raise ValidationFailed(
                "The threshold exceeds the number of reviewers.",
                field_errors={"threshold": [f"At most {len(reviewers)} (the reviewers)."]},
            )
    elif threshold is not None:
        raise ValidationFailed(
            "Only a THRESHOLD rule takes a threshold.",
            field_errors={"threshold": ["Only with decision_rule THRESHOLD."]},
        )


def _check_due(due: Any) -> None:
    if due is None:
        return
    now = utcnow()
    if due <= now:
        raise ValidationFailed("The due date is in the past.", field_errors={"due_date": ["Must be in the future."]})
    if due > now + MAX_DUE_AHEAD:
        raise ValidationFailed("The due date is too far ahead.", field_errors={"due_date": ["At most 10 years ahead."]})


class Reviews:
    """Repository and rules for review sessions; REST handlers and WebSocket commands both call these."""

    def __init__(self, db: Db, publisher: Publisher, designs: Designs, passwords: Passwords) -> None:
        self.db = db
        self.publisher = publisher
        self.designs = designs
        self.passwords = passwords
        # The revision features (gates, carried markups); server.py plugs them in once they are built.
        self.hooks: RevisionHooks | None = None

    # ------------------------------------------------------------------ visibility

    def visible_filter(self, principal: Principal) -> dict[str, Any]:
        """A review carries its design's organization and classification, so lists and counts filter in the query."""
        return documents_filter(principal)

    async def get_visible(self, principal: Principal, review_id: str) -> dict[str, Any]:
        """Creator, reviewers and ADMIN/OWNER read a session, and so does every other member who can see the
        design: all of them are members who pass the design's classification rule, which is what is checked.
        Another organization's session is 404; one's own above one's clearance is 403 (ITAR_VIOLATION)."""
        doc = await self.db[REVIEWS].find_one({"_id": review_id}) if isinstance(review_id, str) else None
        return check_document(principal, doc, "review.read", "Review session")

    async def can_read(self, principal: Principal, review_id: str) -> None:
        """For the WebSocket authorizer of review:<id> channels: raises NotFound or PermissionDenied."""
        await self.get_visible(principal, review_id)

    def is_participant(self, principal: Principal, doc: Mapping[str, Any]) -> bool:
        return principal.id == doc["created_by"] or principal.id in doc["reviewers"]

    def may_moderate(self, principal: Principal, doc: Mapping[str, Any]) -> bool:
        return can(principal, "review.manage", doc["organization_id"])

    def require_open(self, doc: Mapping[str, Any], what: str = "change") -> None:
        if doc["status"] not in OPEN_STATUSES:
            raise Conflict(f"This review session is {doc['status']}; nothing in it may {what} any more.")

    async def _org(self, org_id: str) -> dict[str, Any]:
        return (
            await self.db[ORGANIZATIONS].find_one(
                {"_id": org_id},
                projection={"is_us_organization": 1, "require_password_to_sign": 1, "allow_self_approval": 1},
            )
            or {}
        )

    # ------------------------------------------------------------------ creating

    async def create(self, principal: Principal, data: ReviewIn, actor: audit.Actor) -> dict[str, Any]:
        """Open a session on a READY design (which goes IN_REVIEW), after checking the rule and every reviewer."""
        require_write(principal)
        design = await self.designs.get_visible(principal, data.design_asset)
        org_id = design["organization_id"]
        require(principal, "review.create", org_id)
        if design["status"] != DesignStatus.READY.value:
            detail = (
                "This design already has an open review."
                if design["status"] == DesignStatus.IN_REVIEW.value
                else f"Only a READY design can go to review; this one is {design['status']}."
            )
            raise Conflict(detail)
        gates = await self.hooks.gates_for(design) if self.hooks is not None else None
        _check_rule(data.decision_rule.value, data.threshold, data.reviewers, gates)
        _check_due(data.due_date)
        org = await self._org(org_id)
        await self._check_reviewers(data.reviewers, design, org)
        carry_plan: Any = None
        if data.carry_markups is not False:
            if self.hooks is None:
                raise Conflict("Carrying markups is not available on this server.")
            carry_plan = await self.hooks.plan_carry(principal, design, data.carry_markups)
        now = utcnow()
        review_id = str(uuid.uuid4())
        claimed = await self.db[DESIGNS].find_one_and_update(
            {"_id": design["_id"], "status": DesignStatus.READY.value},
            {
                "$set": {"status": DesignStatus.IN_REVIEW.value, "review_id": review_id, "updated_at": now},
                "$inc": {"version": 1},
            },
            return_document=ReturnDocument.AFTER,
        )
        if claimed is None:
            raise Conflict("This design already has an open review, or its status changed meanwhile.")
        doc = {
            "_id": review_id,
            "organization_id": org_id,
            "design_id": design["_id"],
            "series_id": design["series_id"],
            "design_version_number": design["version_number"],
            "classification": design["classification"],
            "reviewers": list(data.reviewers),
            "status": ReviewStatus.PENDING.value,
            "open": True,
            "outcome": None,
            "decision_rule": data.decision_rule.value,
            "threshold": data.threshold,
            "veto": data.veto,
            "due_date": data.due_date,
            "notes": data.notes,
            "votes": {},
            "created_by": principal.id,
            "created_at": now,
            "updated_at": now,
            "started_at": None,
            "completed_at": None,
            "cancelled_at": None,
            "cancelled_by": None,
            "cancel_reason": None,
            "version": 1,
        }
        if gates is not None:
            doc["gates"] = gates
        try:
            await self.db[REVIEWS].insert_one(doc)
        except DuplicateKeyError:
            await self.db[DESIGNS].update_one(
                {"_id": design["_id"], "review_id": review_id, "status": DesignStatus.IN_REVIEW.value},
                {"$set": {"status": DesignStatus.READY.value, "updated_at": utcnow()}, "$inc": {"version": 1}},
            )
            raise Conflict("This design already has an open review.") from None
        await audit.record(
            self.db,
            actor,
            "CREATE",
            "ReviewSession",
            review_id,
            organization_id=org_id,
            classification=doc["classification"],
            design_id=doc["design_id"],
            changes={
                "design_id": design["_id"],
                "reviewers": doc["reviewers"],
                "decision_rule": doc["decision_rule"],
                "threshold": doc["threshold"],
                "veto": doc["veto"],
                "due_date": doc["due_date"],
                **(
                    {
                        "gates_tripped": [t["name"] for t in gates["tripped"]],
                        "deltas_digest": gates["deltas_digest"],
                    }
                    if gates
                    else {}
                ),
            },
        )
        if carry_plan and self.hooks is not None:
            await self.hooks.apply_carry(principal, doc, carry_plan, actor)
        await self._design_status(claimed, design["status"], review_id, actor)
        await self._announce(
            doc, "review.created", {"reviewers": doc["reviewers"], "created_by": principal.id}, status_change=True
        )
        return doc

    async def start_review(
        self, principal: Principal, design_id: str, data: StartReviewIn, actor: audit.Actor
    ) -> dict[str, Any]:
        return await self.create(principal, data.for_design(design_id), actor)

    async def _check_reviewers(
        self, reviewers: Sequence[int], design: Mapping[str, Any], org: Mapping[str, Any]
    ) -> None:
        """Every reviewer must belong to the design's organization and be cleared for it; the refusal names
        each one refused, so the requester knows whom to replace."""
        if len(set(reviewers)) != len(reviewers):
            raise ValidationFailed("A reviewer is listed twice.", field_errors={"reviewers": ["Duplicate user id."]})
        ids = list(reviewers)
        fields = {"username": 1, "is_active": 1, "is_us_person": 1, "security_clearance_level": 1}
        users = {u["_id"]: u async for u in self.db[USERS].find({"_id": {"$in": ids}}, projection=fields)}
        members = {
            m["user_id"]
            async for m in self.db[MEMBERSHIPS].find(
                {"organization_id": design["organization_id"], "user_id": {"$in": ids}}, projection={"user_id": 1}
            )
        }
        classification = design["classification"]
        org_is_us = bool(org.get("is_us_organization"))
        problems = []
        for uid in ids:
            user = users.get(uid)
            if user is None or uid not in members:
                problems.append(f"User {uid} is not a member of the design's organization.")
                continue
            who = f"{user['username']} (user {uid})"
            if not user.get("is_active", True):
                problems.append(f"{who} is deactivated.")
            elif not classification_allows(
                Clearance(user.get("security_clearance_level", "UNCLASSIFIED")),
                bool(user.get("is_us_person")),
                classification,
                org_is_us,
            ):
                if classification == Classification.ITAR.value:
                    problems.append(f"{who} may not see this ITAR-controlled design (US persons only).")
                else:
                    problems.append(
                        f"{who} has {user.get('security_clearance_level', 'UNCLASSIFIED')} clearance; "
                        f"this design is {classification}."
                    )
            elif uid == design["uploaded_by"] and not org.get("allow_self_approval"):
                problems.append(
                    f"{who} uploaded this design and may not approve it "
                    "(the organization does not allow self-approval)."
                )
        if problems:
            raise ValidationFailed(
                "Some reviewers cannot review this design: " + " ".join(problems), field_errors={"reviewers": problems}
            )

    # ------------------------------------------------------------------ managing

    def _require_manager(self, principal: Principal, doc: Mapping[str, Any], what: str) -> None:
        creator = principal.id == doc["created_by"] and can(principal, "review.create", doc["organization_id"])
        if not (creator or self.may_moderate(principal, doc)):
            raise PermissionDenied(f"Only the session's creator or an ADMIN/OWNER may {what} it.")

    async def update(
        self, principal: Principal, review_id: str, patch: ReviewPatch, actor: audit.Actor, if_match: str | None = None
    ) -> dict[str, Any]:
        """Change reviewers, rule, due date or notes (panel and rule only before the first vote), or start or cancel."""
        require_write(principal)
        doc = await self.get_visible(principal, review_id)
        self._require_manager(principal, doc, "change")
        values = patch.model_dump(exclude_unset=True)
        if values.get("status") == ReviewStatus.CANCELLED.value:
            if len(values) > 1:
                raise ValidationFailed(
                    "Cancel on its own, without other changes.",
                    field_errors={"status": ["Send CANCELLED without other fields."]},
                )
            return await self.cancel(principal, review_id, CancelIn(), actor)
        self.require_open(doc)
        if if_match is not None and if_match.strip('W/"') != str(doc["version"]):
            raise Conflict("The review session changed since you read it (If-Match does not match).")
        refuse_nulls(values, ("reviewers", "decision_rule", "veto", "notes", "status"))
        changes: dict[str, Any] = {}
        for key in ("reviewers", "decision_rule", "threshold", "veto", "notes", "due_date", "status"):
            if key in values:
                new = values[key].value if isinstance(values[key], Enum) else values[key]
                if new != doc.get(key):
                    changes[key] = {"old": doc.get(key), "new": new}
        if not changes:
            return doc
        if "status" in changes and doc["status"] != ReviewStatus.PENDING.value:
            raise Conflict(f"The session is already {doc['status']}.")
        if changes.keys() & {"reviewers", "decision_rule", "threshold", "veto"}:
            if doc.get("votes"):
                # No vote may be counted under a rule or a panel its voter did not see.
                raise Conflict("Reviewers and the decision rule are fixed once the first vote is cast.")
            reviewers = changes["reviewers"]["new"] if "reviewers" in changes else doc["reviewers"]
            rule = changes["decision_rule"]["new"] if "decision_rule" in changes else doc["decision_rule"]
            threshold = values["threshold"] if "threshold" in values else doc["threshold"]
            if rule != DecisionRule.THRESHOLD.value and "threshold" not in values and doc["threshold"] is not None:
                threshold = None
                changes["threshold"] = {"old": doc["threshold"], "new": None}
            _check_rule(rule, threshold, reviewers, doc.get("gates"))
            if "reviewers" in changes:
                design = await self.db[DESIGNS].find_one({"_id": doc["design_id"]})
                if design is None:
                    raise Conflict("The design of this review no longer exists.")
                await self._check_reviewers(reviewers, design, await self._org(doc["organization_id"]))
        if "due_date" in changes:
            _check_due(changes["due_date"]["new"])
        now = utcnow()
        update = {k: v["new"] for k, v in changes.items()}
        if "status" in changes:
            update["started_at"] = now
        update["updated_at"] = now
        updated = await self.db[REVIEWS].find_one_and_update(
            {"_id": review_id, "version": doc["version"], "status": {"$in": list(OPEN_STATUSES)}},
            {"$set": update, "$inc": {"version": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if updated is None:
            raise Conflict("The review session changed meanwhile; read it again and retry.")
        await audit.record(
            self.db,
            actor,
            "UPDATE",
            "ReviewSession",
            review_id,
            organization_id=doc["organization_id"],
            classification=doc["classification"],
            design_id=doc["design_id"],
            changes=changes,
        )
        await self._announce(updated, "review.updated", {"changes": sorted(changes)})
        return updated

    async def mark_in_progress(self, doc: Mapping[str, Any]) -> None:
        """The first activity (a vote or a markup) moves a PENDING session to IN_PROGRESS."""
        if doc["status"] == ReviewStatus.PENDING.value:
            now = utcnow()
            await self.db[REVIEWS].update_one(
                {"_id": doc["_id"], "status": ReviewStatus.PENDING.value},
                {
                    "$set": {"status": ReviewStatus.IN_PROGRESS.value, "started_at": now, "updated_at": now},
                    "$inc": {"version": 1},
                },
            )

    async def cancel(self, principal: Principal, review_id: str, data: CancelIn, actor: audit.Actor) -> dict[str, Any]:
        """Cancel an open session (its creator or ADMIN/OWNER); the design returns to READY."""
        require_write(principal)
        doc = await self.get_visible(principal, review_id)
        self._require_manager(principal, doc, "cancel")
        self.require_open(doc)
        now = utcnow()
        updated = await self.db[REVIEWS].find_one_and_update(
            {"_id": review_id, "status": {"$in": list(OPEN_STATUSES)}},
            {
                "$set": {
                    "status": ReviewStatus.CANCELLED.value,
                    "cancelled_at": now,
                    "cancelled_by": principal.id,
                    "cancel_reason": data.reason,
                    "updated_at": now,
                },
                "$unset": {"open": ""},
                "$inc": {"version": 1},
            },
            return_document=ReturnDocument.AFTER,
        )
        if updated is None:
            raise Conflict("This review session was completed or cancelled meanwhile.")
        await audit.record(
            self.db,
            actor,
            "CANCEL",
            "ReviewSession",
            review_id,
            organization_id=doc["organization_id"],
            classification=doc["classification"],
            design_id=doc["design_id"],
            changes={"status": {"old": doc["status"], "new": ReviewStatus.CANCELLED.value}, "reason": data.reason},
        )
        design = await self.db[DESIGNS].find_one_and_update(
            {"_id": doc["design_id"], "status": DesignStatus.IN_REVIEW.value, "review_id": review_id},
            {"$set": {"status": DesignStatus.READY.value, "updated_at": now}, "$inc": {"version": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if design is not None:
            await self._design_status(design, DesignStatus.IN_REVIEW.value, review_id, actor)
        await self._announce(
            updated, "review.cancelled", {"cancelled_by": principal.id, "reason": data.reason}, status_change=True
        )
        return updated

    # ------------------------------------------------------------------ voting

    async def vote(self, principal: Principal, review_id: str, data: VoteIn, actor: audit.Actor) -> dict[str, Any]:
        """Cast or change the caller's vote; completes the session when its rule is met."""
        require_write(principal)
        doc = await self.get_visible(principal, review_id)
        if principal.id not in doc["reviewers"]:
            raise PermissionDenied("Only the session's assigned reviewers vote.")
        self.require_open(doc, "be voted on")
        if data.decision is Decision.REJECT and data.reason is None:
            raise ValidationFailed("A rejection needs a reason.", field_errors={"reason": ["This field is required."]})
        if data.decision is Decision.APPROVE and data.reason is not None:
            raise ValidationFailed(
                "An approval takes no rejection reason.", field_errors={"reason": ["Only for rejections."]}
            )
        design = await self.db[DESIGNS].find_one(
            {"_id": doc["design_id"]}, projection={"uploaded_by": 1, "file_hash": 1, "version": 1}
        )
        if design is None:
            raise Conflict("The design of this review no longer exists.")
        org = await self._org(doc["organization_id"])
        if (
            data.decision is Decision.APPROVE
            and design["uploaded_by"] == principal.id
            and not org.get("allow_self_approval")
        ):
            raise PermissionDenied(
                "You uploaded this design; your organization does not allow approving one's own design."
            )
        if data.file_hash is not None and data.file_hash != design.get("file_hash"):
            raise Conflict(
                f"You voted on {data.file_hash}, but this review's design is {design.get('file_hash')}; reload it.",
                field_errors={"file_hash": ["Not the file under review."]},
            )
        basis: dict[str, Any] = {"deltas_digest": None, "gates": None}
        if self.hooks is not None:
            full = await self.db[DESIGNS].find_one({"_id": doc["design_id"]})
            if full is not None:
                basis = await self.hooks.vote_basis(doc, full)
        if data.deltas_digest is not None and data.deltas_digest != basis["deltas_digest"]:
            raise Conflict(
                "The property deltas changed since you loaded them; compare again before voting.",
                field_errors={"deltas_digest": [f"Now {basis['deltas_digest']}."]},
            )
        if org.get("require_password_to_sign"):
            await self._check_signature(principal, doc, data.password, actor)
        now = utcnow()
        key = str(principal.id)
        vote = {
            "user_id": principal.id,
            "decision": data.decision.value,
            "comments": data.comments,
            "reason": data.reason.value if data.reason else None,
            "file_hash": design.get("file_hash"),
            "deltas_digest": basis["deltas_digest"],
            "design_version": design.get("version"),
            "signed": bool(org.get("require_password_to_sign")),
            "voted_at": now,
        }
        changes: dict[str, Any] = {f"votes.{key}": vote, "status": ReviewStatus.IN_PROGRESS.value, "updated_at": now}
        if basis["gates"] is not None:
            # The deltas moved under the review (a version or material changed): the gates are evaluated again
            # and votes cast on the old deltas stop counting.
            changes["gates"] = basis["gates"]
        after = await self.db[REVIEWS].find_one_and_update(
            {"_id": review_id, "status": {"$in": list(OPEN_STATUSES)}, "reviewers": principal.id},
            {"$set": changes, "$inc": {"version": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if after is None:
            current = await self.db[REVIEWS].find_one({"_id": review_id}, projection={"status": 1}) or {}
            raise Conflict(f"This review session is {current.get('status', 'gone')}; votes are closed.")
        if after.get("started_at") is None:
            after["started_at"] = now
            await self.db[REVIEWS].update_one({"_id": review_id, "started_at": None}, {"$set": {"started_at": now}})
        # The vote this one replaces, as read above; only the voter changes it, so the read is current.
        previous = (doc.get("votes") or {}).get(key)
        await audit.record(
            self.db,
            actor,
            # The reference's vocabulary: an approving vote is APPROVE, a rejecting one REJECT.
            audit.AuditAction.APPROVE if data.decision is Decision.APPROVE else audit.AuditAction.REJECT,
            "ReviewSession",
            review_id,
            organization_id=doc["organization_id"],
            classification=doc["classification"],
            design_id=doc["design_id"],
            changes={
                "decision": vote["decision"],
                "reason": vote["reason"],
                "comments": vote["comments"],
                "file_hash": vote["file_hash"],
                "deltas_digest": vote["deltas_digest"],
                **(
                    {
                        "gates_reevaluated": {
                            "old": (doc.get("gates") or {}).get("deltas_digest"),
                            "new": basis["deltas_digest"],
                        }
                    }
                    if basis["gates"] is not None
                    else {}
                ),
                "signed": vote["signed"],
                "previous": previous
                and {
                    "decision": previous["decision"],
                    "reason": previous.get("reason"),
                    "voted_at": previous["voted_at"],
                },
            },
        )
        await self._announce(
            after,
            "review.vote",
            {
                "reviewer": principal.id,
                "username": principal.username,
                "decision": vote["decision"],
                "reason": vote["reason"],
                "comments": vote["comments"],
                "changed": previous is not None,
                "voted_at": now,
                "tally": tally(after),
            },
        )
        return await self._settle(after, actor)

    async def vote_on_design(
        self, principal: Principal, design_id: str, data: VoteIn, actor: audit.Actor
    ) -> dict[str, Any]:
        """POST /api/designs/{id}/approve/: a vote in that design's open review."""
        design = await self.designs.get_visible(principal, design_id)
        open_review = await self.db[REVIEWS].find_one({"design_id": design["_id"], "open": True}, projection={"_id": 1})
        if open_review is None:
            raise Conflict("This design has no open review to vote in.")
        return await self.vote(principal, open_review["_id"], data, actor)

    async def _check_signature(
        self, principal: Principal, doc: Mapping[str, Any], password: str | None, actor: audit.Actor
    ) -> None:
        if not password:
            raise ValidationFailed(
                "This organization requires your password to sign a review vote.",
                field_errors={"password": ["Re-enter your password to sign."]},
            )
        since = utcnow() - SIGNATURE_FAILURE_WINDOW
        failures = await self.db[AUDIT_LOG].count_documents(
            {"actor_id": principal.id, "action": "SIGNATURE_FAILED", "timestamp": {"$gte": since}}
        )
        if failures >= MAX_SIGNATURE_FAILURES:
            retry = int(SIGNATURE_FAILURE_WINDOW.total_seconds())
            raise RateLimited(
                f"Too many failed signatures; try again in {retry // 60} minutes.",
                headers={"Retry-After": str(retry)},
                extra={"retry_after": retry},
            )
        user = await self.db[USERS].find_one({"_id": principal.id}, projection={"password_hash": 1}) or {}
        if not await self.passwords.verify(user.get("password_hash"), password):
            await audit.record(
                self.db,
                actor,
                "SIGNATURE_FAILED",
                "ReviewSession",
                doc["_id"],
                organization_id=doc["organization_id"],
                classification=doc["classification"],
                design_id=doc["design_id"],
                changes={"reason": "wrong password"},
            )
            raise PermissionDenied(
                "The password is not correct; the vote was not signed.",
                field_errors={"password": ["Incorrect password."]},
            )

    async def settle(self, doc: dict[str, Any], actor: audit.Actor) -> dict[str, Any]:
        """Complete the session if its rule is met now (after a vote, or an override of its gates)."""
        return await self._settle(doc, actor)

    async def _settle(self, doc: dict[str, Any], actor: audit.Actor) -> dict[str, Any]:
        """Complete the session if its rule is met. The completion is guarded by the version the decision was
        computed from, so a vote that lands meanwhile makes us decide again instead of deciding on stale votes."""
        for _ in range(50):
            outcome = decide(doc)
            if outcome is None:
                # Votes racing this one each decide on their own result; re-reading once more also covers a
                # database whose returned document lags a concurrent write (the embedded one's pre-images did).
                fresh = await self.db[REVIEWS].find_one({"_id": doc["_id"]})
                if fresh is None or fresh["version"] == doc["version"] or fresh["status"] not in OPEN_STATUSES:
                    return fresh or doc
                doc = fresh
                continue
            now = utcnow()
            done = await self.db[REVIEWS].find_one_and_update(
                {"_id": doc["_id"], "version": doc["version"], "status": {"$in": list(OPEN_STATUSES)}},
                {
                    "$set": {
                        "status": ReviewStatus.COMPLETED.value,
                        "outcome": outcome.value,
                        "completed_at": now,
                        "updated_at": now,
                    },
                    "$unset": {"open": ""},
                    "$inc": {"version": 1},
                },
                return_document=ReturnDocument.AFTER,
            )
            if done is not None:
                await self._complete_design(done, outcome, actor)
                return done
            fresh = await self.db[REVIEWS].find_one({"_id": doc["_id"]})
            if fresh is None or fresh["status"] not in OPEN_STATUSES:
                return fresh or doc
            doc = fresh
        raise Conflict("The review session is changing too fast; read it again.")

    async def _complete_design(self, review: dict[str, Any], outcome: Outcome, actor: audit.Actor) -> None:
        await audit.record(
            self.db,
            actor,
            "COMPLETE",
            "ReviewSession",
            review["_id"],
            organization_id=review["organization_id"],
            classification=review["classification"],
            design_id=review["design_id"],
            changes={
                "outcome": outcome.value,
                "tally": tally(review),
                "decision_rule": review["decision_rule"],
                "threshold": review["threshold"],
                "veto": review["veto"],
            },
        )
        design = await self.db[DESIGNS].find_one_and_update(
            {"_id": review["design_id"], "status": DesignStatus.IN_REVIEW.value, "review_id": review["_id"]},
            {"$set": {"status": outcome.value, "updated_at": review["completed_at"]}, "$inc": {"version": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if design is not None:
            await self._design_status(design, DesignStatus.IN_REVIEW.value, review["_id"], actor)
        await self._announce(
            review, "review.completed", {"outcome": outcome.value, "tally": tally(review)}, status_change=True
        )

    async def _design_status(self, design: Mapping[str, Any], old: str, review_id: str, actor: audit.Actor) -> None:
        await audit.record(
            self.db,
            actor,
            "STATUS_CHANGE",
            "DesignAsset",
            design["_id"],
            organization_id=design["organization_id"],
            classification=design["classification"],
            design_id=design["_id"],
            changes={"status": {"old": old, "new": design["status"]}, "review_id": review_id},
        )
        data = {
            "design_id": design["_id"],
            "series_id": design["series_id"],
            "version_number": design["version_number"],
            "status": design["status"],
            "classification": design["classification"],
            "review_id": review_id,
        }
        await announce(
            self.publisher,
            channels(design["_id"], design["organization_id"], design["classification"], review_id=None),
            "design.status",
            data,
        )

    # ------------------------------------------------------------------ reading

    async def list_visible(self, principal: Principal, args: QueryArgs, base_url: str) -> dict[str, Any]:
        """The visible sessions; `is_overdue` is computed against now, so it is a filter of its own."""
        rest = {k: v for k, v in args.items() if k != "is_overdue"}
        extra: dict[str, Any] = {}
        if "is_overdue" in args:
            values = args["is_overdue"]
            raw = values[0].decode() if values and isinstance(values[0], bytes) else (values[0] if values else "")
            if len(values) != 1 or str(raw).lower() not in ("true", "false", "1", "0"):
                raise ValidationFailed(
                    "Invalid value for 'is_overdue'.", field_errors={"is_overdue": ["Must be true or false."]}
                )
            now = utcnow()
            overdue = {"status": {"$in": list(OPEN_STATUSES)}, "due_date": {"$lt": now}}
            extra = overdue if str(raw).lower() in ("true", "1") else {"$nor": [overdue]}
        query = parse_list_query(REVIEW_LIST, rest)
        return await run_list(
            self.db[REVIEWS],
            combine(self.visible_filter(principal), extra),
            query,
            render=self.render_many,
            base_url=base_url,
            args=args,
        )

    async def render_many(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ids = sorted({d["created_by"] for d in docs} | {r for d in docs for r in d["reviewers"]})
        names = {
            u["_id"]: u["username"]
            async for u in self.db[USERS].find({"_id": {"$in": ids}}, projection={"username": 1})
        }
        now = utcnow()
        return [render_review(d, names, now) for d in docs]

    async def render_detail(self, doc: dict[str, Any]) -> dict[str, Any]:
        """One session with each reviewer's current vote, the tally, and its markups counted by status and
        severity (the markups of a visible session are exactly as visible as the session)."""
        names = {
            u["_id"]: u["username"]
            async for u in self.db[USERS].find(
                {"_id": {"$in": [doc["created_by"], *doc["reviewers"]]}}, projection={"username": 1}
            )
        }
        out = render_review(doc, names, utcnow())
        votes = doc.get("votes") or {}
        out["votes"] = [render_vote(uid, names.get(uid), votes.get(str(uid)), doc) for uid in doc["reviewers"]]
        by_status = {s: 0 for s in ("OPEN", "RESOLVED", "DISMISSED")}
        by_severity = {s: 0 for s in ("INFO", "MINOR", "MAJOR", "CRITICAL")}
        open_by_severity = dict(by_severity)
        cursor = await self.db[MARKUPS].aggregate(
            [
                {"$match": {"review_id": doc["_id"]}},
                {"$group": {"_id": {"status": "$status", "severity": "$severity"}, "n": {"$sum": 1}}},
            ]
        )
        async for row in cursor:
            status, severity, n = row["_id"]["status"], row["_id"]["severity"], int(row["n"])
            by_status[status] = by_status.get(status, 0) + n
            by_severity[severity] = by_severity.get(severity, 0) + n
            if status == "OPEN":
                open_by_severity[severity] = open_by_severity.get(severity, 0) + n
        out["markup_counts"] = {
            "total": sum(by_status.values()),
            "by_status": by_status,
            "by_severity": by_severity,
            "open_by_severity": open_by_severity,
        }
        return out

    # ------------------------------------------------------------------ events

    async def _announce(
        self, doc: Mapping[str, Any], event: str, extra: dict[str, Any] | None = None, *, status_change: bool = False
    ) -> None:
        data = {
            "review_id": doc["_id"],
            "design_id": doc["design_id"],
            "organization_id": doc["organization_id"],
            "status": doc["status"],
            "outcome": doc.get("outcome"),
            "classification": doc["classification"],
            **(extra or {}),
        }
        if status_change:
            chans = channels(doc["design_id"], doc["organization_id"], doc["classification"], review_id=doc["_id"])
        else:
            chans = [f"review:{doc['_id']}"]
        await announce(self.publisher, chans, event, data)


def channels(design_id: str, org_id: str, classification: str, *, review_id: str | None) -> list[str]:
    """Where a status change is announced. review:<id> and design:<id> subscriptions are checked against the
    classification when they are made; on the shared org:<id> feed the gateway delivers each event only to
    subscribers cleared for the classification the event carries."""
    out = [f"review:{review_id}"] if review_id else []
    out.append(f"design:{design_id}")
    out.append(f"org:{org_id}")
    return out


def render_vote(
    user_id: int, username: str | None, vote: Mapping[str, Any] | None, review: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    if vote is None:
        return {
            "reviewer": user_id,
            "username": username,
            "decision": None,
            "comments": None,
            "reason": None,
            "file_hash": None,
            "deltas_digest": None,
            "stale": False,
            "signed": None,
            "voted_at": None,
        }
    return {
        "reviewer": user_id,
        "username": username,
        "decision": vote["decision"],
        "comments": vote["comments"],
        "reason": vote.get("reason"),
        "file_hash": vote.get("file_hash"),
        "deltas_digest": vote.get("deltas_digest"),
        "stale": bool(review is not None and is_stale(review, vote)),
        "signed": vote.get("signed", False),
        "voted_at": vote["voted_at"],
    }


def render_gates(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """Which rules this review's version trips and why (models.gates), and whether approval waits for an ADMIN."""
    gates = doc.get("gates")
    if not gates:
        return None
    return {
        "previous_design": gates.get("previous_design_id"),
        "previous_version_number": gates.get("previous_version_number"),
        "file_hash": gates.get("file_hash"),
        "deltas_digest": gates.get("deltas_digest"),
        "evaluated_at": gates.get("evaluated_at"),
        "tripped": list(gates.get("tripped") or []),
        "not_evaluated": list(gates.get("not_evaluated") or []),
        "extra_approvals": int(gates.get("extra_approvals") or 0),
        "override_required": bool(gates.get("override_required")),
        "override": gates.get("override"),
        "awaiting_override": awaiting_override(doc),
    }


def render_review(doc: Mapping[str, Any], names: Mapping[int, str], now: Any) -> dict[str, Any]:
    return {
        "id": doc["_id"],
        "design_asset": doc["design_id"],
        "organization": doc["organization_id"],
        "series": doc["series_id"],
        "design_version_number": doc["design_version_number"],
        "classification": doc["classification"],
        "reviewers": list(doc["reviewers"]),
        "reviewer_details": [{"id": r, "username": names.get(r)} for r in doc["reviewers"]],
        "status": doc["status"],
        "outcome": doc.get("outcome"),
        "decision_rule": doc["decision_rule"],
        "threshold": doc.get("threshold"),
        "veto": doc.get("veto", True),
        "required_approvals": required_approvals(doc),
        "tally": tally(doc),
        "due_date": doc.get("due_date"),
        "is_overdue": is_overdue(doc, now),
        "notes": doc.get("notes", ""),
        "created_by": doc["created_by"],
        "created_by_username": names.get(doc["created_by"]),
        "created_at": doc["created_at"],
        "updated_at": doc["updated_at"],
        "started_at": doc.get("started_at"),
        "completed_at": doc.get("completed_at"),
        "cancelled_at": doc.get("cancelled_at"),
        "cancelled_by": doc.get("cancelled_by"),
        "cancel_reason": doc.get("cancel_reason"),
        "gates": render_gates(doc),
        "version": doc["version"],
    }
