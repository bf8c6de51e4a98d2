"""The browser app end to end: two headless Chromium browsers against a live server with analysis workers."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import cad_fixtures, corpus
from tests.cad_fixtures import CadFiles
from tests.helpers import REPO, ROOT_PASSWORD, multipart, shared_servers

playwright_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need `pip install playwright`")
Image = pytest.importorskip("PIL.Image", reason="the browser tests need Pillow to read screenshots")

CHROMIUM = os.environ.get("ENGINEL_CHROMIUM", "/usr/bin/chromium")
# Debian's Chromium, headless; SwiftShader gives WebGL without a GPU (--disable-gpu alone would turn it off).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]
ASSEMBLY = "assembly.step"  # the generated assembly (tests/cad_fixtures.py)
PASSWORD = "browser-test-password"
BACKGROUND = (0xE8, 0xEC, 0xF1)  # the viewer's clear colour
SELECTION = (0x08, 0x91, 0xB2)  # the highlight colour of selected parts
DOCS = REPO / "docs"
# A STEP file that passes the upload's format check and holds nothing OpenCascade can turn into a shape.
DAMAGED_STEP = b"""ISO-10303-21;
HEADER;
FILE_DESCRIPTION(('damaged'),'2;1');
FILE_NAME('damaged.step','2026-01-01T00:00:00',(''),(''),'','','');
FILE_SCHEMA(('AUTOMOTIVE_DESIGN'));
ENDSEC;
DATA;
#1=CARTESIAN_POINT('',(0.,0.,0.));
#2=((((;
ENDSEC;
END-ISO-10303-21;
"""
LONG = 60_000  # ms: analysis, model loading and first WebGL frames on a shared 2-core machine

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}: run `make test`")


@dataclass
class Server:
    base: str
    root: str  # a platform admin's token

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        req.add_header("Authorization", f"Token {token or self.root}")
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else None

    def token(self, username: str, password: str = PASSWORD) -> str:
        req = urllib.request.Request(
            self.base + "/api/auth/login/",
            data=json.dumps({"username": username, "password": password}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return str(json.loads(resp.read())["access_token"])


def build_web() -> None:
    """The bundle `make run` serves; built here when a test run starts without it (needs Node.js and npm)."""
    if shutil.which("npm") is None:
        pytest.skip("the web app needs Node.js and npm to build: apt-get install nodejs npm")
    result = subprocess.run(["make", "-s", "web"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


@contextlib.contextmanager
def live_server(mongo_uri: str, redis_url: str, data_dir: Path, **settings: str) -> Iterator[Server]:
    """server.py with two analysis workers, Redis and a platform admin; rate limits out of the tests' way."""
    build_web()
    with shared_servers(
        mongo_uri,
        redis_url,
        data_dir,
        count=1,
        workers="2",
        job_poll_interval="0.1",
        rate_limit_per_minute="100000",
        rate_limit_per_hour="1000000",
        uploads_per_hour="1000",
        **settings,
    ) as ports:
        base = f"http://127.0.0.1:{ports[0]}"
        yield Server(base, Server(base, "").token("root", ROOT_PASSWORD))


@pytest.fixture(scope="module")
def server(mongo_uri: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with live_server(mongo_uri, redis_url, tmp_path_factory.mktemp("server")) as running:
        yield running


@pytest.fixture(scope="module")
def team(server: Server) -> dict[str, Any]:
    return make_team(server)


def make_team(server: Server) -> dict[str, Any]:
    """A US organization with alice and bob (SECRET, US persons) and carol (no clearance, not a US person)."""
    org = server.call(
        "POST", "/api/organizations/", {"name": "Aero Structures", "slug": "aero", "is_us_organization": True}
    )
    people = {
        "alice": {"security_clearance_level": "SECRET", "is_us_person": True, "role": "MEMBER", "first_name": "Alice"},
        "bob": {"security_clearance_level": "SECRET", "is_us_person": True, "role": "MEMBER", "first_name": "Bob"},
        "carol": {"security_clearance_level": "UNCLASSIFIED", "is_us_person": False, "role": "MEMBER"},
    }
    users = {
        name: server.call(
            "POST",
            "/api/users/",
            {
                "username": name,
                "password": PASSWORD,
                "email": f"{name}@aero.example",
                "organization": org["id"],
                **attrs,
            },
        )
        for name, attrs in people.items()
    }
    return {"org": org, "users": users}


@pytest.fixture(scope="module")
def browsers() -> Iterator[tuple[Any, Any]]:
    """Two separate Chromium processes: two people at two machines, not two tabs of one."""
    with playwright_api.sync_playwright() as p:
        first = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        second = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield first, second
        finally:
            first.close()
            second.close()


class Problems:
    """Console errors and CSP violations of a page: a working page has none."""

    def __init__(self, page: Any) -> None:
        self.messages: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.messages.append(m.text))
        page.on("pageerror", lambda e: self.messages.append(f"uncaught: {e}"))

    def unexpected(self) -> list[str]:
        # 403/404/409 answers the page handles are logged by Chromium as failed resources; those are expected.
        return [m for m in self.messages if "Failed to load resource" not in m]


