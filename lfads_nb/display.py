"""Figures that stay interactive in JupyterLab and still show in every saved copy of a notebook.

Plotly's notebook default stores a figure as plotly JSON alone: JupyterLab draws it, but an
nbconvert HTML export (nbviewer, Jupyter Book, course websites) and GitHub's preview show nothing.
``import lfads_nb`` therefore makes the ``"lfads_nb"`` renderer plotly's default inside a Jupyter
kernel (unless the user chose one, e.g. with ``PLOTLY_RENDERER``). Every figure it shows carries

- ``application/vnd.plotly.v1+json``: the interactive figure JupyterLab and VS Code draw;
- ``image/png``, rendered when the figure is shown, if kaleido (>= 1) and a Chrome or Chromium
  are installed: what GitHub, nbviewer and nbconvert show (20-120 KB a figure);
- otherwise ``text/html`` that loads plotly.js from its CDN: nbconvert exports and nbviewer draw
  it when online (GitHub does not run scripts: there a short note names the figure instead);
- ``text/plain``: one line naming the figure, for terminals and text exports.

A missing static renderer never fails a notebook: the figure falls back to the HTML copy, with at
no warning where kaleido finds no browser (``plotly_get_chrome`` installs one) and one warning if
it fails otherwise. ``LFADS_NB_PNG=0`` skips the PNG (no browser is started).
"""
from __future__ import annotations

import atexit
import base64
import html
import os
import warnings

import plotly.io as pio
from plotly.io._base_renderers import MimetypeRenderer, PlotlyRenderer

RENDERER = "lfads_nb"
PNG_WIDTH = 900  # pixels, for figures that set no width (JupyterLab draws them full width)
PNG_HEIGHT = 500  # pixels, for figures that set no height (plotly's own default is 450-525)
_REPLACEABLE_DEFAULTS = ("plotly_mimetype", "jupyterlab", "plotly_mimetype+notebook")
_NOTE_CLASS = "lfads-nb-figure-note"

_png_state = {"usable": None}  # None: not tried yet; False: no static renderer here


def figure_title(fig_dict: dict) -> str:
    """The figure's title text, or 'untitled figure'."""
    title = fig_dict.get("layout", {}).get("title", {})
    text = title.get("text") if isinstance(title, dict) else title
    return str(text) if text else "untitled figure"


def _start_png_renderer() -> bool:
    """Whether kaleido can render here; starts its browser once, stopped at exit."""
    if os.environ.get("LFADS_NB_PNG", "1") == "0":
        return False
    try:
        import kaleido
    except ImportError:
        return False
    try:
        kaleido.start_sync_server(silence_warnings=True)
        atexit.register(kaleido.stop_sync_server, silence_warnings=True)
    except Exception:  # an old kaleido (< 1) has no server; to_image below says if it works
        pass
    return True


def to_png(fig_dict: dict) -> bytes | None:
    """The figure as PNG bytes, or None where no static renderer works (never raises)."""
    if _png_state["usable"] is None:
        _png_state["usable"] = _start_png_renderer()
    if not _png_state["usable"]:
        return None
    layout = fig_dict.get("layout", {})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # kaleido's notes about options a running server ignores
            return pio.to_image(fig_dict, format="png", width=layout.get("width") or PNG_WIDTH,
                                height=layout.get("height") or PNG_HEIGHT, validate=False)
    except Exception as err:  # no Chrome, a crashed browser: fall back to HTML from now on
        _png_state["usable"] = False
        if "chrome" not in str(err).lower():  # no browser is the expected case (Binder): the HTML says how
            warnings.warn(f"Figures are saved without a static PNG copy (kaleido could not render: "
                          f"{str(err).splitlines()[0][:200]}); set LFADS_NB_PNG=0 to skip trying.",
                          stacklevel=2)
        return None


def to_cdn_html(fig_dict: dict) -> str:
    """The figure as HTML that loads plotly.js from its CDN, with a note where scripts do not run."""
    note = (f'<div class="{_NOTE_CLASS}"><em>Interactive figure: {html.escape(figure_title(fig_dict))}. '
            "Open the notebook in JupyterLab, or re-run it with kaleido and Chrome installed "
            "(<code>pip install kaleido; plotly_get_chrome</code>) for a static image."
            "</em></div>")
    hide_note = (f"var note = document.getElementById('{{plot_id}}').parentElement.parentElement"
                 f".querySelector('.{_NOTE_CLASS}'); if (note) {{ note.remove(); }}")
    figure = pio.to_html(fig_dict, include_plotlyjs="cdn", full_html=False, default_width="100%",
                         default_height=fig_dict.get("layout", {}).get("height") or PNG_HEIGHT,
                         post_script=hide_note, validate=False)
    return f"<div>{note}{figure}</div>"


class StaticCopyRenderer(MimetypeRenderer):
    """Plotly JSON for JupyterLab plus a static copy (PNG, else CDN HTML) for everywhere else."""

    def to_mimebundle(self, fig_dict):
        bundle = PlotlyRenderer().to_mimebundle(dict(fig_dict))
        png = to_png(fig_dict)
        if png is not None:
            bundle["image/png"] = base64.b64encode(png).decode("ascii")
        else:
            bundle["text/html"] = to_cdn_html(fig_dict)
        bundle["text/plain"] = f"<figure: {figure_title(fig_dict)}>"
        return bundle


def activate() -> None:
    """Register the renderer; make it the default inside a Jupyter kernel unless the user chose one."""
    pio.renderers[RENDERER] = StaticCopyRenderer()
    if "PLOTLY_RENDERER" not in os.environ and pio.renderers.default in _REPLACEABLE_DEFAULTS:
        pio.renderers.default = RENDERER
