"""A review's markups as a BCF 3.0 archive: one topic per markup with its thread, camera and BOM components."""

from __future__ import annotations

import math
import tempfile
import uuid
import zipfile
from collections.abc import Mapping
from datetime import datetime
from typing import IO, Any
from xml.etree import ElementTree as ET

from models import audit
from models.collections import BOM_NODES, MARKUPS, USERS
from models.database import Db
from models.designs import Designs
from models.errors import LimitExceeded
from models.policy import Principal
from models.reviews import Reviews

MAX_TOPICS = 5000
SPOOL_BYTES = 8 * 1024 * 1024  # archives above this go to a temporary file while they are built
BCF_VERSION = "3.0"
STATUS = {"OPEN": "Open", "RESOLVED": "Resolved", "DISMISSED": "Closed"}
PRIORITY = {"INFO": "Info", "MINOR": "Minor", "MAJOR": "Major", "CRITICAL": "Critical"}
TOPIC_TYPE = "Issue"
DEFAULT_FOV = 60.0  # degrees, when a markup's camera is perspective without a recorded field of view
# The page does not record its viewport; BCF requires an aspect ratio, and 16:9 is the usual screen.
ASPECT_RATIO = 16 / 9
_IFC_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_$"


def ifc_guid(value: uuid.UUID) -> str:
    """The 22-character IFC form of a UUID (BCF's IfcGuid attribute)."""
    number = value.int
    chars = []
    for _ in range(22):
        number, digit = divmod(number, 64)
        chars.append(_IFC_CHARS[digit])
    return "".join(reversed(chars))


def _guid(kind: str, ident: Any) -> str:
    # Stable across exports: re-importing an export updates the same topics instead of duplicating them.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"enginel:{kind}:{ident}"))


