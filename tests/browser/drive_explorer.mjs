// Drives the explorer (lfads_nb.explore) in a running JupyterLab, headless Chromium, for
// tests/test_browser_explorer.py.
//
//   node drive_explorer.mjs CONFIG.json
//
// CONFIG (written by the test): baseUrl, token, notebook, chromium, userDataDir, artifactsDir,
// resultPath, trialIndex (the option to pick in the trial dropdown), sliderFraction (where along
// the time slider's track to click), timeouts in seconds (action, load, explorer, update).
//
// The script logs in, opens the notebook, runs all cells, waits for the explorer's widgets and
// both figures, reads what the figures show (per trace: name and its first coordinates; the
// time-marker shapes; titles), picks another trial in the trial dropdown, waits for the figures
// to change and reads them again, clicks the time slider's track, waits and reads them a third
// time, with a screenshot at each stage. It writes what it saw to resultPath as JSON; the test
// decides pass or fail. Every wait is bounded; on error the result holds `error` and a screenshot.
import { readFileSync, writeFileSync } from 'node:fs';
import { launch, openAndRunAll, probe, screenshot, sleep, waitFor } from './lab.mjs';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const t0 = Date.now();
const log = (msg) => process.stderr.write(`[drive_explorer ${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}\n`);
const result = { steps: [], stages: {}, consoleErrors: [], pageErrors: [], blockedRequests: [], screenshots: [] };
let step = 'start';
const enter = (name) => { step = name; result.steps.push(name); log(name); };

// Read-only probes of the explorer's figures, installed in every page as window.explorerProbe
// (beside lab.mjs's window.labProbe).
function installExplorerProbes() {
  const panel = () => document.querySelector('.jp-NotebookPanel');
  window.explorerProbe = {
    // Per plotly figure in the outputs: title, the time-marker shapes' x, and per trace its name,
    // first 3 x values and a checksum of its z (heatmap) or coordinates, from what plotly holds.
    figures() {
      const sum = (a) => (a ? a.flat(2).reduce((s, v) => s + (Number.isFinite(+v) ? +v : 0), 0) : null);
      return [...(panel()?.querySelectorAll('.jp-OutputArea .js-plotly-plot') ?? [])].map((gd) => ({
        title: gd.layout?.title?.text ?? '',
        shapes: (gd.layout?.shapes ?? []).map((s) => s.x0),
        traces: (gd.data ?? []).map((t) => ({
          name: t.name ?? '',
          x: t.x ? Array.from(t.x).slice(0, 3) : [],
          checksum: t.type === 'heatmap' ? sum(t.z) : sum([t.x, t.y, t.z].filter(Boolean).map((a) => Array.from(a))),
        })),
      }));
    },
  };
}

const figures = (page) => page.evaluate(() => window.explorerProbe.figures());

let context;
let page;
try {
  ({ context, page } = await launch(config, result, { width: 1500, height: 1000 }, [installExplorerProbes]));
  await openAndRunAll(page, config, enter);

  enter('wait for the explorer');
  const dropdowns = page.locator('.jp-OutputArea .widget-dropdown select');
  await waitFor(page, 'the condition and trial dropdowns', config.timeouts.explorer, async () => (await dropdowns.count()) >= 2);
  await dropdowns.first().scrollIntoViewIfNeeded(); // as a user would, so plotly lays the figures out on screen
  await waitFor(page, 'both figures drawn', config.timeouts.explorer, async () => {
    const seen = await figures(page);
    return seen.length >= 2 && seen.every((f) => f.traces.length > 0);
  });
  await waitFor(page, 'the notebook to halt', config.timeouts.load, () => probe(page, 'halted'));
  await sleep(500);
  result.stages.initial = await figures(page);
  await screenshot(page, config, result, 'explorer_initial.png');

  const changed = (before) => async () => {
    const now = await figures(page);
    return JSON.stringify(now) !== JSON.stringify(before) ? now : null;
  };

  enter('pick another trial');
  await dropdowns.nth(1).selectOption({ index: config.trialIndex });
  result.pickedTrial = await dropdowns.nth(1).inputValue().catch(() => null);
  result.pickedLabel = await dropdowns.nth(1).evaluate((s) => s.options[s.selectedIndex].text);
  await waitFor(page, 'the figures to follow the trial', config.timeouts.update, changed(result.stages.initial));
  await sleep(500); // both figures: let the second catch up before reading
  result.stages.trial = await figures(page);
  await screenshot(page, config, result, 'explorer_trial_picked.png');

  enter('move the time slider');
  const track = page.locator('.jp-OutputArea .widget-hslider .noUi-base').first();
  const box = await track.boundingBox();
  await page.mouse.click(box.x + box.width * config.sliderFraction, box.y + box.height / 2);
  result.sliderReadout = await page.locator('.jp-OutputArea .widget-hslider .widget-readout').first().textContent();
  await waitFor(page, 'the figures to follow the slider', config.timeouts.update, changed(result.stages.trial));
  await sleep(500);
  result.stages.time = await figures(page);
  result.sliderReadout = await page.locator('.jp-OutputArea .widget-hslider .widget-readout').first().textContent();
  result.outputs = await probe(page, 'outputs');
  await screenshot(page, config, result, 'explorer_time_moved.png');
  enter('done');
} catch (err) {
  result.error = `${step}: ${err.message}`;
  log(`FAILED: ${result.error}`);
  if (page) {
    try {
      result.lastFigures = await figures(page);
      await screenshot(page, config, result, 'explorer_failure.png');
    } catch (inner) { log(`no failure screenshot: ${inner.message}`); }
  }
} finally {
  await context?.close();
  writeFileSync(config.resultPath, JSON.stringify(result, null, 2));
}
process.exit(result.error ? 1 : 0);
