// Opens pages of the built course website in headless Chromium, network off, for tests/test_book.py.
//
//   node drive_book.mjs CONFIG.json
//
// CONFIG (written by the test): baseUrl (the site's folder as a file:// URL), pages (paths under it),
// chromium, userDataDir, artifactsDir, resultPath, timeouts in seconds (action, load, figures).
//
// Every request to a host (not a file) is blocked and recorded (lab.mjs's launch). Per page: load
// it, wait until every figure holder (.lfads-nb-figure) is drawn or failed, and read what plotly
// drew in each: its title, the traces plotly holds, and the marks in its SVG (trace groups, line
// and marker paths, heatmap images); then a screenshot of the first figure. The test judges.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { launch, sleep, waitFor } from './lab.mjs';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const t0 = Date.now();
const log = (msg) => process.stderr.write(`[drive_book ${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}\n`);
const result = { pages: {}, consoleErrors: [], pageErrors: [], blockedRequests: [], screenshots: [] };
let step = 'start';

function readFigures() {
  return [...document.querySelectorAll('.lfads-nb-figure')].map((holder) => {
    const gd = holder.querySelector('.js-plotly-plot');
    const svg = (selector) => (gd ? gd.querySelectorAll(selector).length : 0);
    const box = gd?.getBoundingClientRect();
    return {
      state: holder.classList.contains('lfads-nb-drawn') ? 'drawn' : holder.classList.contains('lfads-nb-failed') ? 'failed' : 'pending',
      title: gd?.layout?.title?.text ?? '',
      traces: gd?._fullData?.length ?? 0,
      marks: svg('.main-svg g.trace path') + svg('.main-svg g.trace image') + svg('.main-svg .hm image'),
      canvases: svg('.gl-container canvas'),
      width: box?.width ?? 0,
      height: box?.height ?? 0,
    };
  });
}

let context;
let page;
try {
  step = 'launch';
  ({ context, page } = await launch(config, result, { width: 1400, height: 1000 }));
  for (const path of config.pages) {
    step = `open ${path}`;
    log(step);
    await page.goto(`${config.baseUrl}/${path}`, { waitUntil: 'load', timeout: config.timeouts.load * 1000 });
    const holders = await page.locator('.lfads-nb-figure').count();
    step = `wait for the ${holders} figures of ${path}`;
    await waitFor(page, step, config.timeouts.figures, async () => {
      const figures = await page.evaluate(readFigures);
      return figures.every((f) => f.state !== 'pending');
    });
    result.pages[path] = {
      figures: await page.evaluate(readFigures),
      plotlyVersion: await page.evaluate(() => window.Plotly?.version ?? null),
      scripts: await page.evaluate(() => [...document.scripts].map((s) => s.src).filter(Boolean)),
    };
    const first = page.locator('.lfads-nb-figure').first();
    if (holders > 0) await first.scrollIntoViewIfNeeded();
    await sleep(200);
    const shot = join(config.artifactsDir, `${path.replace(/[/.]/g, '_')}.png`);
    await page.screenshot({ path: shot, fullPage: false });
    result.screenshots.push(shot);
  }
  step = 'done';
} catch (err) {
  result.error = `${step}: ${err.message}`;
  log(`FAILED: ${result.error}`);
} finally {
  await context?.close();
  writeFileSync(config.resultPath, JSON.stringify(result, null, 2));
}
process.exit(result.error ? 1 : 0);
