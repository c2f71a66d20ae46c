"""Build the course website from executed tutorials, without executing them again.

    python docs/book.py [--executed build/tutorials] [--out build/book]

``make book`` runs this. It stages a Sphinx source folder in ``build/.book/src`` and builds it with
``docs/conf.py`` into ``--out``, warnings as errors:

- ``index``: the course, in order: each tutorial's title, question and prerequisites, read from its
  notebook's first cell, beside its class time and what to run before class (the README's course
  plan) and its CPU time (the README's tutorial table), and the tutorials not executed yet, named;
- ``tutorials/NN_name``: every executed copy found in ``--executed`` (``NN_name.ipynb`` there, as
  ``make tutorials`` writes, or ``NN_name/NN_name.ipynb``, as the CI's papermill test writes),
  with every output; a copy whose run raised is named, not published;
- ``guides/*``: the README's sections on the data model, training, PBT and Ray, and teaching;
- ``api/*``: autodoc pages for every name in ``lfads_nb.__all__``, the data model, the data kinds
  and ``data_generators``.

The notebooks are copied as they were executed; ``docs/_ext/plotly_figures.py`` draws each plotly
figure from the plotly JSON the notebook stored, with the plotly.js ``conf.py`` ships once (no CDN).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
REPOSITORY = "https://github.com/lfads-nb/lfads_nb"

# The README's sections published as guides: (page, the README heading).
GUIDES = [
    ("data-model", "The data model"),
    ("training", "Training LFADS"),
    ("pbt", "AutoLFADS: population-based training"),  # with its subsection on Ray Tune
    ("teaching", "Teach a course with lfads_nb"),
]
COURSE_SECTION = "Teach a course with lfads_nb"  # holds the course plan table (#, class time, before class)
TUTORIAL_TABLE_SECTION = "The tutorials"  # holds each tutorial's CPU time at defaults


class BookError(ValueError):
    """The sources of the site are not as this build expects; the message says what to fix."""


# --- reading the README and the notebooks ------------------------------------------------------

def readme_sections(text: str) -> dict[str, str]:
    """The README's ``## `` sections by heading, each with its ``###`` subsections."""
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {title.strip(): body.strip("\n") for title, body in zip(parts[1::2], parts[2::2])}


