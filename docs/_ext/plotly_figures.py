"""A myst-nb mime renderer: every plotly figure a notebook stored (``application/vnd.plotly.v1+json``,
as ``lfads_nb.display`` writes it) becomes a figure drawn in the page by the plotly.js that the site
ships once (``docs/conf.py``) and ``_static/lfads_nb_figures.js``; no CDN, works offline.

myst-nb finds mime renderers by entry point (group ``myst_nb.mime_renderers``); this folder holds
the entry point's record (``lfads_nb_book-0.dist-info``), and ``docs/conf.py`` puts the folder on
``sys.path``, so the renderer exists only while the site builds. HTML builders render the plotly
JSON first; others keep their order (LaTeX takes the PNG copy when kaleido made one).
"""
from __future__ import annotations

import json

from docutils import nodes

PLOTLY_JSON = "application/vnd.plotly.v1+json"
HTML_BUILDERS = ("html", "dirhtml", "singlehtml")
DEFAULT_HEIGHT = 500  # pixels, as lfads_nb.display.PNG_HEIGHT: plotly's own default is 450-525


def figure_html(figure: dict) -> str:
    """The figure's holder: a plot div sized to the figure's height and its JSON, which the page draws."""
    payload = json.dumps(figure, separators=(",", ":")).replace("</", "<\\/")  # no '</script>' inside
    height = (figure.get("layout") or {}).get("height") or DEFAULT_HEIGHT
    return (f'<div class="lfads-nb-figure"><div class="lfads-nb-plot" style="height: {int(height)}px"></div>'
            f'<script type="application/json">{payload}</script></div>')


class PlotlyFigure:
    """myst-nb's MimeRenderPlugin protocol for the plotly JSON mime type."""

    mime_priority_overrides = [(builder, PLOTLY_JSON, 5) for builder in HTML_BUILDERS]

    @staticmethod
    def handle_mime(renderer, data, inline):
        if data.mime_type != PLOTLY_JSON or inline:
            return None
        return [nodes.raw(text=figure_html(data.content), format="html", classes=["output", "text_html"])]
