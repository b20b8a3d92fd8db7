// Drives the kobo dashboard in headless Chromium, for tests/tests/it/dashboard.rs:
//   node tests/browser/dashboard.mjs <url> <api-key> <screenshot.png>
// Logs in with the API key, waits for the nodes on the map, prints READY,
// waits for a job to appear and succeed live (the test submits it after
// READY, then a gateway request and a job no node runs), checks that the
// page never reloaded, reads the KPI chips, waits for every plot over time
// to have data (last hour, then last day) and for the gateway request on
// its node, and saves full-page screenshots (<screenshot.png> light,
// <screenshot>-dark.png dark). Prints one line per finding; exits non-zero
// on failure.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const [url, apiKey, shot] = process.argv.slice(2);
if (!url || !apiKey || !shot) {
  console.error('usage: node dashboard.mjs <url> <api-key> <screenshot.png>');
  process.exit(2);
}
const WAIT = 60_000;
const PLOTS = ['finished', 'queue', 'pickup', 'run', 'tokens', 'cpu', 'memory'];
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'kobo-chromium-'));
const say = (line) => console.log(line);

const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  ignoreHTTPSErrors: true,
  viewport: { width: 1440, height: 900 },
  deviceScaleFactor: 1,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const page = context.pages()[0] || (await context.newPage());
const problems = [];
page.on('console', (msg) => { if (msg.type() === 'error') problems.push('console: ' + msg.text()); });
page.on('pageerror', (err) => problems.push('pageerror: ' + err.message));
let navigations = 0;
page.on('framenavigated', (frame) => { if (frame === page.mainFrame()) navigations++; });