def sign_in(page: Any, base: str, username: str, route: str = "") -> None:
    page.goto(base + "/" + route)
    page.get_by_label("Username or email").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.locator("#topbar .connection.online").wait_for(timeout=LONG)


def canvas_pixels(page: Any) -> Any:
    png = page.locator("#viewer-host canvas").screenshot()
    return Image.open(io.BytesIO(png)).convert("RGB")


def share_near(image: Any, colour: tuple[int, int, int], tolerance: int = 24) -> float:
    pixels = list(image.get_flattened_data() if hasattr(image, "get_flattened_data") else image.getdata())
    near = sum(1 for p in pixels if all(abs(a - b) <= tolerance for a, b in zip(p, colour, strict=True)))
    return near / len(pixels)


def wait_model(page: Any) -> None:
    page.locator("#viewer-host[data-loaded=true]").wait_for(timeout=LONG)
    page.wait_for_timeout(300)  # the first frames


def save_screenshot(page: Any, name: str, tmp: Path) -> Path:
    """Written for every run under the test's tmp dir; into docs/ with ENGINEL_UPDATE_SCREENSHOTS=1 (palette
    PNGs, so the committed images stay small)."""
    target = (DOCS if os.environ.get("ENGINEL_UPDATE_SCREENSHOTS") == "1" else tmp) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(page.screenshot(full_page=False))).convert("RGB")
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(target, optimize=True)
    return target


def upload_through_dialog(page: Any, path: Path, part_number: str, classification: str) -> None:
    page.locator("#upload-open").click()
    dialog = page.locator("#upload-dialog")
    dialog.locator("#upload-file").set_input_files(str(path))
    if dialog.locator("#upload-series").input_value() != "__new":
        dialog.locator("#upload-series").select_option("__new")
    dialog.locator("#upload-part-number").fill(part_number)
    dialog.locator("#upload-part-name").fill(path.stem.replace("-", " ").title())
    dialog.locator("#upload-classification").select_option(classification)
    dialog.get_by_role("button", name="Upload").click()
    page.locator("#transfer-percent", has_text="100 %").wait_for(timeout=LONG)
    page.locator("#analysis-message", has_text="Analysis complete").wait_for(timeout=LONG)
    assert page.locator("#analysis-percent").inner_text() == "100 %"
    assert page.locator("#analysis-bar").evaluate("bar => bar.value") == 100


def post_file(server: Server, token: str, series: str, filename: str, data: bytes) -> dict[str, Any]:
    """The one-request upload (multipart), as a script would do it; returns the created design."""
    body, content_type = multipart({"series": series, "classification": "UNCLASSIFIED"}, filename, data)
    req = urllib.request.Request(server.base + "/api/designs/", data=body, method="POST")
    req.add_header("Content-Type", content_type)
    req.add_header("Authorization", f"Token {token}")
    with urllib.request.urlopen(req, timeout=60) as resp:
        return dict(json.loads(resp.read()))


def on_model(page: Any, at: tuple[float, float]) -> tuple[float, float]:
    """The point nearest `at` (fractions of the canvas) where the model is drawn all around, so that a click there
    lands on a part whatever the camera shows."""
    image = canvas_pixels(page)
    width, height = image.size
    pixels = image.load()
    target = (at[0] * width, at[1] * height)

    def background(x: int, y: int) -> bool:
        return all(abs(a - b) <= 3 for a, b in zip(pixels[x, y], BACKGROUND, strict=True))

    drawn = [
        (x, y)
        for y in range(6, height - 6, 4)
        for x in range(6, width - 6, 4)
        if not any(background(x + dx, y + dy) for dx in (-6, 0, 6) for dy in (-6, 0, 6))
    ]
    assert drawn, "nothing of the model is on the canvas"
    x, y = min(drawn, key=lambda p: (p[0] - target[0]) ** 2 + (p[1] - target[1]) ** 2)
    return x / width, y / height


