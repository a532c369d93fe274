// Drives Debian's chromium with playwright-core for tests/browser.rs: opens each case's page in a
// fresh tab and prints, as JSON on stdout, what the page saw: the SDK's transport results, every
// request the browser made (preflights included, read from the DevTools protocol because
// playwright's own events leave preflights out), and the console (where CORS failures are reported).
// Usage: node drive.js '{"executablePath": ..., "userDataDir": ..., "cases": [{"name", "url"}]}'
'use strict';
const { chromium } = require('playwright-core');

const cfg = JSON.parse(process.argv[2]);
// A hard stop, so a wedged browser fails the test instead of hanging it.
setTimeout(() => {
  console.error('drive.js: timed out');
  process.exit(3);
}, cfg.timeoutMs || 25000).unref();

async function runCase(context, c) {
  const page = await context.newPage();
  const consoleLines = [];
  const network = new Map();
  page.on('console', (m) => consoleLines.push({ type: m.type(), text: m.text() }));
  page.on('pageerror', (e) => consoleLines.push({ type: 'pageerror', text: String(e) }));
  const cdp = await context.newCDPSession(page);
  const entry = (id) => {
    if (!network.has(id)) network.set(id, {});
    return network.get(id);
  };
  cdp.on('Network.requestWillBeSent', (e) => {
    Object.assign(entry(e.requestId), { method: e.request.method, url: e.request.url, type: e.type || null });
  });
  cdp.on('Network.responseReceived', (e) => {
    Object.assign(entry(e.requestId), { status: e.response.status, headers: e.response.headers, type: e.type || null });
  });
  cdp.on('Network.loadingFailed', (e) => {
    Object.assign(entry(e.requestId), { failed: e.errorText, cors: e.corsErrorStatus || null });
  });
  await cdp.send('Network.enable');
  let done = null;
  let error = null;
  try {
    await page.goto(c.url);
    await page.waitForFunction(() => window.__done, null, { timeout: 15000 });
    done = await page.evaluate(() => window.__done);
  } catch (e) {
    error = String(e);
  }
  // Let the last response events arrive before the tab goes.
  await new Promise((r) => setTimeout(r, 100));
  await page.close();
  return { name: c.name, done, error, console: consoleLines, network: [...network.values()] };
}

(async () => {
  const context = await chromium.launchPersistentContext(cfg.userDataDir, {
    executablePath: cfg.executablePath,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  const results = [];
  try {
    for (const c of cfg.cases) results.push(await runCase(context, c));
  } finally {
    await context.close();
  }
  process.stdout.write(JSON.stringify(results));
  process.exit(0);
})().catch((e) => {
  console.error('drive.js:', e);
  process.exit(1);
});