def _date(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _xml(root: ET.Element) -> bytes:
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")


def _vector(parent: ET.Element, tag: str, x: float, y: float, z: float) -> None:
    element = _sub(parent, tag)
    for name, value in (("X", x), ("Y", y), ("Z", z)):
        _sub(element, name, repr(float(value)))


def _title(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 120 else line[:119] + "…"


def viewpoint(markup: Mapping[str, Any], node: Mapping[str, Any] | None, design_id: str) -> bytes:
    """The markup's viewpoint: its camera (millimetres, Z up, become BCF's metres) and the BOM row it is on."""
    root = ET.Element("VisualizationInfo", Guid=_guid("viewpoint", markup["_id"]))
    components = _sub(root, "Components")
    if node is not None:
        selection = _sub(components, "Selection")
        component = _sub(selection, "Component", IfcGuid=ifc_guid(uuid.UUID(_guid("bom", node["_id"]))))
        _sub(component, "OriginatingSystem", "Enginel")
        _sub(component, "AuthoringToolId", f"{design_id}/bom/{node['_id']}/{node['path']}")
    _sub(components, "Visibility", DefaultVisibility="true")
    camera = markup.get("camera")
    if camera:
        eye, target, up = camera["position"], camera["target"], camera.get("up") or {"x": 0.0, "y": 0.0, "z": 1.0}
        direction = [target[a] - eye[a] for a in ("x", "y", "z")]
        length = math.hypot(*direction) or 1.0
        ortho = camera.get("orthographic_scale")
        element = _sub(root, "OrthogonalCamera" if ortho else "PerspectiveCamera")
        _vector(element, "CameraViewPoint", eye["x"] / 1000, eye["y"] / 1000, eye["z"] / 1000)
        _vector(element, "CameraDirection", *(d / length for d in direction))
        _vector(element, "CameraUpVector", up["x"], up["y"], up["z"])
        if ortho:
            _sub(element, "ViewToWorldScale", repr(float(ortho) / 1000))
        else:
            _sub(element, "FieldOfView", repr(float(camera.get("fov") or DEFAULT_FOV)))
        _sub(element, "AspectRatio", repr(ASPECT_RATIO))
    return _xml(root)


def topic(
    markup: Mapping[str, Any],
    names: Mapping[int, str],
    base_url: str,
    has_viewpoint: bool,
    design: Mapping[str, Any],
) -> bytes:
    """markup.bcf: the topic (title, severity, status, author, text) and its comments (the replies, then how it
    was resolved or dismissed), each comment pointing at the topic's viewpoint."""
    author = names.get(markup["author_id"]) or f"user-{markup['author_id']}"
    root = ET.Element("Markup")
    header = _sub(root, "Header")
    files = _sub(header, "Files")
    file = _sub(files, "File", IsExternal="true")
    _sub(file, "Filename", design["filename"])
    _sub(file, "Date", _date(design["created_at"]))
    _sub(file, "Reference", f"{base_url}/api/designs/{design['_id']}/download/")
    element = _sub(
        root,
        "Topic",
        Guid=_guid("markup", markup["_id"]),
        ServerAssignedId=str(markup["_id"]),
        TopicType=TOPIC_TYPE,
        TopicStatus=STATUS.get(markup["status"], "Open"),
    )
    links = _sub(element, "ReferenceLinks")
    _sub(links, "ReferenceLink", f"{base_url}/api/markups/{markup['_id']}/")
    _sub(element, "Title", _title(markup["annotation_text"]) or f"Markup {markup['_id']}")
    _sub(element, "Priority", PRIORITY.get(markup["severity"], markup["severity"].title()))
    _sub(element, "CreationDate", _date(markup["created_at"]))
    _sub(element, "CreationAuthor", author)
    if markup.get("updated_at") and markup["updated_at"] != markup["created_at"]:
        _sub(element, "ModifiedDate", _date(markup["updated_at"]))
    _sub(element, "Description", markup["annotation_text"])
    viewpoint_guid = _guid("viewpoint", markup["_id"])
    comments = []
    for reply in markup.get("replies") or []:
        comments.append((_guid("reply", reply["id"]), reply["created_at"], reply["author_id"], reply["text"]))
    if markup["status"] == "RESOLVED" and markup.get("resolved_at"):
        text = markup.get("resolution_notes") or "Resolved."
        comments.append((_guid("resolution", markup["_id"]), markup["resolved_at"], markup.get("resolved_by"), text))
    if markup["status"] == "DISMISSED" and markup.get("dismissed_at"):
        text = markup.get("dismiss_reason") or "Dismissed."
        comments.append((_guid("dismissal", markup["_id"]), markup["dismissed_at"], markup.get("dismissed_by"), text))
    if comments:
        holder = _sub(element, "Comments")
        for guid, when, who, text in comments:
            comment = _sub(holder, "Comment", Guid=guid)
            _sub(comment, "Date", _date(when))
            _sub(comment, "Author", names.get(who) or f"user-{who}")
            _sub(comment, "Comment", text)
            if has_viewpoint:
                _sub(comment, "Viewpoint", Guid=viewpoint_guid)
    if has_viewpoint:
        holder = _sub(element, "Viewpoints")
        point = _sub(holder, "ViewPoint", Guid=viewpoint_guid)
        _sub(point, "Viewpoint", "viewpoint.bcfv")
    return _xml(root)


def extensions(users: list[str]) -> bytes:
    root = ET.Element("Extensions")
    types = _sub(root, "TopicTypes")
    _sub(types, "TopicType", TOPIC_TYPE)
    statuses = _sub(root, "TopicStatuses")
    for value in dict.fromkeys(STATUS.values()):
        _sub(statuses, "TopicStatus", value)
    priorities = _sub(root, "Priorities")
    for value in PRIORITY.values():
        _sub(priorities, "Priority", value)
    if users:
        holder = _sub(root, "Users")
        for name in users:
            _sub(holder, "User", name)
    return _xml(root)


class BcfExport:
    """GET /api/reviews/{id}/bcf/: the same policy as reading the review and its design, audited as a download."""

    def __init__(self, db: Db, reviews: Reviews, designs: Designs) -> None:
        self.db = db
        self.reviews = reviews
        self.designs = designs

    async def export(
        self, principal: Principal, review_id: str, actor: audit.Actor, base_url: str
    ) -> tuple[str, IO[bytes], int]:
        """(file name, the archive positioned at its start, its size); the caller closes the file."""
        review = await self.reviews.get_visible(principal, review_id)
        design = await self.designs.get_visible(principal, review["design_id"])
        count = await self.db[MARKUPS].count_documents({"review_id": review["_id"]})
        if count > MAX_TOPICS:
            raise LimitExceeded(f"A BCF export holds at most {MAX_TOPICS} markups; this review has {count}.")
        markups = [
            m async for m in self.db[MARKUPS].find({"review_id": review["_id"]}, sort=[("created_at", 1), ("_id", 1)])
        ]
        people = {m["author_id"] for m in markups}
        for m in markups:
            people.update(r["author_id"] for r in m.get("replies") or [])
            people.update(x for x in (m.get("resolved_by"), m.get("dismissed_by")) if x is not None)
        names = {
            u["_id"]: u["username"]
            async for u in self.db[USERS].find({"_id": {"$in": sorted(people)}}, {"username": 1})
        }
        node_ids = sorted({m["bom_node"] for m in markups if m.get("bom_node")})
        nodes = {
            n["_id"]: n
            async for n in self.db[BOM_NODES].find({"_id": {"$in": node_ids}, "design_id": design["_id"]}, {"path": 1})
        }
        archive: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 - returned open
        try:
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bcf:
                bcf.writestr("bcf.version", _xml(ET.Element("Version", VersionId=BCF_VERSION)))
                project = ET.Element("ProjectInfo")
                holder = _sub(project, "Project", ProjectId=_guid("series", design["series_id"]))
                _sub(holder, "Name", f"{design['part_number']} v{design['version_number']}")
                bcf.writestr("project.bcfp", _xml(project))
                bcf.writestr("extensions.xml", extensions(sorted(set(names.values()))))
                for markup in markups:
                    folder = _guid("markup", markup["_id"])
                    has_viewpoint = True  # every topic gets one: its components even without a camera
                    bcf.writestr(f"{folder}/markup.bcf", topic(markup, names, base_url, has_viewpoint, design))
                    node = nodes.get(markup.get("bom_node"))
                    bcf.writestr(f"{folder}/viewpoint.bcfv", viewpoint(markup, node, design["_id"]))
            size = archive.tell()
            archive.seek(0)
        except BaseException:
            archive.close()
            raise
        await audit.record(
            self.db,
            actor,
            "DOWNLOAD",
            "DesignAsset",
            design["_id"],
            organization_id=design["organization_id"],
            classification=design["classification"],
            design_id=design["_id"],
            changes={"artifact": "bcf", "review_id": review["_id"], "topics": len(markups), "bytes": size},
        )
        name = f"{design['part_number']}-v{design['version_number']}-review-{review['_id'][:8]}.bcf"
        return name, archive, size