def markdown_table(text: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the first markdown table in ``text`` whose first header cell is ``first_header``."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = _cells(line)
        if cells and cells[0] == first_header and i + 1 < len(lines) and set(lines[i + 1]) <= set("|-: "):
            rows = []
            for row in lines[i + 2:]:
                if not row.strip().startswith("|"):
                    break
                rows.append(dict(zip(cells, _cells(row))))
            return rows
    raise BookError(f"no table with first column {first_header!r} found")


def _cells(line: str) -> list[str]:
    line = line.strip()
    if not line.startswith("|"):
        return []
    return [c.strip() for c in line.strip("|").split("|")]


def _by_number(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {row["#"]: row for row in rows}


@dataclass
class Tutorial:
    """One tutorial of ``tutorials/``: its source, what its first cell says, and its executed copy."""

    source: Path
    title: str
    question: str
    prerequisites: str
    executed: Path | None  # the executed copy found, or None
    failed: bool  # the executed copy holds an error output (its run raised)

    @property
    def number(self) -> str:
        return self.source.name[:2]

    @property
    def page(self) -> str:
        return f"tutorials/{self.source.stem}"


def _paragraph(text: str, lead: str) -> str:
    """The paragraph of ``text`` that starts with ``lead`` (up to the next blank line)."""
    match = re.search(rf"^{re.escape(lead)}.*?(?=\n\s*\n|\Z)", text, flags=re.M | re.S)
    if not match:
        raise BookError(f"the first cell has no paragraph starting with {lead!r}")
    return match.group(0).strip()


def read_tutorial(source: Path, executed_dir: Path) -> Tutorial:
    cells = json.loads(source.read_text())["cells"]
    first = "".join(cells[0]["source"]) if cells and cells[0]["cell_type"] == "markdown" else ""
    title = re.search(r"^# (.+)$", first, flags=re.M)
    if not title:
        raise BookError(f"{source.name}: its first cell must be markdown opening with '# NN · title'")
    try:
        question, prerequisites = _paragraph(first, "**The question.**"), _paragraph(first, "**Prerequisites.**")
    except BookError as err:
        raise BookError(f"{source.name}: {err}") from None
    executed = next((p for p in (executed_dir / source.name, executed_dir / source.stem / source.name)
                     if p.is_file()), None)
    failed = executed is not None and any(
        o.get("output_type") == "error"
        for c in json.loads(executed.read_text())["cells"] for o in c.get("outputs", []))
    return Tutorial(source, title.group(1).strip(), question, prerequisites, executed, failed)


def tutorials(executed_dir: Path) -> list[Tutorial]:
    from lfads_nb._run_notebooks import tutorial_paths

    return [read_tutorial(p, executed_dir) for p in tutorial_paths(ROOT / "tutorials")]


# --- staging ------------------------------------------------------------------------------------

def _absolute_links(markdown: str) -> str:
    """Relative links of the README point into the repository on GitHub."""
    return re.sub(r"\]\((?!https?://|#|mailto:)([^)\s]+)\)", rf"]({REPOSITORY}/blob/main/\1)", markdown)


def stage_guides(sections: dict[str, str], src: Path) -> None:
    for page, heading in GUIDES:
        if heading not in sections:
            raise BookError(f"the README has no section '## {heading}' (docs/book.py GUIDES publishes it)")
        body = re.sub(r"^###", "##", sections[heading], flags=re.M)
        (src / "guides").mkdir(parents=True, exist_ok=True)
        (src / "guides" / f"{page}.md").write_text(f"# {heading}\n\n{_absolute_links(body)}\n")


def _course_entry(t: Tutorial, plan: dict, costs: dict) -> str:
    row, cost = plan.get(t.number), costs.get(t.number)
    if row is None:
        raise BookError(f"the README's course plan ('## {COURSE_SECTION}') has no row for tutorial {t.number}")
    if t.executed is None:
        status = "\n:::{note}\nNot executed yet: run `make tutorials` (or papermill), then `make book`.\n:::\n"
        heading = t.title
    elif t.failed:
        status = f"\n:::{{warning}}\nIts run raised (see `{t.executed}`): fix it and run it again.\n:::\n"
        heading = t.title
    else:
        status, heading = "", f"[{t.title}]({t.page}.ipynb)"
    facts = [f"**Class time** {row['class time']}", f"**Before class** {row['before class']}"]
    if cost:
        facts.append(f"**CPU time at the defaults** {_cost(cost)}")
    return "\n\n".join([f"### {heading}", " · ".join(facts), t.question, t.prerequisites]) + "\n" + status


def _cost(row: dict) -> str:
    return next(v for k, v in row.items() if k.startswith("CPU time"))


def stage_index(tuts: list[Tutorial], sections: dict[str, str], src: Path) -> None:
    plan = _by_number(markdown_table(sections[COURSE_SECTION], "#"))
    costs = _by_number(markdown_table(sections[TUTORIAL_TABLE_SECTION], "#"))
    published = [t for t in tuts if t.executed and not t.failed]
    missing = [t for t in tuts if t not in published]
    intro = open_paragraph(ROOT / "README.md")
    lines = [
        "# lfads_nb: a course on LFADS", "", intro, "",
        f"{len(tuts)} tutorials, one a class, in order. Each page is a notebook run end to end, with every "
        "output; the launch buttons at its top open the notebook on Binder (everything installed) or "
        "Colab (run `%pip install git+" + REPOSITORY + "` in a first cell there). "
        "[Teach a course](guides/teaching.md) says how to prepare the classes.", "",
    ]
    if missing:
        names = ", ".join(f"`{t.source.name}`" for t in missing)
        lines += [":::{important}", f"Not on this site yet: {names}. Run them (`make tutorials`), then `make book`.",
                  ":::", ""]
    lines += ["## The course", ""] + [_course_entry(t, plan, costs) for t in tuts]
    lines += _toctree("Tutorials", [t.page for t in published])
    lines += _toctree("Guides", [f"guides/{page}" for page, _ in GUIDES])
    lines += _toctree("Reference", ["api/index"])
    (src / "index.md").write_text("\n".join(lines) + "\n")


def open_paragraph(readme: Path) -> str:
    """The README's first paragraph of prose (after the title and the badges)."""
    blocks = [b.strip() for b in readme.read_text().split("\n\n")]
    return next(b for b in blocks if b and not b.startswith(("#", "[![")))


def _toctree(caption: str, pages: list[str]) -> list[str]:
    return ["", "```{toctree}", ":hidden:", f":caption: {caption}", ""] + pages + ["```", ""]


# --- the API reference ----------------------------------------------------------------------------

def _directive(module: str, name: str, obj) -> str:
    import inspect

    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return f".. autoexception:: {module}.{name}\n"
    if inspect.isclass(obj):
        return f".. autoclass:: {module}.{name}\n   :members:\n"
    if callable(obj):
        return f".. autofunction:: {module}.{name}\n"
    return _data_directive(module, name, obj)


def _data_directive(module: str, name: str, obj) -> str:
    """A constant: its type, the module that defines it, and its value where that reads as text."""
    import inspect

    kind = type(obj)
    home = next((sys.modules[m].__name__ for m in sorted(sys.modules) if m.startswith(module + ".")
                 and getattr(sys.modules[m], name, None) is obj
                 and re.search(rf"^{name}\s*[:=]", inspect.getsource(sys.modules[m]), flags=re.M)), module)
    value = repr(obj)
    if isinstance(obj, dict) and " at 0x" in value:
        value = "{" + ", ".join(f"{k!r}: ..." for k in obj) + "}"
    body = [f".. py:data:: {name}", f"   :module: {module}", f"   :type: {kind.__module__}.{kind.__qualname__}", "",
            f"   Defined in ``{home}``.", "", "   ::", ""]
    return "\n".join(body + ["      " + line for line in value.splitlines()]) + "\n"


def _rst_page(title: str, body: list[str]) -> str:
    return "\n".join([title, "=" * len(title), "", *body]) + "\n"


def _names_page(module_name: str, title: str, intro: str) -> tuple[str, list[str]]:
    """A page documenting every name in the module's ``__all__`` (read now); and the modules among them."""
    import importlib
    import inspect

    module = importlib.import_module(module_name)
    modules = [n for n in module.__all__ if inspect.ismodule(getattr(module, n))]
    body = [f".. module:: {module_name}", "   :no-index:", "", intro, ""]
    body += [_directive(module_name, n, getattr(module, n)) for n in module.__all__ if n not in modules]
    return _rst_page(title, body), modules


def stage_api(src: Path) -> None:
    """A page for ``lfads_nb.__all__`` (each module in it on its own page), the data model, the data
    kinds and ``data_generators.__all__``."""
    api = src / "api"
    api.mkdir(parents=True, exist_ok=True)
    page, modules = _names_page("lfads_nb", "lfads_nb", "Every public name of ``lfads_nb`` (its ``__all__``); "
                                "the modules among them have a page each.")
    (api / "lfads_nb.rst").write_text(page)
    for n in modules:
        (api / f"{n}.rst").write_text(_rst_page(f"lfads_nb.{n}", [f".. automodule:: lfads_nb.{n}\n   :members:\n"]))
    (api / "data.rst").write_text(_rst_page("The data model", [
        ".. automodule:: lfads_nb.data.schema\n   :members:\n", ".. automodule:: lfads_nb.data.sessions\n   :members:\n"]))
    (api / "kinds.rst").write_text(_rst_page("Data kinds", [".. automodule:: lfads_nb.data.kinds\n   :members:\n"]))
    page, _ = _names_page("data_generators", "Synthetic data: data_generators",
                          "Generators of synthetic data with known ground truth (``data_generators.__all__``).")
    (api / "generators.rst").write_text(page)
    pages = ["lfads_nb", *modules, "data", "kinds", "generators"]
    (api / "index.rst").write_text(_rst_page("API reference", [
        "Generated from the docstrings.", "", ".. toctree::", "", *[f"   {p}" for p in pages]]))


# --- the build ------------------------------------------------------------------------------------

def stage(executed_dir: Path, src: Path) -> list[Tutorial]:
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    tuts = tutorials(executed_dir)
    sections = readme_sections((ROOT / "README.md").read_text())
    for t in tuts:
        if t.executed and not t.failed:
            (src / "tutorials").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(t.executed, src / f"{t.page}.ipynb")
    stage_index(tuts, sections, src)
    stage_guides(sections, src)
    stage_api(src)
    return tuts


def build(executed_dir: Path, out: Path, work: Path) -> int:
    """Stage and build; returns Sphinx's exit status. Says which tutorials are not on the site."""
    from sphinx.cmd.build import build_main

    tuts = stage(executed_dir, work / "src")
    html = work / "html"  # built here, then moved to ``out``: myst-nb writes beside its output folder
    shutil.rmtree(html, ignore_errors=True)
    status = build_main(["-b", "html", "-W", "--keep-going", "-q", "-E", "-c", str(DOCS),
                         "-d", str(work / "doctrees"), str(work / "src"), str(html)])
    shutil.rmtree(out, ignore_errors=True)
    if status == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(html, out)
    published = [t.source.stem for t in tuts if t.executed and not t.failed]
    print(f"book: {len(published)} of {len(tuts)} tutorials published in {out}/index.html")
    for t in tuts:
        if t.executed is None:
            print(f"book: not executed yet: {t.source.name} (no {t.source.name} in {executed_dir})")
        elif t.failed:
            print(f"book: its run raised, not published: {t.executed}")
    return status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executed", type=Path, default=ROOT / "build" / "tutorials",
                        help="folder of executed tutorials (default: build/tutorials, what make tutorials writes)")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "book", help="the site (default: build/book)")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / ".book",
                        help="staged sources and Sphinx's cache (default: build/.book)")
    args = parser.parse_args(argv)
    try:
        return build(args.executed.resolve(), args.out.resolve(), args.work.resolve())
    except BookError as err:
        print(f"book: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
