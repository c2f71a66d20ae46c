// What tests/browser's drivers share: launching headless Chromium on a closed network, the
// read-only probes of the JupyterLab DOM, bounded waits, logging in and running all cells, and
// screenshots. Each driver keeps a `result` object ({steps, consoleErrors, pageErrors,
// blockedRequests, screenshots, ...}) that it writes as JSON for its test to judge.
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Read-only probes of the JupyterLab DOM, installed in every page as `window.labProbe`.
export function installProbes() {
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

export const probe = (page, name) => page.evaluate((n) => window.labProbe[n](), name);

// Polls probe() until it returns something truthy and returns that. Gives up after `seconds`, or
// as soon as the notebook has halted (kernel idle, nothing queued) when `whileRunning` says the
// awaited thing can only happen while cells run: e.g. a cell raised and run-all stopped.
export async function waitFor(page, what, seconds, probe, { intervalMs = 250, whileRunning = false } = {}) {
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

export async function screenshot(page, config, result, name) {
  const path = join(config.artifactsDir, name);
  await page.screenshot({ path, fullPage: false });
  result.screenshots.push(path);
}

// Chromium with a fresh profile, every request off the server's host blocked (and recorded), the
// probes installed in every page (plus ``initScripts``), console and page errors recorded.
export async function launch(config, result, viewport, initScripts = []) {
  const context = await chromium.launchPersistentContext(config.userDataDir, {
    executablePath: config.chromium,
    headless: true,
    viewport,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-dev-shm-usage',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  const { hostname } = new URL(config.baseUrl);
  await context.route(
    (url) => url.hostname !== hostname,
    (route) => { result.blockedRequests.push(route.request().url()); return route.abort(); },
  );
  for (const script of [installProbes, ...initScripts]) await context.addInitScript(script);
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(config.timeouts.action * 1000);
  page.on('console', (m) => { if (m.type() === 'error') result.consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => result.pageErrors.push(String(e)));
  return { context, page };
}

// Logs in with the token, opens config.notebook, waits for its kernel and runs all cells from the
// Run menu; ``enter(step)`` names each step.
export async function openAndRunAll(page, config, enter) {
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
}
