"""The course site in a real browser: headless Chromium (the system one) through playwright.

Every page of the table of contents is served from the build made by ``tests/test_book.py``
(its ``built_site`` fixture: one build per test run) over a local HTTP server and must load
with its title, its figures (lab pages), its math typeset by the local MathJax, no error text,
no empty widget boxes and no request to another host. A full-page screenshot of each page goes
to ``_build/screenshots/`` for humans to look at.
"""

from __future__ import annotations

import http.server
import re
import shutil
import threading
from functools import partial
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest

from test_book import ROOT, BuiltSite, built_site, parse_html, site, toc_docnames  # noqa: F401 (fixtures)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = ROOT / "_build" / "screenshots"
PAGES = toc_docnames()

pytestmark = [pytest.mark.slow, pytest.mark.browser]
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (`bash .ci/ensure-chromium.sh`, "
                "as `make test` does) to run the browser tests", allow_module_level=True)

# Error text a reader must never see: Python exceptions as printed ("NameError: ...",
# "Error: ...", "Traceback ..."). Plain words such as "error rate" or "Error (%)" are fine.
ERROR_TEXT = re.compile(r"Traceback|NameError|\b\w*Error: ")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib's name)
        pass


@pytest.fixture(scope="module")
def server(site: BuiltSite) -> Iterator[str]:
    """``http://127.0.0.1:PORT/`` serving the built site from a background thread."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(site.html)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def screenshots() -> Path:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    return SCREENSHOTS


def _has_math(site: BuiltSite, docname: str) -> int:
    """How many math elements Sphinx wrote into the page (0: no math)."""
    return sum("math" in attrs.get("class", "").split() for _, attrs in parse_html(site.page(docname)).tags)


# Runs in the page: every output area that shows nothing (an empty widget box or a blank output),
# and every widget element left over.
_EMPTY_OUTPUTS_JS = """() => {
  const bad = [];
  for (const el of document.querySelectorAll('.cell_output .output, .cell_output > div')) {
    const visible = el.offsetParent !== null;
    const hasMedia = el.querySelector('img, svg, canvas, table, video, iframe, mjx-container');
    if (visible && !hasMedia && el.innerText.trim() === '') bad.push('empty output: ' + el.className);
  }
  for (const el of document.querySelectorAll(
      '.jupyter-widgets, .widget-area, .widget-subarea, script[type*="jupyter.widget"]')) {
    bad.push('widget element: ' + (el.className || el.type));
  }
  return bad;
}"""


@pytest.mark.parametrize("docname", PAGES)
def test_page_renders_in_chromium(docname: str, site: BuiltSite, server: str, browser, screenshots: Path) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    outside: list[str] = []
    failed: list[str] = []
    console_errors: list[str] = []

    def only_local(route, request) -> None:
        if urlsplit(request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(request.url)
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    page.on("requestfailed", lambda r: failed.append(r.url) if urlsplit(r.url).hostname == "127.0.0.1" else None)
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console_errors.append(str(e)))
    try:
        response = page.goto(server + f"{docname}.html", wait_until="load", timeout=30_000)
        assert response is not None and response.ok, f"{docname}: HTTP {response and response.status}"

        # Title: the page's heading is in the document title.
        h1 = page.locator("main h1, article h1").first
        heading = h1.inner_text(timeout=10_000).replace("#", "").strip()
        assert heading, f"{docname}: no h1 heading"
        assert heading in page.title(), f"{docname}: title {page.title()!r} lacks the heading {heading!r}"

        # Math: typeset by MathJax (one mjx-container per math element, and no MathJax error).
        n_math = _has_math(site, docname)
        if n_math:
            page.wait_for_function(
                "n => document.querySelectorAll('mjx-container').length >= n", arg=n_math, timeout=30_000)
            assert page.locator("mjx-merror").count() == 0, f"{docname}: MathJax could not typeset some math"

        # Images: all loaded (non-zero natural size); a lab page shows figures from its outputs.
        page.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=30_000)
        sizes = page.eval_on_selector_all(
            "img", "imgs => imgs.map(i => [i.getAttribute('src'), i.naturalWidth, !!i.closest('.cell_output')])")
        broken = [src for src, width, _ in sizes if not width]
        assert not broken, f"{docname}: images that did not load: {broken}"
        if docname.startswith("labs/"):
            figures = [src for src, width, in_output in sizes if in_output and width > 0]
            assert figures, f"{docname}: a lab page without any figure in its outputs"

        # Text: no tracebacks or error messages; nothing empty where an output should be.
        text = page.inner_text("main") if page.locator("main").count() else page.inner_text("body")
        bad_text = sorted({m.group(0).strip() for m in ERROR_TEXT.finditer(text)})
        assert not bad_text, f"{docname}: error text on the page: {bad_text}"
        empty = page.evaluate(_EMPTY_OUTPUTS_JS)
        assert not empty, f"{docname}: {empty}"

        assert not outside, f"{docname}: requests to other hosts: {outside}"
        assert not failed, f"{docname}: local requests that failed: {failed}"
        assert not console_errors, f"{docname}: JavaScript errors: {console_errors}"
    finally:
        shot = screenshots / (docname.replace("/", "__") + ".png")
        try:
            page.screenshot(path=str(shot), full_page=True, timeout=30_000)
        finally:
            context.close()


def test_error_text_pattern_is_not_vacuous() -> None:
    assert ERROR_TEXT.search("NameError: name 'x' is not defined")
    assert ERROR_TEXT.search("Traceback (most recent call last):")
    assert ERROR_TEXT.search("ValueError: PROFILE must be one of ...")
    assert ERROR_TEXT.search("Error: the lab stopped")
    assert not ERROR_TEXT.search("the top-1 localization error of Grad-CAM")
    assert not ERROR_TEXT.search("Error (%)\t12.5")
