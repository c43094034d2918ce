"""The course site: the Jupyter Book builds with warnings as errors, and the HTML is whole.

The book is built once per test run into a temporary folder (``--path-output``), never into the
repository's ``_build``; ``tests/test_site_browser.py`` reuses that build through the
``built_site`` fixture defined here (one build even when pytest-xdist spreads the two files over
several workers: the first worker builds under a file lock, the others wait and read the result).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MATHJAX = ROOT / "book" / "_static" / "mathjax" / "tex-chtml.js"
BUILD_TIMEOUT_S = 900
# Any reference to these hosts means the page needs a CDN (math, widgets) and breaks offline.
CDN_PATTERN = re.compile(r"cdn\.jsdelivr\.net|cdnjs\.cloudflare\.com|mathjax\.org|polyfill\.io", re.I)

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------------------------
# The table of contents and the build
# --------------------------------------------------------------------------------------------

def toc_docnames(toc_file: Path = ROOT / "_toc.yml") -> list[str]:
    """Every page of ``_toc.yml`` (root first), as Sphinx docnames without suffix."""
    toc = yaml.safe_load(toc_file.read_text(encoding="utf-8"))
    names = [toc["root"]]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                names.append(str(node["file"]))
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk({k: v for k, v in toc.items() if k in ("parts", "chapters", "sections")})
    return [re.sub(r"\.(md|ipynb)$", "", n) for n in names]


def source_of(docname: str) -> Path:
    """The source file of a toc entry (``.md`` or ``.ipynb``)."""
    for suffix in (".md", ".ipynb"):
        path = ROOT / (docname + suffix)
        if path.exists():
            return path
    raise FileNotFoundError(f"no .md or .ipynb source for toc entry {docname!r} under {ROOT}")


@dataclass(frozen=True)
class BuiltSite:
    html: Path          # the built site (``.../_build/html``)
    returncode: int
    log: str
    seconds: float
    pages: tuple[str, ...]  # toc docnames

    def page(self, docname: str) -> Path:
        return self.html / f"{docname}.html"


def _log_summary(log: str, tail: int = 40) -> str:
    """The warning and error lines of a build log, then its last lines."""
    lines = log.splitlines()
    problems = [ln for ln in lines if re.search(r"\b(WARNING|ERROR|CRITICAL|Error)\b", ln)]
    return "\n".join(problems[:40] + ["..."] + lines[-tail:])


def _jupyter_book() -> str:
    exe = Path(sys.executable).with_name("jupyter-book")
    found = str(exe) if exe.exists() else shutil.which("jupyter-book")
    if not found:
        pytest.fail("jupyter-book is not installed: run `make setup` (pip install -e '.[book,test]')")
    return found


def _build(out: Path) -> dict:
    """Build the book from the repository into ``out/_build/html`` with warnings as errors."""
    cmd = [_jupyter_book(), "build", str(ROOT), "--path-output", str(out), "--builder", "html",
           "--warningiserror", "--nitpick", "--keep-going"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env,
                              timeout=BUILD_TIMEOUT_S)
        rc, log = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, log = -1, f"build timed out after {BUILD_TIMEOUT_S} s\n{exc.stdout or ''}{exc.stderr or ''}"
    return {"returncode": rc, "log": re.sub(r"\x1b\[[0-9;]*m", "", log),
            "seconds": time.perf_counter() - start, "cmd": " ".join(cmd)}


@pytest.fixture(scope="session")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> BuiltSite:
    """The course site built once per test run (shared by the xdist workers of one run)."""
    if not MATHJAX.exists():
        pytest.fail(f"MathJax is missing ({MATHJAX}); the site must render math without a CDN. "
                    "Fetch it with `make setup` or `bash .ci/get-mathjax.sh book/_static/mathjax`.")
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, shared by all its workers
    out = base / "book-site"
    with open(base / "book-site.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            result_file = out / "build-result.json"
            if result_file.exists():
                result = json.loads(result_file.read_text())
            else:
                out.mkdir(parents=True, exist_ok=True)
                result = _build(out)
                result_file.write_text(json.dumps(result))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return BuiltSite(out / "_build" / "html", result["returncode"], result["log"],
                     result["seconds"], tuple(toc_docnames()))


@pytest.fixture(scope="session")
def site(built_site: BuiltSite) -> BuiltSite:
    """The built site, failing (with the build log) when the build did not succeed."""
    if built_site.returncode != 0 or not (built_site.html / "index.html").exists():
        pytest.fail(f"the book build failed (exit {built_site.returncode}):\n{_log_summary(built_site.log)}")
    return built_site


# --------------------------------------------------------------------------------------------
# HTML helpers
# --------------------------------------------------------------------------------------------

class _Collector(HTMLParser):
    """Collects ids and (tag, attribute, value) for every link-like attribute of one page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[str, str, str]] = []
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        d = {k: (v or "") for k, v in attrs}
        self.tags.append((tag, d))
        if "id" in d:
            self.ids.add(d["id"])
        if tag == "a" and "name" in d:
            self.ids.add(d["name"])
        for attr in ("href", "src"):
            if attr in d:
                self.links.append((tag, attr, d[attr]))

    handle_startendtag = handle_starttag


