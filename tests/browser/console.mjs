// The operator console in real Chromium, driven by tests/api/browser.rs: an operator logs in,
// opens the console's overview, finds a user by the start of their address, views the product
// as that user (the banner names both), is refused the console meanwhile (403), stops, and is
// back on the user's page as themselves; last, a stored Stripe event's page.
//
// Environment:
//   KEEL_URL          the app, e.g. http://127.0.0.1:3000 (required)
//   KEEL_OPERATOR     the operator's address; KEEL_PASSWORD their password (required)
//   KEEL_CUSTOMER     the address of the user to find and view as (required)
//   KEEL_EVENT        the id of a stored Stripe event (required)
//   KEEL_SCREENSHOTS  directory for admin-overview.png, admin-event.png and
//                     admin-impersonation.png (optional)
// Progress goes to stderr. Exit 0 when every step passed, 1 with a message otherwise.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const STEP_TIMEOUT_MS = 30_000;
const WHOLE_RUN_TIMEOUT_MS = 80_000;

const base = (process.env.KEEL_URL ?? '').replace(/\/+$/, '');
const operator = process.env.KEEL_OPERATOR ?? '';
const password = process.env.KEEL_PASSWORD ?? '';
const customer = process.env.KEEL_CUSTOMER ?? '';
const eventId = process.env.KEEL_EVENT ?? '';
const screenshots = process.env.KEEL_SCREENSHOTS || null;

let browser = null;
let step = 'starting';

async function fail(message) {
  process.stderr.write(`[console] FAILED during "${step}": ${message}\n`);
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

setTimeout(() => fail(`the whole flow took longer than ${WHOLE_RUN_TIMEOUT_MS / 1000} s`), WHOLE_RUN_TIMEOUT_MS).unref();

async function expectText(page, text) {
  const body = page.locator('body');
  await body.getByText(text, { exact: false }).first().waitFor({ timeout: STEP_TIMEOUT_MS }).catch(() => {});
  const content = await body.innerText();
  check(content.includes(text), `expected ${page.url()} to show "${text}"; it shows:\n${content}`);
}

async function screenshot(page, name) {
  if (!screenshots) return;
  await page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: true, animations: 'disabled' });
}

// Clicks `button` of a form posting to `action` and waits for the page it leads to.
async function submit(page, button, action) {
  const posted = page.waitForResponse(
    (response) => response.request().method() === 'POST' && new URL(response.url()).pathname === action,
    { timeout: STEP_TIMEOUT_MS },
  );
  await button.click();
  const response = await posted;
  await page.waitForLoadState('load', { timeout: STEP_TIMEOUT_MS });
  return response;
}

async function run() {
  check(base.startsWith('http') && operator && password && customer && eventId, 'KEEL_URL, KEEL_OPERATOR, KEEL_PASSWORD, KEEL_CUSTOMER and KEEL_EVENT are required');
  if (screenshots) mkdirSync(screenshots, { recursive: true });
  step = 'launching Chromium';
  browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: ['--no-sandbox'], timeout: 60_000 });
  const context = await browser.newContext({ baseURL: base, viewport: { width: 1280, height: 800 }, colorScheme: 'light', reducedMotion: 'reduce' });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(`script error on ${page.url()}: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) {
      problems.push(`console error on ${page.url()}: ${message.text()}`);
    }
  });

  step = 'log in as the operator';
  await page.goto('/login');
  await page.getByLabel('Email', { exact: true }).fill(operator);
  await page.getByLabel('Password', { exact: true }).fill(password);
  let response = await submit(page, page.getByRole('button', { name: 'Log in' }), '/login');
  check(response.status() === 303, `POST /login answered ${response.status()}`);

  step = 'the overview';
  response = await page.goto('/admin');
  check(response?.status() === 200, `GET /admin answered ${response?.status()}`);
  check(response.headers()['cache-control'] === 'no-store', 'the console must not be cached');
  await expectText(page, 'Unprocessed Stripe events');
  await screenshot(page, 'admin-overview');

  step = 'find the user';
  await page.getByRole('link', { name: 'Users', exact: true }).click();
  await page.getByLabel('Email starts with').fill(customer.slice(0, 4));
  await page.getByRole('button', { name: 'Search' }).click();
  await page.getByRole('link', { name: customer, exact: true }).click();
  await expectText(page, 'Live sessions');
  const userPage = new URL(page.url()).pathname;

  step = 'view the product as the user';
  response = await submit(page, page.getByRole('button', { name: /View the product as this user/ }), `${userPage}/impersonate`);
  check(response.status() === 303, `impersonating answered ${response.status()}`);
  check(new URL(page.url()).pathname === '/dashboard', `impersonating led to ${page.url()}`);
  await expectText(page, `${operator} is viewing the product as ${customer}.`);
  await screenshot(page, 'admin-impersonation');
  response = await page.goto('/admin');
  check(response?.status() === 403, `GET /admin while impersonating answered ${response?.status()}, not 403`);

  step = 'stop';
  await page.goto('/settings');
  response = await submit(page, page.locator('.impersonation-banner').getByRole('button', { name: 'Stop' }), '/admin/impersonation/stop');
  check(response.status() === 303, `stopping answered ${response.status()}`);
  check(new URL(page.url()).pathname === userPage, `stopping led to ${page.url()}, not ${userPage}`);
  await expectText(page, 'user.impersonation_stop');
  check((await page.locator('.impersonation-banner').count()) === 0, 'the banner outlived the impersonation');

  step = 'a stored Stripe event';
  response = await page.goto(`/admin/events/${eventId}`);
  check(response?.status() === 200, `GET the event answered ${response?.status()}`);
  await expectText(page, 'As Stripe sent it');
  await screenshot(page, 'admin-event');

  check(problems.length === 0, `the pages had problems:\n${problems.join('\n')}`);
  await browser.close();
}

run().then(
  () => process.exit(0),
  (error) => fail(error.message),
);
