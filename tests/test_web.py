"""Serving the browser app: index and hashed assets from web_dir, the Content-Security-Policy, a clear 503 unbuilt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Api

INDEX = b'<!doctype html><html><head><script type="module" src="assets/app-ABC123.js"></script></head></html>'


@pytest.fixture
def web_dir(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_bytes(INDEX)
    (root / "assets" / "app-ABC123.js").write_text("export const answer = 42;\n")
    (tmp_path / "secret.txt").write_text("outside the web directory")
    return root


@pytest.fixture
def settings_overrides(web_dir: Path) -> dict[str, Any]:
    return {"web_dir": web_dir}


@pytest.mark.gen_test
async def test_the_page_is_served_with_a_strict_policy(api: Api, base_url: str) -> None:
    resp = await api.get("/")
    assert resp.status == 200 and resp.body == INDEX
    assert resp.headers["Content-Type"] == "text/html; charset=UTF-8"
    assert resp.headers["Cache-Control"] == "no-cache"
    host = base_url.split("://")[1]
    policy = dict(d.split(" ", 1) for d in resp.headers["Content-Security-Policy"].split("; "))
    assert policy == {
        "default-src": "'none'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": "'self' data: blob:",
        "font-src": "'self'",
        "connect-src": f"'self' ws://{host} wss://{host}",
        "worker-src": "'self' blob:",
        "manifest-src": "'self'",
        "base-uri": "'none'",
        "form-action": "'self'",
        "frame-ancestors": "'none'",
    }
    assert resp.headers["X-Frame-Options"] == "DENY" and resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    # A forged Host never reaches the policy's socket sources.
    forged = await api.get("/", headers={"Host": "evil.example;script-src"})
    assert forged.status == 200, forged.status
    assert "connect-src 'self';" in forged.headers["Content-Security-Policy"]
    assert "evil" not in forged.headers["Content-Security-Policy"]


@pytest.mark.gen_test
async def test_assets_are_cached_for_good_and_nothing_else_is_served(api: Api) -> None:
    resp = await api.get("/assets/app-ABC123.js")
    assert resp.status == 200 and resp.body == b"export const answer = 42;\n"
    assert resp.headers["Content-Type"].startswith(("application/javascript", "text/javascript"))
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    missing = await api.get("/assets/app-OTHER.js")
    assert missing.status == 404 and b"<html" not in missing.body.lower()
    for escape in ("/assets/../secret.txt", "/assets/%2e%2e/secret.txt", "/assets/..%2fsecret.txt"):
        assert (await api.get(escape)).status in (403, 404), escape
    # Other paths stay the API's: JSON errors, never the page.
    unknown = await api.get("/designs/123")
    assert unknown.status == 404 and unknown.json["code"] == "RESOURCE_NOT_FOUND"


@pytest.mark.gen_test
async def test_an_unbuilt_app_says_how_to_build_it(api: Api, web_dir: Path) -> None:
    (web_dir / "index.html").unlink()
    resp = await api.get("/")
    assert resp.status == 503
    assert resp.headers["Content-Type"] == "text/plain; charset=UTF-8"
    assert b"make web" in resp.body and b"npm" in resp.body
