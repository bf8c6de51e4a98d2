"""Reference counts on stored content: bytes shared by designs and uploads are deleted only when nothing holds them."""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid
from datetime import timedelta

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from models.collections import CONTENT_REFS, DESIGNS, META, UPLOADS
from models.database import Db, utcnow
from models.storage import Storage, StorageWriter, StoredFile

log = logging.getLogger("enginel.content")

# How long a writer waits for a deletion of the same digest to finish before treating the deleter as dead.
DELETE_STALE = timedelta(minutes=5)
WAIT_STEP = 0.02
_MIGRATED = "content_refs_v1"


class ContentStore:
    """The storage plus one counter per digest (``content_refs``): every design (its file and its viewer GLB)
    and every received upload holds one reference.

    Identical bytes are stored once, so a design being deleted and an upload of the same bytes being committed
    meet on one file. The rules that keep it: a writer takes its reference after hashing and *before* it
    installs the content (StorageWriter.commit's hook); a holder hands its reference on (upload -> design)
    without dropping it; the last release claims the digest (``deleting``) before removing the file, and a
    writer that arrives during that removal waits for it, then installs its own copy. So content that anything
    holds is never deleted, and no deleted content is left referenced.
    """

    def __init__(self, db: Db, storage: Storage) -> None:
        self.db = db
        self.storage = storage

    async def writer(self, max_size: int | None = None) -> StorageWriter:
        return await self.storage.writer(max_size=max_size)

    async def commit(self, writer: StorageWriter) -> StoredFile:
        """Commit a writer's content holding one new reference to it (the caller owns it from here)."""
        held: list[str] = []

        async def hold(stored: StoredFile) -> None:
            await self.acquire(stored.sha256)
            held.append(stored.sha256)

        try:
            return await writer.commit(before_install=hold)
        except BaseException:
            for sha in held:
                await asyncio.shield(self.release(sha))
            raise

    async def acquire(self, sha: str) -> None:
        """One more reference; returns once no deletion of this digest is under way (the caller then installs
        or reads it)."""
        refs = self.db[CONTENT_REFS]
        increment = {"$inc": {"refs": 1}}
        try:
            doc = await refs.find_one_and_update(
                {"_id": sha}, increment, upsert=True, return_document=ReturnDocument.AFTER
            )
        except DuplicateKeyError:  # two first references raced on the upsert; the other one created the document
            doc = await refs.find_one_and_update(
                {"_id": sha}, increment, upsert=True, return_document=ReturnDocument.AFTER
            )
        if doc is None:
            # SecantusDB can answer one of several racing upserts without the document (the increment is applied,
            # as MongoDB would); read it to see whether a deletion is under way.
            doc = await self.db[CONTENT_REFS].find_one({"_id": sha}, {"deleting": 1}) or {}
        deleting = doc.get("deleting")
        while deleting is not None:
            # Our reference stops the deleter from dropping the record; it clears the flag once the file is gone.
            if utcnow() - deleting["at"] > DELETE_STALE:
                await self.db[CONTENT_REFS].update_one(
                    {"_id": sha, "deleting.token": deleting["token"]}, {"$unset": {"deleting": ""}}
                )
                log.warning("content %s: took over a deletion that did not finish", sha)
                return
            await asyncio.sleep(WAIT_STEP)
            current = await self.db[CONTENT_REFS].find_one({"_id": sha}, {"deleting": 1})
            deleting = None if current is None else current.get("deleting")

    async def release(self, sha: str) -> bool:
        """Drop one reference; the last one deletes the content. True if it was deleted."""
        doc = await self.db[CONTENT_REFS].find_one_and_update(
            {"_id": sha, "refs": {"$gt": 0}}, {"$inc": {"refs": -1}}, return_document=ReturnDocument.AFTER
        )
        if doc is None:
            log.warning("content %s: released without a reference", sha)
            return False
        if doc["refs"] > 0:
            return False
        token = uuid.uuid4().hex
        claimed = await self.db[CONTENT_REFS].find_one_and_update(
            {"_id": sha, "refs": 0, "deleting": {"$exists": False}},
            {"$set": {"deleting": {"token": token, "at": utcnow()}}},
        )
        if claimed is None:
            return False  # taken again meanwhile, or another release is deleting it
        try:
            await self.storage.delete(sha)
        finally:
            dropped = await self.db[CONTENT_REFS].delete_one({"_id": sha, "refs": 0, "deleting.token": token})
            if not dropped.deleted_count:
                # A writer took a reference while the file went: it waits for this flag, then installs its copy.
                await self.db[CONTENT_REFS].update_one(
                    {"_id": sha, "deleting.token": token}, {"$unset": {"deleting": ""}}
                )
        return True

    async def count_existing(self) -> None:
        """Once per database: count the references of content stored before reference counts existed."""
        if await self.db[META].find_one({"_id": _MIGRATED}):
            return
        counts: collections.Counter[str] = collections.Counter()
        async for design in self.db[DESIGNS].find({}, {"content_sha256": 1, "viewable.sha256": 1}):
            for sha in (design.get("content_sha256"), (design.get("viewable") or {}).get("sha256")):
                if sha:
                    counts[sha] += 1
        async for upload in self.db[UPLOADS].find({"status": "RECEIVED", "sha256": {"$ne": None}}, {"sha256": 1}):
            counts[upload["sha256"]] += 1
        for sha, refs in counts.items():
            await self.db[CONTENT_REFS].update_one({"_id": sha}, {"$max": {"refs": refs}}, upsert=True)
        try:
            await self.db[META].insert_one({"_id": _MIGRATED, "at": utcnow(), "digests": len(counts)})
        except DuplicateKeyError:
            pass  # another process counted at the same time; $max made both passes agree
