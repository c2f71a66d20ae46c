"""Training progress and the explorer: a live view in JupyterLab, static figures and text everywhere else.

``progress`` (the protocols the training loops report to, and the live-or-text rule), ``text``
(printed lines and static figures), ``live`` (ipywidgets dashboards with a Stop button),
``figures`` (the figures both draw), ``kernel`` (the message pump that lets a Stop button reach a
running cell) and ``explorer`` (linked views of what a trained model inferred).
"""
from .explorer import Explorer, explore
from .live import LiveDashboard, PBTLiveDashboard
from .progress import PBTProgress, Progress, choose_live
from .text import PBTTextProgress, TextProgress


def make_progress(live: bool | None = None) -> Progress:
    """The live dashboard or text progress of ``train``, chosen by :func:`choose_live`."""
    return LiveDashboard() if choose_live(live) else TextProgress()


def make_pbt_progress(live: bool | None = None) -> PBTProgress:
    """The live PBT dashboard or text progress, chosen as :func:`make_progress` chooses."""
    return PBTLiveDashboard() if choose_live(live) else PBTTextProgress()


__all__ = ["Explorer", "LiveDashboard", "PBTLiveDashboard", "PBTProgress", "PBTTextProgress", "Progress",
           "TextProgress", "choose_live", "explore", "make_pbt_progress", "make_progress"]
