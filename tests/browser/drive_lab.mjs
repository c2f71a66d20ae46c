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
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const t0 = Date.now();
const elapsed = () => (Date.now() - t0) / 1000;
const log = (msg) => process.stderr.write(`[drive_lab ${elapsed().toFixed(1)}s] ${msg}\n`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const result = {
  steps: [], samples: [], consoleErrors: [], pageErrors: [], blockedRequests: [], screenshots: [],
};
let step = 'start';
const enter = (name) => {
  step = name;
  result.steps.push({ step: name, t: elapsed() });
  log(name);
};

// Read-only probes of the JupyterLab DOM, installed in every page as `window.labProbe`.
function installProbes() {
  const panel = () => document.querySelector('.jp-NotebookPanel');
  const codePrompts = () => [...(panel()?.querySelectorAll('.jp-CodeCell .jp-InputPrompt') ?? [])];
  window.labProbe = {
    // True once the notebook's kernel is connected and idle. The toolbar's execution indicator
    // alone also says 'idle' before any kernel is attached, so the kernel name must be there too.
    kernelIdle() {
      const status = panel()?.querySelector('.jp-Notebook-ExecutionIndicator')?.getAttribute('data-status');
      const kernel = panel()?.querySelector('.jp-KernelName')?.textContent.trim() ?? '';
      return status === 'idle' && kernel !== '' && kernel !== 'No Kernel';
    },
    // The code cells' execution prompts ('[*]:' while queued or running, '[n]:' when done).
    prompts() {
      return codePrompts().map((p) => p.textContent.trim());
    },
    // True once no cell is queued or running and the kernel is idle (also after an error).
    halted() {
      return this.kernelIdle() && !this.prompts().some((p) => p.startsWith('[*]'));
    },
    // Per plotly figure in the outputs: its title, and per trace its name, the number of points
    // plotly holds for it (`_fullData[i]._length`, set on every redraw), and what the SVG shows:
    // `drawn`, the line vertices plus markers (plotly drops near-collinear line vertices, so this
    // is at most `length`), and `path`, the line's outline (plotly binds each trace's SVG group to
    // its calcdata, which names the trace).
    figures() {
      return [...(panel()?.querySelectorAll('.jp-OutputArea .js-plotly-plot') ?? [])].map((gd) => {
        const svg = new Map();
        for (const g of gd.querySelectorAll('.scatterlayer > .trace')) {
          const path = [...g.querySelectorAll('path.js-line')].map((p) => p.getAttribute('d') ?? '').join('');
          const drawn = (path.match(/[ML]/g) ?? []).length + g.querySelectorAll('path.point').length;
          svg.set(g.__data__?.[0]?.trace?.index, { drawn, path });
        }
        return {
          title: gd.querySelector('.gtitle')?.textContent ?? '',
          traces: (gd._fullData ?? []).map((trace) => ({
            name: trace.name ?? '',
            length: trace._length ?? null,
            ...(svg.get(trace.index) ?? { drawn: 0, path: '' }),
          })),
        };
      });
    },
    // Every cell's prompt and output text, and how many stderr outputs it shows.
    outputs() {
      return [...(panel()?.querySelectorAll('.jp-Cell') ?? [])].map((cell, index) => ({
        index,
        kind: cell.classList.contains('jp-CodeCell') ? 'code' : 'other',
        prompt: cell.querySelector('.jp-InputPrompt')?.textContent.trim() ?? '',
        // textContent, not innerText: cells scrolled out of view are not rendered (JupyterLab's
        // content-visibility windowing) and their innerText is empty.
        text: [...cell.querySelectorAll('.jp-OutputArea-output')].map((o) => o.textContent).join('\n'),
        stderr: cell.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').length,
      }));
    },
  };
}

const probe = (page, name) => page.evaluate((n) => window.labProbe[n](), name);

// Polls probe() until it returns something truthy and returns that. Gives up after `seconds`, or
// as soon as the notebook has halted (kernel idle, nothing queued) when `whileRunning` says the
// awaited thing can only happen while cells run: e.g. a cell raised and run-all stopped.
async function waitFor(page, what, seconds, probe, { intervalMs = 250, whileRunning = false } = {}) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (whileRunning && (await page.evaluate(() => window.labProbe.halted()))) {
      throw new Error(`the notebook stopped running before ${what} (see the cells' outputs)`);
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${seconds} s waiting for ${what}`);
    await sleep(intervalMs);
  }
}

async function screenshot(page, name) {
  const path = join(config.artifactsDir, name);
  await page.screenshot({ path, fullPage: false });
  result.screenshots.push(path);
}

const context = await chromium.launchPersistentContext(config.userDataDir, {
  executablePath: config.chromium,
  headless: true,
  viewport: { width: 1400, height: 1000 },
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-dev-shm-usage',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
let page;
try {
  const { hostname } = new URL(config.baseUrl);
  await context.route(
    (url) => url.hostname !== hostname,
    (route) => { result.blockedRequests.push(route.request().url()); return route.abort(); },
  );
  await context.addInitScript(installProbes);
  page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(config.timeouts.action * 1000);
  page.on('console', (m) => { if (m.type() === 'error') result.consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => result.pageErrors.push(String(e)));

  enter('log in with the token');
  const next = `/lab/tree/${config.notebook.split('/').map(encodeURIComponent).join('/')}`;
  await page.goto(`${config.baseUrl}/login?next=${encodeURIComponent(next)}`);
  await page.fill('#password_input', config.token);
  await page.click('#login_submit');

  enter('open the notebook and wait for its kernel');
  await page.waitForSelector('.jp-NotebookPanel .jp-Notebook', { timeout: config.timeouts.load * 1000 });
  await waitFor(page, 'the kernel to be idle', config.timeouts.load, () => probe(page, 'kernelIdle'));

  enter('run all cells from the Run menu');
  await page.locator('.lm-MenuBar-item', { hasText: /^Run$/ }).click();
  await page.getByRole('menuitem', { name: 'Run All Cells', exact: true }).click();

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
  await screenshot(page, 'dashboard_training.png');

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
  await screenshot(page, 'dashboard_stopped.png');
  enter('done');
} catch (err) {
  result.error = `${step}: ${err.message}`;
  log(`FAILED: ${result.error}`);
  if (page) {
    try {
      result.prompts = await probe(page, 'prompts');
      result.outputs = await probe(page, 'outputs');
      await screenshot(page, 'failure.png');
    } catch (inner) {
      log(`could not record the failure: ${inner.message}`);
    }
  }
} finally {
  await context.close();
  writeFileSync(config.resultPath, JSON.stringify(result, null, 2));
  log(`wrote ${config.resultPath}`);
}
process.exit(result.error ? 1 : 0);
