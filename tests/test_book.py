"""The course website (``make book``: docs/book.py with docs/conf.py) built from the CI-size executions.

The site is built from the executed copies tests/test_tutorials.py::test_runs_under_papermill leaves in
test-artifacts/tutorials/<stem>/<name>.ipynb, never executing a notebook again; tests/conftest.py
runs this file last so that they exist. Run alone (``pytest tests/test_book.py``), the fixture
``executed`` runs the missing ones, and those older than their source, at the same CI size
(CI_PARAMETERS), so the test is the same either way; a copy whose run raised fails it, named.

Checked: the build passes with Sphinx warnings as errors, in make test's budget (CPU seconds); every
tutorial has a page with every output, each plotly figure as the JSON its notebook stored; the home
page holds the course plan; tutorials not executed are named; no internal link is broken; the API
reference covers every name of ``lfads_nb.__all__`` (read now) and of ``data_generators``. Then
headless Chromium opens every tutorial page from disk with the network off (every request to a host blocked)
and checks that every figure drew marks in its SVG, with screenshots kept in test-artifacts/book/.
"""
from __future__ import annotations

import functools
import html
import importlib.util
import json
import os
import re
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

import data_generators
import lfads_nb
from lfads_nb._run_notebooks import execute, tutorial_paths
from test_browser import CHROMIUM, _require_tools, run_driver
from test_tutorials import ARTIFACTS, CI_PARAMETERS, PLOTLY_JSON

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = tutorial_paths(ROOT / "tutorials")
BOOK_ARTIFACTS = ROOT / "test-artifacts" / "book"
SITE = BOOK_ARTIFACTS / "site"
BUILD_CPU_BUDGET = 120  # seconds: the site may add at most 2 minutes to make test on 2 cores
DRIVER = ROOT / "tests" / "browser" / "drive_book.mjs"
# Seconds: one page's load, its figures drawn; DRIVER_LIMIT caps the whole run.
TIMEOUTS = {"action": 10, "load": 30, "figures": 30}
DRIVER_LIMIT = 180
# The only request a page may make off the site: MathJax, for the notebooks' maths (shown as TeX offline).
EXTERNAL_ALLOWED = re.compile(r"^https://cdn\.jsdelivr\.net/npm/mathjax@")


def _book_module():
    spec = importlib.util.spec_from_file_location("lfads_nb_book", ROOT / "docs" / "book.py")
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module


def _outputs(notebook: Path) -> list[dict]:
    return [o for c in json.loads(notebook.read_text())["cells"] for o in c.get("outputs", [])]


def _raised(notebook: Path) -> bool:
    return any(o.get("output_type") == "error" for o in _outputs(notebook))


@pytest.fixture(scope="session")
def executed() -> dict[str, Path]:
    """Every tutorial's CI-size executed copy; runs those missing or older than their source."""
    copies = {}
    for notebook in TUTORIALS:
        out_dir = ARTIFACTS / notebook.stem
        copy = out_dir / notebook.name
        if not copy.exists() or copy.stat().st_mtime < notebook.stat().st_mtime:
            print(f"test_book: executing {notebook.name} at CI size (no current copy in {out_dir})")
            shutil.rmtree(out_dir, ignore_errors=True)
            with pytest.MonkeyPatch.context() as env:
                env.setenv("LFADS_NB_LIVE", "0")  # as test_runs_under_papermill runs it
                execute(notebook, out_dir, CI_PARAMETERS[notebook.name])
        copies[notebook.name] = copy
    raised = [name for name, copy in copies.items() if _raised(copy)]
    assert not raised, (f"the CI-size runs of {raised} raised (see test_tutorials.py::test_runs_under_papermill and "
                        f"{ARTIFACTS}); the site publishes no page for a run that raised")
    return copies


@dataclass
class Build:
    returncode: int
    log: str
    cpu_s: float  # user + system seconds of the build process


