// Drives a running JupyterLab in headless Chromium for tests/test_browser.py.
//
//   node drive_lab.mjs CONFIG.json
//
// CONFIG (written by the test): baseUrl, token, notebook (path under the server root), chromium
// (executable), userDataDir (fresh, empty), artifactsDir, resultPath, traceName (the curve to
// watch), minGain and minSeconds (how many points the curve must gain, over at least how long,
// so that the second moment is live progress and not the first render catching up), stopLabel,
// and timeouts in seconds.
//
// The script logs in with the token, opens the notebook, runs all cells from the Run menu, reads
// the watched curve's points at two moments while training runs (once it has 2; then once it has
// minGain more and minSeconds have passed), clicks the dashboard's Stop button, waits until the
// notebook has halted, and writes what it saw to resultPath as JSON: the test, not this script,
// decides pass or fail. Every wait is bounded; on any error the result holds `error` (naming the
// step that failed) and a screenshot is taken. The browser is closed whatever happens.
import { readFileSync, writeFileSync } from 'node:fs';
import { launch, openAndRunAll, probe, screenshot, sleep, waitFor } from './lab.mjs';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const t0 = Date.now();
const elapsed = () => (Date.now() - t0) / 1000;
const log = (msg) => process.stderr.write(`[drive_lab ${elapsed().toFixed(1)}s] ${msg}\n`);

const result = {
  steps: [], samples: [], consoleErrors: [], pageErrors: [], blockedRequests: [], screenshots: [],
};
let step = 'start';
const enter = (name) => {
  step = name;
  result.steps.push({ step: name, t: elapsed() });
  log(name);
};

let context;
let page;
try {
  ({ context, page } = await launch(config, result, { width: 1400, height: 1000 }));
  await openAndRunAll(page, config, enter);

  // As a user would: scroll to the dashboard once it appears, so that plotly lays it out on screen.
  enter('wait for the dashboard and scroll to it');
  const stop = page.locator('.jp-OutputArea .jupyter-widgets button', { hasText: config.stopLabel }).first();
  await waitFor(page, 'the Stop button', config.timeouts.dashboard, async () => (await stop.count()) > 0,
    { whileRunning: true });

  enter(`wait for the '${config.traceName}' curve to draw points`);
  // One look at the figures (kept in result.samples, without the SVG paths) and at the prompts;
  // returns the watched trace ({t, prompts, name, length, drawn, path}) or null.
  const sample = async () => {
    const [figures, prompts] = [await probe(page, 'figures'), await probe(page, 'prompts')];
    const t = elapsed();
    result.samples.push({
      t, prompts, figures: figures.map((f) => ({ ...f, traces: f.traces.map(({ path, ...rest }) => rest) })),
    });
    const traces = figures.flatMap((f) => f.traces).filter((trace) => trace.name === config.traceName);
    return traces.length ? { t, prompts, ...traces[0] } : null;
  };
  result.moments = [await waitFor(page, 'at least 2 points', config.timeouts.firstPoints, async () => {
    const trace = await sample();
    return trace && trace.length >= 2 ? trace : null;
  }, { intervalMs: 200, whileRunning: true })];

  enter('wait for the curve to gain points while training');
  const more = `${config.minGain} more points, ${config.minSeconds} s later`;
  result.moments.push(await waitFor(page, more, config.timeouts.growth, async () => {
    const trace = await sample();
    const [first] = result.moments;
    return trace && trace.length >= first.length + config.minGain && trace.t >= first.t + config.minSeconds
      ? trace : null;
  }, { intervalMs: 200, whileRunning: true }));
  await screenshot(page, config, result, 'dashboard_training.png');

  enter('click Stop');
  await stop.click();
  result.stopClickedAt = elapsed();

  // The dashboard disables the button at once ('Stopping'); when training has ended it replaces its
  // widgets (button included) with static copies of its figures, so a saved notebook shows them.
  enter('wait for the dashboard to leave static figures');
  result.stopButton = await waitFor(page, 'the dashboard to be replaced by static figures', config.timeouts.stop,
    async () => ((await stop.count()) === 0 ? { replaced: true } : null));
  result.stoppedAt = elapsed();

  enter('wait for the notebook to halt');
  await waitFor(page, 'the notebook to halt', config.timeouts.finish, () => probe(page, 'halted'));
  result.finishedAt = elapsed();
  await sample();
  result.prompts = await probe(page, 'prompts');
  result.outputs = await probe(page, 'outputs');
  await screenshot(page, config, result, 'dashboard_stopped.png');
  enter('done');
} catch (err) {
  result.error = `${step}: ${err.message}`;
  log(`FAILED: ${result.error}`);
  if (page) {
    try {
      result.prompts = await probe(page, 'prompts');
      result.outputs = await probe(page, 'outputs');
      await screenshot(page, config, result, 'failure.png');
    } catch (inner) {
      log(`could not record the failure: ${inner.message}`);
    }
  }
} finally {
  await context?.close();
  writeFileSync(config.resultPath, JSON.stringify(result, null, 2));
  log(`wrote ${config.resultPath}`);
}
process.exit(result.error ? 1 : 0);