try {
  await page.goto(url, { waitUntil: 'domcontentloaded' });
  await page.locator('#api-key').waitFor({ state: 'visible', timeout: WAIT });
  say('LOGIN_FORM shown');
  // Before logging in, the page's probe of /v1/status is refused (401), as
  // it should be; the browser logs that. Only problems after count.
  problems.length = 0;
  await page.fill('#api-key', apiKey);
  await page.click('#login-submit');
  await page.waitForFunction(() => document.querySelectorAll('#markers [data-node-id]').length >= 3, null, { timeout: WAIT });
  const nodes = await page.$$eval('#markers [data-node-id]', (els) => els.map((e) => e.dataset.nodeId + ':' + e.dataset.status));
  say('NODES ' + nodes.map((n) => n.split(':')[0]).sort().join(','));
  say('NODE_STATUS ' + nodes.sort().join(','));
  const land = await page.$eval('#land', (el) => el.getAttribute('d').length);
  say('MAP_LAND ' + land);
  await page.waitForFunction(() => document.body.dataset.state === 'live', null, { timeout: WAIT });
  say('LIVE');
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === 'kobo_session');
  say('COOKIE ' + (session ? [session.httpOnly && 'HttpOnly', session.secure && 'Secure', session.sameSite].filter(Boolean).join(',') : 'missing'));
  await page.evaluate(() => { window.__koboSamePage = true; });
  const navigationsBefore = navigations;
  // Jobs ran before the page opened: the one the test submits next is newer.
  const newestBefore = await page.$$eval('#jobs tr[data-job-id]', (rows) => Math.max(0, ...rows.map((r) => Number(r.dataset.jobId))));
  say('READY');

  // The test submits a job now; it must appear and finish without a reload.
  const firstNew = await page.waitForFunction((before) => {
    const ids = [...document.querySelectorAll('#jobs tr[data-job-id]')].map((r) => Number(r.dataset.jobId)).filter((id) => id > before);
    if (!ids.length) return null;
    const first = document.querySelector('#jobs tr[data-job-id="' + Math.min(...ids) + '"]');
    return first.dataset.state === 'succeeded' ? first.dataset.jobId : null;
  }, newestBefore, { timeout: WAIT });
  const row = page.locator('#jobs tr[data-job-id="' + (await firstNew.jsonValue()) + '"]');
  const job = await row.evaluate((tr) => [tr.dataset.jobId, tr.dataset.state, tr.dataset.node].join(' '));
  say('JOB ' + job);
  const same = await page.evaluate(() => window.__koboSamePage === true);
  say(same && navigations === navigationsBefore ? 'NO_RELOAD' : 'RELOADED');

  // The KPIs: the mean pickup counts the jobs run before the page opened.
  await page.waitForFunction(() => /\d/.test(document.querySelector('[data-kpi="mean pickup"] b')?.textContent || ''), null, { timeout: WAIT });
  say('KPI mean pickup ' + (await page.$eval('[data-kpi="mean pickup"] b', (el) => el.textContent)));

  // Every plot gets data (the job no node runs fills the queue's), and the
  // gateway request shows on its node.
  const plotsReady = (names) => names.every((n) => Number(document.querySelector('[data-plot="' + n + '"]')?.dataset.points || 0) > 0);
  const plotPoints = () => page.$$eval('[data-plot]', (els) => els.map((e) => e.dataset.plot + ':' + e.dataset.points).join(','));
  await page.waitForFunction(plotsReady, PLOTS, { timeout: WAIT });
  say('PLOTS_HOUR ' + (await plotPoints()));
  await page.waitForFunction(() => Number(document.querySelector('#nodes tr[data-node-id="osaka-01"] .gateway')?.dataset.requests || 0) > 0, null, { timeout: WAIT });
  const gateway = await page.$$eval('#nodes tr[data-node-id]', (rows) => rows.map((r) => r.dataset.nodeId + '=' + r.querySelector('.gateway').textContent).sort().join(','));
  say('GATEWAY ' + gateway);
  // The per-key panel: the gateway request's key, by name, with its usage.
  await page.waitForFunction(() => [...document.querySelectorAll('#keys tr')].some((r) => r.querySelector('b')), null, { timeout: WAIT });
  const keys = await page.$$eval('#keys tr', (rows) => rows.map((r) => [...r.children].map((c) => c.textContent.trim()).join('|')).join(';'));
  say('KEYS ' + keys);
  await page.click('#span-day');
  await page.waitForFunction(plotsReady, PLOTS, { timeout: WAIT });
  say('PLOTS_DAY ' + (await plotPoints()));
  await page.click('#span-hour');

  // Open the job's events, then the node card, for the screenshot.
  await row.click();
  await page.locator('#drawer-body .timeline li').first().waitFor({ timeout: WAIT });
  const steps = await page.$$eval('#drawer-body .timeline li b', (els) => els.map((e) => e.textContent));
  say('EVENTS ' + steps.join(' | '));
  await page.click('#drawer-close');
  await page.evaluate(() => window.scrollTo(0, 0));
  // Forced: a busy marker's halo pulses, so it never counts as "stable".
  await page.hover('#markers [data-node-id="tokyo-01"] .core', { force: true });
  await page.locator('#tooltip').waitFor({ state: 'visible', timeout: WAIT });
  say('TOOLTIP ' + (await page.$eval('#tooltip h3', (el) => el.textContent)));
  await page.waitForTimeout(300);
  fs.mkdirSync(path.dirname(path.resolve(shot)), { recursive: true });
  await page.screenshot({ path: shot, fullPage: true });
  await page.emulateMedia({ colorScheme: 'dark' });
  await page.waitForTimeout(300);
  const dark = shot.replace(/\.png$/, '') + '-dark.png';
  await page.screenshot({ path: dark, fullPage: true });
  say('SCREENSHOT ' + shot + ' ' + dark);
  say('CONSOLE_ERRORS ' + problems.length);
  for (const p of problems) say('  ' + p);
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
  process.exit(0);
} catch (err) {
  say('ERROR ' + err.message.split('\n')[0]);
  for (const line of err.message.split('\n').slice(1, 30)) say('  ' + line);
  for (const p of problems) say('  ' + p);
  try { await page.screenshot({ path: shot.replace(/\.png$/, '') + '-failure.png' }); } catch (_) { /* best effort */ }
  await context.close().catch(() => {});
  fs.rmSync(profile, { recursive: true, force: true });
  process.exit(1);
}