def build_site(executed_dir: Path, out: Path, work: Path) -> Build:
    """``docs/book.py`` as ``make book`` runs it, in a child process whose CPU time is measured."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "book.py"), "--executed", str(executed_dir),
                             "--out", str(out), "--work", str(work)], capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Build(result.returncode, result.stdout + result.stderr, cpu)


@pytest.fixture(scope="session")
def site(executed) -> Build:
    built = build_site(ARTIFACTS, SITE, BOOK_ARTIFACTS / "work")
    BOOK_ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (BOOK_ARTIFACTS / "build.log").write_text(f"cpu_s={built.cpu_s:.1f} returncode={built.returncode}\n{built.log}")
    return built


def _page(name: str) -> str:
    return (SITE / name).read_text()


def test_site_builds_with_warnings_as_errors_within_budget(site):
    assert site.returncode == 0, site.log[-5000:]
    assert f"{len(TUTORIALS)} of {len(TUTORIALS)} tutorials published" in site.log, site.log[-3000:]
    assert site.cpu_s < BUILD_CPU_BUDGET, f"the site took {site.cpu_s:.0f} CPU s to build"


# --- every output on its page ---------------------------------------------------------------------

FIGURE = re.compile(r'<div class="lfads-nb-figure">.*?<script type="application/json">(.*?)</script></div>', re.S)


def _text(fragment: str) -> str:
    """Visible text of an HTML fragment, whitespace collapsed (none left before punctuation, where a
    closing tag stood)."""
    fragment = re.sub(r"<(script|style)\b.*?</\1>", " ", fragment, flags=re.S)
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())
    return re.sub(r"\s+(?=[.,;:!?)])|(?<=\()\s+", "", text)


def _output_text(output: dict) -> str:
    """What a non-figure output shows as text, whitespace collapsed ('' for images)."""
    if output["output_type"] == "stream":
        text = output["text"]
    else:
        data = output.get("data", {})
        if "text/html" in data:
            return _text("".join(data["text/html"]))
        text = data.get("text/plain", "")
    text = "".join(text) if isinstance(text, list) else text
    return _text(html.escape(re.sub(r"\x1b\[[0-9;]*m", "", text)))


@pytest.mark.parametrize("notebook", TUTORIALS, ids=lambda p: p.stem)
def test_every_tutorial_page_shows_every_output(site, executed, notebook):
    page = SITE / "tutorials" / f"{notebook.stem}.html"
    assert page.exists(), f"no page for {notebook.name}:\n{site.log[-3000:]}"
    body = page.read_text()
    outputs = _outputs(executed[notebook.name])
    stored = [o["data"][PLOTLY_JSON] for o in outputs if PLOTLY_JSON in o.get("data", {})]
    shown = [json.loads(payload) for payload in FIGURE.findall(body)]
    assert stored, f"{notebook.name}: no figure"
    assert shown == stored, f"{notebook.name}: {len(shown)} figures on the page, {len(stored)} in the notebook"
    text = _text(body)
    missing = [t[:120] for o in outputs if PLOTLY_JSON not in o.get("data", {}) for t in [_output_text(o)]
               if t and t not in text]
    assert not missing, f"{notebook.name}: outputs not on the page: {missing[:3]}"
    assert "plotly.min.js" in body and "cdn.plot.ly" not in body


# --- the home page, and tutorials not executed ----------------------------------------------------

def test_home_page_has_the_course_plan(site):
    book = _book_module()
    sections = book.readme_sections((ROOT / "README.md").read_text())
    plan = {row["#"]: row for row in book.markdown_table(sections[book.COURSE_SECTION], "#")}
    index = _page("index.html")
    text = _text(index)
    for t in book.tutorials(ARTIFACTS):
        assert f'href="{t.page}.html"' in index, t.source.name
        for said in (t.title, t.question, t.prerequisites, plan[t.number]["class time"], plan[t.number]["before class"]):
            first_line = said.splitlines()[0]  # the paragraph's first line: lists and line breaks render apart
            assert _text(book_markdown_to_text(first_line)) in text, (t.source.name, first_line)
    order = list(dict.fromkeys(re.findall(r'href="tutorials/(\d\d)_', index)))
    assert order == [p.name[:2] for p in TUTORIALS]


def book_markdown_to_text(markdown: str) -> str:
    """Markdown's inline marks dropped, as the page shows the text."""
    return re.sub(r"\*\*|\*|`|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", markdown)


