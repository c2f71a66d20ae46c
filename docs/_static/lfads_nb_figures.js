// Draws every figure of a tutorial page from the plotly JSON its notebook stored
// (application/vnd.plotly.v1+json), with the plotly.js shipped once in _static: no CDN, works offline.
// docs/book.py writes each figure as <div class="lfads-nb-figure"> holding that JSON in a
// <script type="application/json">; the plot is drawn into the div beside it.
'use strict';
document.addEventListener('DOMContentLoaded', () => {
  for (const holder of document.querySelectorAll('.lfads-nb-figure')) {
    const figure = JSON.parse(holder.querySelector('script[type="application/json"]').textContent);
    const plot = holder.querySelector('.lfads-nb-plot');
    const config = { ...(figure.config ?? {}), responsive: true };
    Plotly.newPlot(plot, figure.data ?? [], figure.layout ?? {}, config).then(
      () => holder.classList.add('lfads-nb-drawn'),
      (err) => { holder.classList.add('lfads-nb-failed'); console.error('figure not drawn:', err); },
    );
  }
});