def parse_html(path: Path) -> _Collector:
    collector = _Collector()
    collector.feed(path.read_text(encoding="utf-8"))
    return collector


def is_local(url: str) -> bool:
    """A link to a file of the site itself (not another host, mail, script or inline data)."""
    parts = urlsplit(url)
    return not (parts.scheme or parts.netloc or url.startswith("//"))


def html_pages(html: Path) -> list[Path]:
    """Every HTML page of the site (the theme's template fragments under ``_static`` are not pages)."""
    return sorted(p for p in html.rglob("*.html") if "_static" not in p.relative_to(html).parts)


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------

def test_toc_parser_reads_nested_entries(tmp_path: Path) -> None:
    """The helper every other test relies on finds parts, chapters and nested sections."""
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: a/intro\nparts:\n  - caption: X\n    chapters:\n"
                   "      - file: a/b.md\n        sections:\n          - file: c/d.ipynb\n"
                   "  - caption: Y\n    chapters:\n      - file: e\n")
    assert toc_docnames(toc) == ["a/intro", "a/b", "c/d", "e"]


def test_the_api_page_is_current_and_covers_the_namespace() -> None:
    """book/labkit.md is written from the package (``labkit api --write book/labkit.md``); every module of
    the lk namespace has a place in the layers it shows."""
    import labkit
    from labkit.cli import API_LAYERS, api_page

    shown = [m for _, modules, _ in API_LAYERS for m in modules]
    assert sorted(shown) == sorted(labkit._MODULES), "give each module of labkit._MODULES one layer in API_LAYERS"
    assert (ROOT / "book" / "labkit.md").read_text(encoding="utf-8") == api_page(), (
        "book/labkit.md is stale: run `labkit api --write book/labkit.md`")
    # what test_site_browser forbids on any page (an exception as printed), e.g. "DataNotFoundError: ..."
    # (checked on the text as rendered, without the code spans' backticks)
    assert not re.search(r"Traceback|NameError|\b\w*Error: ", api_page().replace("`", ""))


def test_every_toc_entry_has_a_source() -> None:
    pages = toc_docnames()
    assert pages[0] == "book/intro" and "labs/00_welcome" in pages and "book/references" in pages
    assert len(pages) == len(set(pages)), f"a page is listed twice in _toc.yml: {pages}"
    for name in pages:
        source_of(name)  # raises naming the missing page