# A 1x1 PNG: the static copy lfads_nb.display adds in place of the CDN HTML where kaleido works.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def test_site_names_the_tutorials_not_executed_or_failed(executed, tmp_path):
    """An instructor builds after running a few: here 01 ran (on a machine with kaleido: its figures
    carry PNG copies), 02's run raised, the rest did not run."""
    first, second = TUTORIALS[0], TUTORIALS[1]
    partial = tmp_path / "executed"
    partial.mkdir()
    with_png = json.loads(executed[first.name].read_text())
    for output in (o for c in with_png["cells"] for o in c.get("outputs", [])):
        if PLOTLY_JSON in output.get("data", {}):
            output["data"].pop("text/html", None)
            output["data"]["image/png"] = PNG
    (partial / first.name).write_text(json.dumps(with_png))
    failed = json.loads(executed[second.name].read_text())
    code = next(c for c in failed["cells"] if c["cell_type"] == "code")
    code["outputs"].append({"output_type": "error", "ename": "RuntimeError", "evalue": "boom", "traceback": []})
    (partial / second.name).write_text(json.dumps(failed))
    built = build_site(partial, tmp_path / "site", tmp_path / "work")
    assert built.returncode == 0, built.log[-5000:]
    assert f"1 of {len(TUTORIALS)} tutorials published" in built.log
    assert f"its run raised, not published: {partial / second.name}" in built.log
    for notebook in TUTORIALS[2:]:
        assert f"not executed yet: {notebook.name}" in built.log
    page = (tmp_path / "site" / "tutorials" / f"{first.stem}.html").read_text()
    stored = [o["data"][PLOTLY_JSON] for o in _outputs(partial / first.name) if PLOTLY_JSON in o.get("data", {})]
    assert [json.loads(f) for f in FIGURE.findall(page)] == stored, "the interactive figure, not its PNG copy"
    assert not (tmp_path / "site" / "tutorials" / f"{second.stem}.html").exists()
    index = _text((tmp_path / "site" / "index.html").read_text())
    named = index.split("Not on this site yet:", 1)[1][:2000]
    assert all(p.name in named for p in TUTORIALS[1:]) and first.name not in named


# --- links and the API reference ------------------------------------------------------------------

class _Anchors(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.links = set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        for key in ("href", "src"):
            if attrs.get(key):
                self.links.append(attrs[key])


@functools.cache
def _anchors(page: Path) -> _Anchors:
    parser = _Anchors()
    parser.feed(page.read_text())
    return parser


def test_no_broken_internal_link(site):
    broken = []
    pages = sorted(p for p in SITE.rglob("*.html") if "_static" not in p.parts)  # _static: the themes' templates
    for page in pages:
        for link in _anchors(page).links:
            parts = urlsplit(link)
            if parts.scheme or link.startswith("//"):
                continue  # off the site (Binder, Colab, papers)
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(SITE)}: {link}")
            elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in _anchors(target).ids:
                broken.append(f"{page.relative_to(SITE)}: {link} (no such anchor)")
    assert len(pages) > len(TUTORIALS)
    assert not broken, "\n".join(broken[:20])


def test_api_reference_covers_every_public_name(site):
    ids = set().union(*(_anchors(p).ids for p in (SITE / "api").glob("*.html")))
    names = {f"lfads_nb.{n}": n for n in lfads_nb.__all__} | {f"data_generators.{n}": n for n in data_generators.__all__}
    missing = [full for full in names if full not in ids and f"module-{full}" not in ids]
    assert not missing, f"not in the API reference: {missing}"
    for page in ("data", "kinds"):  # the data model and the data kinds, with their validation
        assert f"module-lfads_nb.data.{'schema' if page == 'data' else 'kinds'}" in _anchors(SITE / "api" / f"{page}.html").ids


# --- the figures in a browser, network off --------------------------------------------------------

def test_every_figure_draws_offline_in_chromium(site, executed, tmp_path):
    """The pages opened from disk (file://), as an instructor may; every request with a host is blocked."""
    _require_tools()
    assert site.returncode == 0, site.log[-3000:]
    pages = [f"tutorials/{p.stem}.html" for p in TUTORIALS]
    config = {"baseUrl": SITE.as_uri(), "pages": pages, "chromium": CHROMIUM,
              "userDataDir": str(tmp_path / "chromium-profile"), "timeouts": TIMEOUTS}
    result = run_driver(DRIVER, config, tmp_path, BOOK_ARTIFACTS, DRIVER_LIMIT)
    report = f"{result.get('error', '')}\n{result['log']}"
    assert "error" not in result and not result["pageErrors"], report
    assert all(EXTERNAL_ALLOWED.match(url) for url in result["blockedRequests"]), result["blockedRequests"]
    for path, notebook in zip(pages, TUTORIALS):
        seen = result["pages"][path]
        stored = [o["data"][PLOTLY_JSON] for o in _outputs(executed[notebook.name]) if PLOTLY_JSON in o.get("data", {})]
        assert len(seen["figures"]) == len(stored), (path, report)
        assert [s for s in seen["scripts"] if "plotly" in s.lower()] == [
            f"{config['baseUrl']}/_static/plotly.min.js"], seen["scripts"]
        for figure, data in zip(seen["figures"], stored):
            assert figure["state"] == "drawn", (path, figure)
            assert figure["traces"] == len(data["data"]) > 0, (path, figure)
            assert figure["width"] > 100 and figure["height"] > 100, (path, figure)
            assert figure["marks"] > 0 or figure["canvases"] > 0, (path, figure)  # drawn: SVG marks or WebGL
    assert len(result["screenshots"]) == len(pages) and all(os.path.getsize(p) > 10_000 for p in result["screenshots"])
