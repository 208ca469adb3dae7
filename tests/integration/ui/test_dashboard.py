"""The dashboard at /ui, end to end in headless Chromium (Debian's, driven by Playwright) against a
real server and a real echo worker: sign in, upload, watch it finish, open the result, search,
cancel a queued task, retry a failed one, sign out; another user's key sees none of it.

Screenshots of each page go to the test's tmp dir; with ``MORAG_SCREENSHOTS_DIR`` set they are
copied there too (``MORAG_SCREENSHOTS_DIR=docs/screenshots`` refreshes the ones in the docs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright import sync_api  # the test extra; it drives /usr/bin/chromium, never a download

from protocol.paths import LEASE_TOKEN_HEADER
from tests.integration.conftest import LiveServer, LiveServerFactory

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
NOTE = """## Bees

Honey bees visit about two thousand **flowers** a day.

<script>window.pwned = 1</script> <img src=x onerror="window.pwned = 2">
"""


@pytest.fixture
def served(live_server: LiveServerFactory, tmp_path: Path) -> Iterator[LiveServer]:
    server = live_server()
    worker = server.start_worker(
        tmp_path / "worker.log",
        "--name",
        "laptop",
        "--content-types",
        "echo",
        "--lanes",
        "cpu",
        "--claim-wait",
        "1",
        "--temp-dir",
        str(tmp_path / "w"),
    )
    yield server
    worker.kill()
    worker.wait(10)


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Shots:
    def __init__(self, page: Any, folder: Path) -> None:
        self.page = page
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.taken: list[Path] = []

    def __call__(self, name: str) -> None:
        path = self.folder / f"{len(self.taken) + 1:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)

    def publish(self) -> None:
        target = os.environ.get("MORAG_SCREENSHOTS_DIR")
        if target:
            Path(target).mkdir(parents=True, exist_ok=True)
            for path in self.taken:
                shutil.copy(path, Path(target) / path.name)


def worker_call(server: LiveServer, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{server.url}{path}", json=body, timeout=10, headers={"Authorization": f"Bearer {server.worker_key}"}
    )


def manual_claim(server: LiveServer, task_id: str) -> dict[str, Any]:
    """Claim a web task by hand (the echo worker does not take web jobs)."""
    resp = worker_call(
        server,
        "/worker/claim",
        {"worker_id": "by-hand", "lanes": ["cpu"], "content_types": ["web"], "wait_s": 0},
    )
    assert resp.status_code == 200, resp.text
    (job,) = resp.json()["jobs"]
    assert job["job_id"] == task_id
    return dict(job)


def sign_in(page: Any, server: LiveServer, key: str) -> None:
    page.goto(f"{server.url}/ui")
    page.fill("#key", key)
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#nav:not([hidden])")


def row(page: Any, task_id: str) -> Any:
    return page.locator(f"#tasks tbody tr[data-task='{task_id}']")


def test_dashboard_end_to_end(served: LiveServer, browser: Any, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    shots = Shots(page, tmp_path / "screenshots")
    try:
        # Sign in: a wrong key is refused with the server's words, a worker key is explained.
        page.goto(f"{served.url}/ui")
        assert not page.is_visible("#nav") and not page.is_visible("#signout")
        shots("sign-in")
        page.fill("#key", "mrg_wrong")
        page.click("#signin-form button[type=submit]")
        page.wait_for_selector("#signin-error:has-text('unknown or revoked')")
        errors.clear()  # the refused sign-in logged its 401
        sign_in(page, served, served.client_key)
        assert page.evaluate("sessionStorage.getItem('morag.key')") == served.client_key
        assert page.evaluate("localStorage.length") == 0
        page.wait_for_selector("#workers tbody tr:has-text('laptop') .badge.online")
        page.wait_for_selector(
            "#lanes tbody tr:has-text('CPU lane'):has-text('your CPU workers take these jobs')"
        )
        shots("overview")

        # Upload a file, watch it finish, open the result (rendered, never executed).
        page.click("button[data-page=add]")
        note = tmp_path / "bees.md"
        note.write_text(NOTE)
        page.set_input_files("#upload-file", str(note))
        page.select_option("#upload-type", "echo")
        page.fill("#upload-doc", "bees")
        page.click("#upload-form button[type=submit]")
        page.wait_for_selector("#upload-msg:has-text('Queued bees.md')")
        shots("add")
        task_id = page.inner_text("#upload-msg").split("task ")[1].split(".")[0]
        page.click("button[data-page=tasks]")
        row(page, task_id).locator(".badge.succeeded").wait_for(timeout=120_000)
        row(page, task_id).locator("button:has-text('Open')").click()
        page.wait_for_selector("#detail-result h1")
        assert page.inner_text("#detail-result h1") == "bees.md"
        assert page.inner_text("#detail-result h2") == "Bees"
        assert page.inner_text("#detail-result strong") == "flowers"
        assert "<script>window.pwned = 1</script>" in page.inner_text("#detail-result")
        assert page.locator("#detail-result img, #detail-result script").count() == 0
        assert page.evaluate("window.pwned === undefined")
        assert "Indexed\n1 chunk" in page.inner_text("#detail-fields")
        shots("task-result")

        # Search it: hits with the query words highlighted.
        page.click("button[data-page=search]")
        page.fill("#query", "how many flowers do honey bees visit")
        page.click("#search-form button[type=submit]")
        page.wait_for_selector("#hits li mark")
        marks = {m.lower() for m in page.locator("#hits li").first.locator("mark").all_inner_texts()}
        assert {"flowers", "honey", "bees", "visit"} <= marks
        assert "bees" in page.inner_text("#hits li .hit-head")
        shots("search")
        page.click("button[data-page=documents]")
        page.wait_for_selector("#documents tbody tr:has-text('bees.md')")
        shots("documents")

        # Cancel a queued task that no online worker can take (and that says so).
        page.click("button[data-page=add]")
        page.fill("#url", "https://example.org/waiting")
        page.select_option("#url-type", "web")
        page.click("#url-form button[type=submit]")
        page.wait_for_selector("#url-msg:has-text('Queued https://example.org/waiting')")
        queued = page.inner_text("#url-msg").split("task ")[1].split(".")[0]
        page.click("button[data-page=tasks]")
        row(page, queued).locator("text=waiting: no online worker takes web jobs").wait_for()
        shots("tasks-queued")
        row(page, queued).locator("button:has-text('Cancel')").click()
        row(page, queued).locator(".badge.canceled").wait_for()

        # Retry a failed one: it fails once (by hand), the Retry button queues it again.
        page.click("button[data-page=add]")
        page.fill("#url", "https://example.org/flaky")
        page.select_option("#url-type", "web")
        page.click("#url-form button[type=submit]")
        page.wait_for_selector("#url-msg:has-text('Queued https://example.org/flaky')")
        flaky = page.inner_text("#url-msg").split("task ")[1].split(".")[0]
        job = manual_claim(served, flaky)
        fail = worker_call(
            served,
            "/worker/fail",
            {
                "job_id": flaky,
                "lease_token": job["lease_token"],
                "error": "the site answered 503",
                "error_class": "bad_input",
                "retryable": False,
            },
        )
        assert fail.status_code == 200, fail.text
        page.click("button[data-page=tasks]")
        row(page, flaky).locator("text=bad_input: the site answered 503").wait_for()
        row(page, flaky).locator("button:has-text('Open')").click()
        page.wait_for_selector("#detail-error:has-text('bad_input: the site answered 503')")
        assert "Retrying the same input fails again" in page.inner_text("#detail-error")
        shots("task-failed")
        row(page, flaky).locator("button:has-text('Retry')").click()
        row(page, flaky).locator(".badge.queued").wait_for()
        again = manual_claim(served, flaky)
        thumb = tmp_path / "thumb.png"
        subprocess.run(
            [
                "ffmpeg",
                "-loglevel",
                "error",
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=160x90",
                "-frames:v",
                "1",
                str(thumb),
            ],
            check=True,
        )
        art = httpx.post(
            f"{served.url}/worker/artifact",
            content=thumb.read_bytes(),
            timeout=10,
            params={"job_id": flaky, "name": "thumbnail.png"},
            # the lease token travels in a header, never in the URL (protocol.paths)
            headers={
                "Authorization": f"Bearer {served.worker_key}",
                LEASE_TOKEN_HEADER: again["lease_token"],
            },
        )
        assert art.status_code == 200, art.text
        done = worker_call(
            served,
            "/worker/complete",
            {
                "job_id": flaky,
                "lease_token": again["lease_token"],
                "markdown": "# Flaky\n\nworks now",
                "metadata": {},
            },
        )
        assert done.status_code == 200, done.text
        row(page, flaky).locator(".badge.succeeded").wait_for(timeout=60_000)
        page.wait_for_selector("#detail-result h1:has-text('Flaky')")
        # Its artifact is fetched with the key and shown as a thumbnail (a blob: URL, never the key in a URL).
        page.wait_for_selector("#detail-artifacts:not([hidden]) img[alt='thumbnail.png']")
        assert page.evaluate("document.querySelector('#detail-artifacts img').naturalWidth") == 160
        assert page.get_attribute("#detail-artifacts img", "src").startswith("blob:")
        shots("task-artifact")

        # Sign out: the key is gone from the tab.
        page.click("#signout")
        page.wait_for_selector("#page-signin:not([hidden])")
        assert page.evaluate("sessionStorage.getItem('morag.key')") is None
        assert page.locator("#tasks tbody tr").count() == 0

        # Another user sees none of it.
        served.cli("users", "create", "bob")
        sign_in(page, served, served.create_key("bob", "client"))
        page.wait_for_selector("#workers-empty:not([hidden])")
        page.click("button[data-page=tasks]")
        page.wait_for_selector("#tasks-empty:not([hidden])")
        page.click("button[data-page=documents]")
        page.wait_for_selector("#documents-empty:not([hidden])")
        page.click("button[data-page=search]")
        page.fill("#query", "honey bees flowers")
        page.click("#search-form button[type=submit]")
        page.wait_for_selector("#search-msg:has-text('No hits')")
        assert page.locator("#hits li").count() == 0
        page.click("button[data-page=add]")  # bob queues a web job nobody of his takes
        page.fill("#url", "https://example.org/bobs")
        page.select_option("#url-type", "web")
        page.click("#url-form button[type=submit]")
        page.wait_for_selector("#url-msg:has-text('Queued https://example.org/bobs')")
        page.click("#signout")

        # An admin also sees every user's lanes and the shared workers.
        served.cli("users", "create", "root")
        shared_key = served.create_key("root", "shared-worker")
        hello = httpx.post(
            f"{served.url}/worker/claim",
            timeout=10,
            headers={"Authorization": f"Bearer {shared_key}"},
            json={"worker_id": "gpu-box", "lanes": ["gpu"], "content_types": ["audio"], "wait_s": 0},
        )
        assert hello.status_code == 204, hello.text
        sign_in(page, served, served.create_key("root", "admin"))
        page.wait_for_selector("#who-text:has-text('root (admin key)')")
        page.wait_for_selector("#all-lanes tbody tr:has-text('cpu-tasks-2'):has-text('bob')")
        page.wait_for_selector("#shared-workers tbody tr:has-text('gpu-box') .badge.online")
        page.wait_for_selector("#lanes tbody tr:has-text('Shared lane')")
        assert (
            page.locator("#all-lanes tbody tr:has-text('cpu-tasks-1')").count() == 0
        )  # alice: nothing waits
        shots("admin-overview")
        assert errors == []
    except BaseException:
        shots("failure")  # what the page showed when the test failed
        raise
    finally:
        shots.publish()


def test_markdown_renderer_is_safe_and_complete(live_server: LiveServerFactory, browser: Any) -> None:
    """The dashboard's renderer, in the browser: markup becomes text, only http(s)/mailto links."""
    server = live_server()
    page = browser.new_page()
    page.goto(f"{server.url}/ui/")
    source = "\n".join(
        [
            "# Title <b>x</b>",
            "",
            "Text with [ok](https://example.org) and [bad](javascript:alert(1)) and `<i>code</i>`.",
            "",
            "| a | b |",
            "|---|---|",
            "| <img src=x onerror=alert(1)> | **2** |",
            "",
            "- one",
            "- two",
            "",
            "1. first",
            "",
            "> quoted",
            "",
            "```",
            "<script>alert(1)</script>",
            "```",
            "#hashtag line",
        ]
    )
    html = page.evaluate(
        "(md) => { const d = document.createElement('div'); d.append(window.renderMarkdown(md));"
        " return d.innerHTML; }",
        source,
    )
    assert "<h1>Title &lt;b&gt;x&lt;/b&gt;</h1>" in html
    assert '<a href="https://example.org/"' in html or '<a href="https://example.org"' in html
    assert 'href="javascript' not in html
    assert "[bad](javascript:alert(1))" in html  # left as text, not a link
    assert "<code>&lt;i&gt;code&lt;/i&gt;</code>" in html
    assert "<td>&lt;img src=x onerror=alert(1)&gt;</td><td><strong>2</strong></td>" in html
    assert "<ul><li>one</li><li>two</li></ul>" in html and "<ol><li>first</li></ol>" in html
    assert "<blockquote><p>quoted</p></blockquote>" in html
    assert "<pre><code>&lt;script&gt;alert(1)&lt;/script&gt;</code></pre>" in html
    assert "<p>#hashtag line</p>" in html
    assert "<img" not in html and "<script" not in html
