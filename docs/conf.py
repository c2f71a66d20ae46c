"""Sphinx configuration of the course website. ``docs/book.py`` stages the sources (executed
notebooks, the home page, the guides and the API pages) and runs Sphinx with this file, warnings
as errors; see the README's "The course as a website" and ``make book``.

The choice, as dynamax, JAX and pynapple make it: Sphinx + myst-nb (notebooks are read as they
were executed, never run here) + sphinx-book-theme (launch buttons for Binder and Colab on each
tutorial page). Plotly figures are drawn from the notebooks' plotly JSON (``_ext/plotly_figures.py``)
by one plotly.js shipped with the site.
"""
import io
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))  # the plotly figure renderer and its entry point (see its docstring)

REPOSITORY = "https://github.com/lfads-nb/lfads_nb"  # as in the README's Binder badge

project = "lfads_nb"
author = "the lfads_nb authors"
copyright = "the lfads_nb authors, MIT licence"
html_title = "lfads_nb: a course on LFADS"

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "html_image"]
myst_heading_anchors = 3
smartquotes = False  # the authors' quotes as written: code, 'train' and file names stay exact

# The notebooks arrive executed (make tutorials, papermill, CI): shown as they are.
nb_execution_mode = "off"
nb_output_stderr = "show"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
napoleon_google_docstring = False  # the library writes reStructuredText, numpy-style sections in places

html_theme = "sphinx_book_theme"
html_theme_options = {
    "repository_url": REPOSITORY,
    "repository_branch": "main",
    "path_to_docs": "",  # a tutorial's page name (tutorials/NN_name) is its notebook's path in the repository
    "use_repository_button": True,
    "use_download_button": True,
    "launch_buttons": {
        "binderhub_url": "https://mybinder.org",
        "colab_url": "https://colab.research.google.com",
        "notebook_interface": "jupyterlab",
    },
    "show_toc_level": 2,
}
html_static_path = ["_static"]
html_css_files = ["lfads_nb_book.css"]
FIGURE_MARKER = 'class="lfads-nb-figure"'  # what _ext/plotly_figures.py writes for each figure

PLAIN_TEXT_DOCSTRINGS = []  # objects whose docstring is not valid reStructuredText, shown verbatim


def _figure_scripts(app, pagename, templatename, context, doctree):
    """Pages with figures load plotly.js (one file for the whole site, cached by the browser) and
    the script that draws each figure from its plotly JSON."""
    if FIGURE_MARKER in context.get("body", ""):
        app.add_js_file("plotly.min.js")
        app.add_js_file("lfads_nb_figures.js")


def _ship_plotly(app, exception):
    """Copy the installed plotly's own plotly.min.js into the site, once."""
    if exception is None and app.builder.format == "html":
        import plotly

        bundled = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
        shutil.copyfile(bundled, Path(app.outdir) / "_static" / "plotly.min.js")


def _rst_problems(text: str) -> str:
    """What docutils reports parsing ``text`` alone (Sphinx's roles reduced to literals), '' if nothing."""
    from docutils.core import publish_doctree

    text = re.sub(r":[\w:.-]+:(`[^`]+`)", r"`\1`", text)
    report = io.StringIO()
    try:
        publish_doctree(text, settings_overrides={"report_level": 2, "halt_level": 5, "warning_stream": report})
    except Exception as err:  # docutils gave up on it
        return str(err)
    return report.getvalue()


def _verbatim_if_not_rst(app, what, name, obj, options, lines):
    """A docstring that is not valid reStructuredText is shown verbatim (as ``help()`` shows it)
    rather than broken, and named at the end of the build; the rest is rendered."""
    own = what == "module" or getattr(obj, "__module__", "").split(".")[0] in ("lfads_nb", "data_generators")
    if own and lines and _rst_problems("\n".join(lines)):
        PLAIN_TEXT_DOCSTRINGS.append(name)
        lines[:] = ["::", ""] + ["    " + line for line in lines] + [""]


def _name_plain_text_docstrings(app, exception):
    if PLAIN_TEXT_DOCSTRINGS:
        print(f"book: {len(PLAIN_TEXT_DOCSTRINGS)} docstrings are not valid reStructuredText and are shown "
              f"verbatim: {', '.join(PLAIN_TEXT_DOCSTRINGS)}")


def setup(app):
    app.connect("html-page-context", _figure_scripts)
    app.connect("build-finished", _ship_plotly)
    app.connect("autodoc-process-docstring", _verbatim_if_not_rst, priority=900)  # after napoleon's
    app.connect("build-finished", _name_plain_text_docstrings)
    return {"parallel_read_safe": False}
