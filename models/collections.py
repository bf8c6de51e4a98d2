"""The name of every MongoDB collection (and id sequence) Enginel uses; modules import them from here."""

from __future__ import annotations

# Identity and tenancy
USERS = "users"
SESSIONS = "auth_sessions"
API_KEYS = "api_keys"
ORGANIZATIONS = "organizations"
MEMBERSHIPS = "memberships"
INVITATIONS = "invitations"  # pending invitations to join an organization
LOGIN_FAILURES = "login_failures"  # failed sign-ins per (account, client address), for the lockout

# Designs and what hangs off them
SERIES = "series"
DESIGNS = "designs"
UPLOADS = "uploads"
CONTENT_REFS = "content_refs"  # one document per stored SHA-256: how many designs and uploads hold it
UPLOAD_SLOTS = "upload_slots"  # one document per user: the uploads streaming now (the concurrent-upload cap)
STORAGE_USAGE = "storage_usage"  # one document per organization: bytes its designs and reserved uploads count
MATERIALS = "materials"
JOBS = "analysis_jobs"
BOM_NODES = "bom_nodes"
REVIEWS = "reviews"
MARKUPS = "markups"

# Revisions: compares, carried markups, review gates and the review room's durable joins
REVISION_DIFFS = "revision_diffs"  # one geometric diff (and its GLB) per ordered pair of versions
MARKUP_CARRIES = "markup_carries"  # per new version: the previous version's open markups, re-anchored
REVIEW_GATE_RULES = "review_gate_rules"  # an organization's rules on property deltas
REVIEW_JOINS = "review_joins"  # the first time each user joined each review room

# The platform
AUDIT_LOG = "audit_log"
COUNTERS = "counters"  # one document per id sequence (models.database.next_id)
META = "meta"  # the deployment's identity document and its file store's record
PROCESSES = "processes"  # the live server processes, each with a heartbeat (models/cluster.py)
CAD_FILES = "cadfiles"  # GridFS bucket prefix: <bucket>.files, .chunks, .uploads

# Integer id sequences drawn by next_id(); a collection's own name where its documents use them.
MARKUP_REPLIES = "markup_replies"