def test_book_builds_without_warnings(built_site: BuiltSite) -> None:
    assert built_site.returncode == 0, \
        f"jupyter-book build failed (exit {built_site.returncode}):\n{_log_summary(built_site.log)}"
    warnings = [ln for ln in built_site.log.splitlines() if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", ln)]
    assert not warnings, "the build printed warnings:\n" + "\n".join(warnings[:30])
    print(f"book built in {built_site.seconds:.1f} s")


def test_every_toc_page_has_html(site: BuiltSite) -> None:
    missing = [name for name in site.pages if not site.page(name).is_file()]
    assert not missing, f"toc pages without HTML: {missing}"
    index = _text(site.html / "index.html")
    assert f"{site.pages[0]}.html" in index, "index.html must lead to the root page"
    # Only the toc's files were built: Sphinx did not wander into the venv, tests or labkit.
    built = {p.relative_to(site.html).with_suffix("").as_posix() for p in html_pages(site.html)}
    extra = built - set(site.pages) - {"index", "genindex", "search"}
    assert not extra, f"pages built that are not in _toc.yml: {sorted(extra)[:20]}"


def test_math_uses_the_local_mathjax_and_no_cdn(site: BuiltSite) -> None:
    offenders = {}
    for page in html_pages(site.html):
        hits = CDN_PATTERN.findall(_text(page))
        if hits:
            offenders[page.relative_to(site.html).as_posix()] = sorted(set(hits))
    assert not offenders, f"pages referencing a CDN: {offenders}"
    # Pages with math load tex-chtml.js from _static, and the file (and its fonts) is there.
    local = site.html / "_static" / "mathjax" / "tex-chtml.js"
    assert local.is_file() and local.stat().st_size > 100_000
    fonts = list((site.html / "_static" / "mathjax" / "output" / "chtml" / "fonts").rglob("*.woff"))
    assert fonts, "MathJax's CHTML fonts were not copied into the site"
    math_pages = 0
    for name in site.pages:
        page = site.page(name)
        doc = parse_html(page)
        has_math = any("math" in attrs.get("class", "").split() for _, attrs in doc.tags)
        scripts = [attrs.get("src", "") for tag, attrs in doc.tags if tag == "script"]
        mathjax = [s for s in scripts if "mathjax" in s.lower()]
        if has_math:
            math_pages += 1
            assert mathjax, f"{name} has math but loads no MathJax"
        for src in mathjax:
            assert is_local(src), f"{name} loads MathJax from {src}"
            target = (page.parent / unquote(urlsplit(src).path)).resolve()
            assert target == local.resolve(), f"{name} loads {src}, not the local tex-chtml.js"
    assert math_pages >= 1, "no page has math: the intro's equations should be there"


def test_no_resource_is_loaded_from_another_host(site: BuiltSite) -> None:
    """Scripts, styles and images all come from the site itself (it works offline)."""
    external = []
    for page in html_pages(site.html):
        for tag, attrs in parse_html(page).tags:
            url = attrs.get("src", "") if tag in ("script", "img", "iframe") else ""
            if tag == "link" and attrs.get("rel", "") in ("stylesheet", "preload", "icon", "modulepreload"):
                url = attrs.get("href", "")
            if url and not is_local(url) and not url.startswith("data:"):
                external.append(f"{page.relative_to(site.html)}: <{tag}> {url}")
    assert not external, "resources from other hosts:\n" + "\n".join(external[:20])


def test_internal_links_resolve(site: BuiltSite) -> None:
    docs = {p: parse_html(p) for p in html_pages(site.html)}
    broken = []
    checked = 0
    for page, doc in docs.items():
        for tag, attr, url in doc.links:
            if not url or not is_local(url) or url.startswith(("javascript:", "data:")):
                continue
            parts = urlsplit(url)
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page.resolve()
            checked += 1
            where = f"{page.relative_to(site.html)}: <{tag} {attr}={url!r}>"
            if not target.exists():
                broken.append(f"{where} -> missing file")
            elif target.is_dir() and not (target / "index.html").exists():
                broken.append(f"{where} -> a folder without index.html")
            elif parts.fragment and target.suffix == ".html" and tag == "a":
                ids = docs[target].ids if target in docs else parse_html(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{where} -> no element with id {parts.fragment!r}")
    assert checked > 50, f"only {checked} internal links found: the parser or the build is wrong"
    assert not broken, f"{len(broken)} broken internal links:\n" + "\n".join(broken[:30])


def test_bibliography_lists_every_entry_and_citations_link_to_it(site: BuiltSite) -> None:
    keys = re.findall(r"^@\w+\{([^,\s]+),", _text(ROOT / "book" / "references.bib"), re.M)
    assert len(keys) >= 32 and len(keys) == len(set(keys)), "references.bib: missing or duplicate keys"
    refs = _text(site.page("book/references"))
    entries = re.findall(r'class="citation"[^>]*role="doc-biblioentry"', refs)
    assert len(entries) == len(keys), f"the references page lists {len(entries)} of {len(keys)} entries"
    for needle in ("Deep inside convolutional networks", "Grad-CAM", "Sanity checks for saliency maps",
                   "Domain-adversarial training of neural networks", "Arbeláez"):
        assert needle.lower() in refs.lower(), f"references page lacks {needle!r}"
    intro = parse_html(site.page("book/intro"))
    cites = [u for t, a, u in intro.links if t == "a" and u.startswith("references.html#")]
    assert len(cites) >= 10, "the intro's citations should link to the references page"


def _repository_buttons():
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    try:
        import repository_buttons
    finally:
        sys.path.remove(str(ROOT / "book" / "_ext"))
    return repository_buttons


def test_placeholder_repository_hides_its_buttons() -> None:
    rb = _repository_buttons()
    launch = {"notebook_interface": "jupyterlab", "binderhub_url": "https://mybinder.org",
              "colab_url": "https://colab.research.google.com", "thebe": False}
    given = {"repository_url": rb.PLACEHOLDER + "/", "use_repository_button": True, "launch_buttons": launch,
             "navbar_persistent": []}
    options, notes = rb.button_options(given)
    assert options["use_repository_button"] is False and options["use_source_button"] is False
    assert options["launch_buttons"] == {"notebook_interface": "jupyterlab"}
    assert options["navbar_persistent"] == [] and given["launch_buttons"] is launch and "colab_url" in launch
    assert "instructor" in notes["repo_ref"] and "no Colab or Binder" in notes["launch_note"]
    real = {**given, "repository_url": "https://github.com/some-school/seeing-inside"}
    options, notes = rb.button_options(real)
    assert options == real and notes["repo_ref"] == real["repository_url"] and "rocket" in notes["launch_note"]
    for url in (None, "", "https://github.com/labkit-course/seeing-inside.git", "HTTPS://github.com/labkit-course/Seeing-Inside"):
        assert rb.is_placeholder(url), url
    assert not rb.is_placeholder("https://github.com/labkit-course/seeing-inside-2025")


def test_lab_pages_have_download_and_launch_buttons(site: BuiltSite) -> None:
    """The .ipynb download button always; Colab, Binder and repository buttons exactly when
    repository.url is a real repository (never to the placeholder, which does not exist)."""
    cfg = yaml.safe_load(_text(ROOT / "_config.yml"))
    url = cfg["repository"]["url"]
    placeholder = _repository_buttons().is_placeholder(url)
    repo = urlsplit(url).path.strip("/")
    branch = cfg["repository"].get("branch", "main")
    labs = [n for n in site.pages if n.startswith("labs/")]
    assert labs, "no lab in _toc.yml"
    for name in labs:
        page = site.page(name)
        hrefs = [u for t, a, u in parse_html(page).links if t == "a"]
        downloads = [u for u in hrefs if u.endswith(f"_sources/{name}.ipynb")]
        assert downloads, f"{name}: no .ipynb download button"
        assert (page.parent / downloads[0]).resolve().is_file()
        nb = f"{name}.ipynb"
        colab = f"https://colab.research.google.com/github/{repo}/blob/{branch}/{nb}"
        binder = [u for u in hrefs if u.startswith("https://mybinder.org/")]
        if placeholder:
            assert not any(repo.lower() in u.lower() for u in hrefs), f"{name}: a link to the placeholder repository"
            assert not binder and not any("colab.research.google.com" in u for u in hrefs), \
                f"{name}: a launch button to the placeholder repository"
            continue
        assert colab in hrefs, f"{name}: no Colab launch button ({colab})"
        assert any(u.startswith(f"https://mybinder.org/v2/gh/{repo}/{branch}") and nb in u for u in binder), \
            f"{name}: no Binder launch button"
        assert f"https://github.com/{repo}" in hrefs, f"{name}: no repository button"
    setup_page = _text(site.page("book/setup"))
    if placeholder:
        assert "instructor gives you" in setup_page and repo not in setup_page


_WIDGET_REPR = re.compile(
    r"\b(?:interactive|HBox|VBox|GridBox|Tab|Accordion|Output|IntSlider|FloatSlider|FloatLogSlider|"
    r"Dropdown|IntProgress|FloatProgress|Button|Checkbox|ToggleButtons|SelectionSlider|Play)"
    r"\((?:children|value|description|options|layout|outputs)=")


def test_no_widget_views_or_error_outputs_in_lab_pages(site: BuiltSite) -> None:
    """ipywidgets never reach the site (no scripts, no empty boxes, no repr text); no tracebacks."""
    for name in site.pages:
        html = _text(site.page(name))
        assert "application/vnd.jupyter.widget" not in html, f"{name}: an ipywidgets view or state"
        assert "@jupyter-widgets" not in html and "embed-amd" not in html, f"{name}: ipywidgets JavaScript"
        found = _WIDGET_REPR.search(html)
        assert not found, f"{name}: a widget printed as text ({found.group(0)}...): strip widget outputs"
        assert "Traceback (most recent call last)" not in html, f"{name}: a traceback"
        assert 'class="output traceback' not in html, f"{name}: an error output"


def test_widget_repr_pattern_catches_reprs() -> None:
    """The widget check above is not vacuous."""
    assert _WIDGET_REPR.search("interactive(children=(IntSlider(value=3),))")
    assert _WIDGET_REPR.search("HBox(children=(HTML(value=''),))")
    assert not _WIDGET_REPR.search("an interactive (children's) explorer")


def test_student_versions_are_offered_for_download(site: BuiltSite) -> None:
    """book/labs.html links every lab's student notebook, written into _static/student/."""
    page = site.html / "book" / "labs.html"
    hrefs = [u for t, a, u in parse_html(page).links if t == "a"]
    labs = sorted(p.name for p in (ROOT / "labs").glob("[0-9][0-9]_*.ipynb"))
    assert labs
    for name in labs:
        url = f"../_static/student/{name}"
        assert url in hrefs, f"book/labs.html does not link {url}"
        text = (page.parent / url).resolve().read_text()
        assert "# BEGIN SOLUTION" not in text and "hidden-test" not in text, f"{name}: solutions leak"
        assert "YOUR CODE HERE" in text, f"{name}: the student version has no exercise to fill"
