"""Figures shown in a Jupyter kernel carry a static copy beside the interactive plotly JSON."""
from __future__ import annotations

import base64
import importlib.util

import plotly.graph_objects as go
import plotly.io as pio
import pytest

from lfads_nb import display

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _figure():
    return go.Figure(go.Scatter(y=[1, 3, 2]), layout=dict(title="a <test> figure", height=300)).to_dict()


@pytest.fixture
def fresh_state(monkeypatch):
    monkeypatch.setitem(display._png_state, "usable", None)


def test_without_static_renderer_the_figure_carries_cdn_html(fresh_state, monkeypatch):
    monkeypatch.setenv("LFADS_NB_PNG", "0")
    bundle = display.StaticCopyRenderer().to_mimebundle(_figure())
    assert set(bundle) == {"application/vnd.plotly.v1+json", "text/html", "text/plain"}
    page = bundle["text/html"]
    assert 'class="plotly-graph-div"' in page and "cdn.plot.ly" in page
    assert "a &lt;test&gt; figure" in page  # the note GitHub shows names the figure, escaped
    assert bundle["text/plain"] == "<figure: a <test> figure>"


def test_a_png_replaces_the_html(fresh_state, monkeypatch):
    """With a PNG there is no text/html: nbconvert and GitHub prefer HTML, which GitHub cannot run."""
    monkeypatch.setattr(display, "_start_png_renderer", lambda: True)
    monkeypatch.setattr(pio, "to_image", lambda fig, **kw: PNG_MAGIC + b"fake")
    bundle = display.StaticCopyRenderer().to_mimebundle(_figure())
    assert set(bundle) == {"application/vnd.plotly.v1+json", "image/png", "text/plain"}
    assert base64.b64decode(bundle["image/png"]) == PNG_MAGIC + b"fake"


def test_a_failing_renderer_falls_back_once_with_one_warning(fresh_state, monkeypatch):
    monkeypatch.setattr(display, "_start_png_renderer", lambda: True)
    calls = []

    def no_browser(fig, **kw):
        calls.append(1)
        raise RuntimeError("the browser crashed")

    monkeypatch.setattr(pio, "to_image", no_browser)
    with pytest.warns(UserWarning, match="the browser crashed"):
        first = display.StaticCopyRenderer().to_mimebundle(_figure())
    second = display.StaticCopyRenderer().to_mimebundle(_figure())
    assert "text/html" in first and "text/html" in second and len(calls) == 1


def test_no_browser_falls_back_silently(fresh_state, monkeypatch, recwarn):
    """Binder and pip-only laptops have kaleido without Chrome: no warning in every notebook."""
    monkeypatch.setattr(display, "_start_png_renderer", lambda: True)

    def no_chrome(fig, **kw):
        raise RuntimeError("Kaleido requires Google Chrome to be installed. Install it with plotly_get_chrome")

    monkeypatch.setattr(pio, "to_image", no_chrome)
    assert "text/html" in display.StaticCopyRenderer().to_mimebundle(_figure())
    assert not recwarn.list


def test_activate_replaces_only_plotlys_notebook_default(monkeypatch):
    monkeypatch.delenv("PLOTLY_RENDERER", raising=False)
    monkeypatch.setattr(pio.renderers, "default", "plotly_mimetype")
    display.activate()
    assert pio.renderers.default == display.RENDERER
    monkeypatch.setattr(pio.renderers, "default", "browser")  # a user's choice stays
    display.activate()
    assert pio.renderers.default == "browser"


@pytest.mark.skipif(importlib.util.find_spec("kaleido") is None, reason="kaleido (>= 1) is not installed")
def test_real_png_with_kaleido(fresh_state):
    """End to end where kaleido and a Chrome/Chromium exist (skipped elsewhere)."""
    bundle = display.StaticCopyRenderer().to_mimebundle(_figure())
    if "image/png" not in bundle:
        pytest.skip("kaleido is installed but found no browser")
    png = base64.b64decode(bundle["image/png"])
    assert png.startswith(PNG_MAGIC) and len(png) > 5000
