"""Organization storage quotas: one atomic counter per organization of what its designs and reserved uploads use."""

from __future__ import annotations

from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from models.collections import DESIGNS, ORGANIZATIONS, STORAGE_USAGE, UPLOADS
from models.database import Db, utcnow
from models.errors import NotFound, PayloadTooLarge

GIB = 1024**3


class StorageQuotaExceeded(PayloadTooLarge):
    code = "STORAGE_QUOTA_EXCEEDED"
    title = "Storage quota exceeded"


class StorageQuota:
    """``max_storage_gb`` of each organization, enforced when bytes are promised rather than after they arrive.

    The counter holds the sizes of the organization's designs plus the uploads reserved and not yet turned into
    a design or released. A reservation is one conditional increment (``bytes <= limit - size``), so parallel
    uploads cannot overshoot the limit together. Increases are counted before the document that justifies them
    is written, decreases after it is removed: a process that dies in between leaves the counter too high by
    that one file, never too low.
    """

    def __init__(self, db: Db) -> None:
        self.db = db

    async def reserve(self, org_id: str, size: int) -> None:
        """Count ``size`` more bytes for the organization, or raise StorageQuotaExceeded (413) and count nothing."""
        org = await self.db[ORGANIZATIONS].find_one({"_id": org_id}, {"max_storage_gb": 1})
        if org is None:
            raise NotFound("Organization not found.")
        limit = int(org.get("max_storage_gb") or 0) * GIB
        await self._ensure(org_id)
        counted = await self.db[STORAGE_USAGE].find_one_and_update(
            {"_id": org_id, "bytes": {"$lte": limit - size}},
            {"$inc": {"bytes": size}, "$set": {"updated_at": utcnow()}},
            return_document=ReturnDocument.AFTER,
        )
        if counted is None:
            used = await self.used(org_id)
            raise StorageQuotaExceeded(
                f"This upload of {size} bytes would take the organization past its storage quota of "
                f"{org.get('max_storage_gb')} GB ({used} bytes are used or reserved by uploads in progress).",
                extra={"quota_bytes": limit, "used_bytes": used, "requested_bytes": size},
            )

    async def release(self, org_id: str, size: int) -> None:
        if size > 0:
            await self.db[STORAGE_USAGE].update_one(
                {"_id": org_id}, {"$inc": {"bytes": -size}, "$set": {"updated_at": utcnow()}}
            )

    async def used(self, org_id: str) -> int:
        doc = await self.db[STORAGE_USAGE].find_one({"_id": org_id}, {"bytes": 1})
        return int(doc["bytes"]) if doc else await self._count(org_id)

    async def _ensure(self, org_id: str) -> None:
        # The first reservation of an organization counts what it already holds (designs from before quotas).
        if await self.db[STORAGE_USAGE].find_one({"_id": org_id}, {"_id": 1}):
            return
        try:
            await self.db[STORAGE_USAGE].update_one(
                {"_id": org_id},
                {"$setOnInsert": {"bytes": await self._count(org_id), "updated_at": utcnow()}},
                upsert=True,
            )
        except DuplicateKeyError:
            pass  # counted by a concurrent first reservation

    async def _count(self, org_id: str) -> int:
        total = 0
        pipelines: list[tuple[str, list[dict[str, Any]]]] = [
            (
                DESIGNS,
                [
                    {"$match": {"organization_id": org_id}},
                    {"$group": {"_id": None, "n": {"$sum": "$file_size_bytes"}}},
                ],
            ),
            (
                UPLOADS,
                [
                    {"$match": {"organization_id": org_id, "reserved_bytes": {"$gt": 0}}},
                    {"$group": {"_id": None, "n": {"$sum": "$reserved_bytes"}}},
                ],
            ),
        ]
        for collection, pipeline in pipelines:
            async for row in await self.db[collection].aggregate(pipeline):
                total += int(row["n"])
        return total