def compose_markup(page: Any, text: str, severity: str, at: tuple[float, float]) -> None:
    """Markup mode, a click on the model near a fraction of the canvas, and the composer filled in."""
    fx, fy = on_model(page, at)
    page.locator("#markup-mode").click()
    box = page.locator("#viewer-host canvas").bounding_box()
    page.mouse.click(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
    composer = page.locator("#markup-composer")
    composer.locator("#markup-text").fill(text)
    composer.locator("#markup-severity").select_option(severity)


def place_markup(page: Any, text: str, severity: str, at: tuple[float, float]) -> None:
    compose_markup(page, text, severity, at)
    page.locator("#markup-save").click()
    page.locator(".markup-item", has_text=text).wait_for(timeout=10_000)


def test_review_room_end_to_end(
    server: Server, team: dict[str, Any], browsers: tuple[Any, Any], cad_files: CadFiles, tmp_path: Path
) -> None:
    """Upload to render, BOM to 3D, a review with markups and presence, offline recovery, vote, jobs, refusal."""
    first, second = browsers
    fixture = cad_files.path(ASSEMBLY)
    a_context = first.new_context(viewport={"width": 1280, "height": 720})
    b_context = second.new_context(viewport={"width": 390, "height": 844}, is_mobile=False)
    a, b = a_context.new_page(), b_context.new_page()
    a_problems, b_problems = Problems(a), Problems(b)

    # The page and its policy: no inline script, nothing from another origin.
    with urllib.request.urlopen(server.base + "/", timeout=10) as resp:
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe" not in csp and "default-src 'none'" in csp

    # A signs in, uploads the fixture assembly, follows transfer and analysis to 100 %, and sees it render.
    sign_in(a, server.base, "alice")
    upload_through_dialog(a, fixture, "BRK-1001", "CONFIDENTIAL")
    a.locator(".open-design").click()
    wait_model(a)
    assert a.locator("#banner-top").inner_text() == "CONFIDENTIAL"
    image = canvas_pixels(a)
    assert 1 - share_near(image, BACKGROUND, 3) > 0.05, "the model covers part of the canvas"
    design_id = a.url.split("#/designs/")[1].split("/")[0]

    # A BOM row lights every instance it stands for in the whole model (and frames them). The assembly's nut is
    # in two rows: once per bolt assembly (4 in all, under two bracket assemblies) and twice on the rod.
    a.get_by_role("tab", name="BOM").click()
    nut_rows = [(path, count) for path, part, count in cad_fixtures.ASSEMBLY_BOM.occurrences() if part.name == "nut"]
    assert sorted(count for _, count in nut_rows) == [2, 4] and a.locator('.bom-row[data-name="nut"]').count() == 2
    for path, count in nut_rows:
        row = a.locator(f'.bom-row[data-path="{path}"]')
        row.click()
        assert a.locator("#selection-status").inner_text() == f"nut — {count} instances"
        assert row.get_attribute("aria-selected") == "true"
        a.wait_for_timeout(500)  # the camera moves to frame them
        lit = share_near(canvas_pixels(a), SELECTION, 40)
        assert lit > 0.001, f"the nuts are drawn in the selection colour ({lit:.4f} of the canvas)"
    # Cleared, the same view has none of the selection colour left.
    a.get_by_role("button", name="Clear selection").click()
    assert a.locator(".bom-row.selected").count() == 0
    a.wait_for_timeout(300)
    assert share_near(canvas_pixels(a), SELECTION, 40) < lit / 10
    # And the reverse: clicking a part in the view (the rod between its nuts, framed now) selects its row.
    canvas = a.locator("#viewer-host canvas").bounding_box()
    a.locator("#viewer-host canvas").click(position={"x": canvas["width"] / 2, "y": canvas["height"] / 2})
    picked = a.locator(".bom-row.selected")
    picked.wait_for()
    assert a.locator("#selection-status").inner_text().startswith(str(picked.get_attribute("data-name")) + " — ")
    a.get_by_role("button", name="Fit").click()  # the whole model again, for the review

    # A starts a review with B.
    a.get_by_role("tab", name="Review").click()
    a.get_by_label("bob").check()
    a.locator("#start-review").click()
    a.locator("#review-room").wait_for()

    # B opens the review room on a phone-sized screen; each sees the other in the room.
    sign_in(b, server.base, "bob", f"#/designs/{design_id}/review")
    wait_model(b)
    b.locator("#review-room").wait_for()
    a.locator('#presence li[data-user="bob"]').wait_for(timeout=10_000)
    b.locator('#presence li[data-user="alice"]').wait_for(timeout=10_000)
    # A's pointer over the model is a named cursor on B's view; B can follow A's camera.
    box = a.locator("#viewer-host canvas").bounding_box()
    fx, fy = on_model(a, (0.5, 0.5))
    a.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
    b.locator(".remote-cursor", has_text="alice").wait_for(state="attached", timeout=5000)
    follow = b.locator('#presence li[data-user="alice"]').get_by_role("button", name="Follow")
    follow.click()
    b.locator('#presence li[data-user="alice"] button[aria-pressed="true"]').wait_for(timeout=5000)

    # B clicks the model to place a markup; A's page shows the pin within a second, without reloading.
    compose_markup(b, "Weld bead too close to the bolt head", "MAJOR", (0.5, 0.5))
    started = time.monotonic()
    b.locator("#markup-save").click()
    a.locator(".pin").first.wait_for(timeout=1000)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"A saw B's pin {elapsed:.2f} s after B saved it"
    a.locator(".markup-item", has_text="Weld bead too close").wait_for(timeout=1000)
    b.locator(".markup-item", has_text="Weld bead too close").wait_for(timeout=1000)
    alice = server.token("alice")
    markup = server.call("GET", f"/api/markups/?design_asset={design_id}", token=alice)["results"][0]
    assert markup["camera"]["fov"] and markup["position"] and markup["face_index"] is not None

    # B's network is cut while A adds two markups; back online, B shows both, each exactly once.
    b_context.set_offline(True)
    b.locator(".connection.offline").wait_for(timeout=5000)
    place_markup(a, "Chamfer missing on plate edge", "MINOR", (0.3, 0.6))
    place_markup(a, "Check thread engagement", "CRITICAL", (0.62, 0.42))
    b.wait_for_timeout(500)
    assert b.locator(".markup-item").count() == 1, "an offline page cannot have heard of them yet"
    b_context.set_offline(False)
    for text in ("Chamfer missing on plate edge", "Check thread engagement"):
        b.locator(".markup-item", has_text=text).wait_for(timeout=15_000)
    b.wait_for_timeout(1000)  # anything duplicated would have arrived by now
    for text in ("Weld bead too close", "Chamfer missing on plate edge", "Check thread engagement"):
        assert b.locator(".markup-item", has_text=text).count() == 1, text
    assert b.locator(".pin").count() == 3 and b.locator("#reload-banner").count() == 0

    # Screenshots of the review room at both sizes, before the vote closes the session.
    a.get_by_role("button", name="Clear selection").click()
    a.locator(".markup-item", has_text="Chamfer missing").get_by_role("button", name="Go to").click()
    a.wait_for_timeout(600)
    b.evaluate("window.scrollTo(0, 0)")
    save_screenshot(a, "review-room-1280.png", tmp_path)
    save_screenshot(b, "review-room-390.png", tmp_path)

    # B approves: A sees the tally and the design's new status.
    b.locator("#vote-comments").fill("Approved with the three markups tracked.")
    b.locator("#vote-approve").click()
    a.locator("#tally-text", has_text="1 of 1 approval").wait_for(timeout=5000)
    a.locator('#design-status [data-status="APPROVED"]').wait_for(timeout=5000)

    # The job dashboard, live: jobs started elsewhere appear, run and finish without a reload.
    a.goto(server.base + "/#/jobs")
    a.locator("#recent-jobs tr[data-job]").first.wait_for(timeout=10_000)
    assert a.locator("#m-total .card-value").inner_text() == "1"
    b.goto(server.base + "/#/jobs")
    org_id = team["org"]["id"]
    series = server.call("GET", f"/api/series/?organization={org_id}", token=alice)["results"][0]["id"]
    broken = post_file(server, alice, series, "damaged.step", DAMAGED_STEP)
    failed = a.locator(f'#recent-jobs tr[data-job="{broken["analysis_job_id"]}"]')
    failed.locator('[data-status="FAILURE"]').wait_for(timeout=LONG)
    assert "Could not read the CAD file" in failed.inner_text()
    a.locator("#top-errors li", has_text="Could not read the CAD file").wait_for(timeout=10_000)
    if corpus.available():
        # A large part from the corpus keeps a worker busy for seconds: the screenshots show a job running.
        shaft = server.call(
            "POST", "/api/series/", {"organization": org_id, "part_number": "SHF-2040", "name": "Drive shaft"}, alice
        )["id"]
        slow = post_file(server, alice, shaft, "11752.stp", corpus.read("11752.stp"))
        running = f'#running-jobs tr[data-job="{slow["analysis_job_id"]}"]'
        a.locator(running + " progress").wait_for(timeout=LONG)
        b.locator(running).wait_for(timeout=LONG)
        with contextlib.suppress(playwright_api.TimeoutError):  # a picture with progress under way, if in time
            a.locator(running + " .percent:not(:text-is('0 %'))").wait_for(timeout=5000)
    save_screenshot(a, "jobs-1280.png", tmp_path)
    save_screenshot(b, "jobs-390.png", tmp_path)

    # C, a member without the clearance, gets no model (403) and the page says why.
    c_context = first.new_context(viewport={"width": 1280, "height": 720})
    c = c_context.new_page()
    answers: list[tuple[str, int]] = []
    c.on("response", lambda r: answers.append((r.url, r.status)))
    sign_in(c, server.base, "carol")
    c.goto(f"{server.base}/#/designs/{design_id}")
    refusal = c.locator("#access-refused")
    refusal.wait_for(timeout=10_000)
    assert "Not cleared for this design" in refusal.inner_text()
    assert "clearance is below" in refusal.inner_text()
    assert (f"{server.base}/api/designs/{design_id}/viewable/", 403) in answers
    assert c.locator("#viewer-host canvas").count() == 0

    assert a_problems.unexpected() == [] and b_problems.unexpected() == []
    for context in (a_context, b_context, c_context):
        context.close()


@corpus.mark
def test_corpus_assembly_renders(server: Server, team: dict[str, Any], browsers: tuple[Any, Any]) -> None:
    context = browsers[0].new_context(viewport={"width": 1280, "height": 720})
    page = context.new_page()
    sign_in(page, server.base, "alice")
    upload_through_dialog(page, corpus.path("as1-oc-214.stp"), "AS1-OC-214", "UNCLASSIFIED")
    page.locator(".open-design").click()
    wait_model(page)
    assert 1 - share_near(canvas_pixels(page), BACKGROUND, 3) > 0.05
    page.get_by_role("tab", name="BOM").click()
    assert page.locator(".bom-row").count() == 10
    page.locator('.bom-row[data-name="nut"]').first.click()
    assert page.locator("#selection-status").inner_text().startswith("nut — ")
    context.close()


def test_a_gap_too_old_to_replay_shows_the_reload_banner(
    mongo_uri: str, redis_url: str, browsers: tuple[Any, Any], cad_files: CadFiles, tmp_path: Path
) -> None:
    """recovered: false after a reconnect: the page says so and reloads the room over REST on request."""
    # Two events of history per channel: three markups made while B is offline cannot be replayed.
    with live_server(mongo_uri, redis_url, tmp_path / "server", realtime_history_size="2") as server:
        team = make_team(server)
        alice, bob = server.token("alice"), server.token("bob")
        series = server.call(
            "POST",
            "/api/series/",
            {"organization": team["org"]["id"], "part_number": "BRK-7", "name": "Bracket"},
            alice,
        )["id"]
        design = post_file(server, alice, series, "bracket.step", cad_files.read(ASSEMBLY))
        deadline = time.monotonic() + 60
        while server.call("GET", f"/api/designs/{design['id']}/", token=alice)["status"] != "READY":
            assert time.monotonic() < deadline, "analysis did not finish"
            time.sleep(0.2)
        review = server.call(
            "POST", "/api/reviews/", {"design_asset": design["id"], "reviewers": [team["users"]["bob"]["id"]]}, alice
        )
        context = browsers[1].new_context(viewport={"width": 1280, "height": 720})
        page = context.new_page()
        sign_in(page, server.base, "bob", f"#/designs/{design['id']}/review")
        page.locator("#review-room").wait_for(timeout=LONG)
        page.locator("#markup-list .empty").wait_for()
        context.set_offline(True)
        page.locator(".connection.offline").wait_for(timeout=5000)
        for n in range(3):
            body = {
                "review_session": review["id"],
                "position": {"x": n, "y": 0, "z": 0},
                "annotation_text": f"Gap markup {n}",
            }
            server.call("POST", "/api/markups/", body, alice)
        context.set_offline(False)
        banner = page.locator("#reload-banner")
        banner.wait_for(timeout=15_000)
        assert page.locator(".markup-item").count() == 0  # nothing was replayed: the banner says so
        banner.get_by_role("button", name="Reload").click()
        for n in range(3):
            page.locator(".markup-item", has_text=f"Gap markup {n}").wait_for(timeout=10_000)
        assert page.locator(".markup-item").count() == 3 and banner.count() == 0
        assert server.call("GET", f"/api/reviews/{review['id']}/", token=bob)["status"] in ("PENDING", "IN_PROGRESS")
        context.close()
