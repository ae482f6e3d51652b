// The account flow in real Chromium, driven by tests/api/browser.rs (run it with
// `cargo nextest run browser`): sign up (first with a too-short password), confirm the email
// through the emailed link, log out, log in, and see the dashboard.
//
// Environment:
//   KEEL_URL          the app, e.g. http://127.0.0.1:3000 (required)
//   KEEL_SCREENSHOTS  directory for landing.png, signup-error.png, dashboard.png (optional)
//   KEEL_EMAIL        the address to sign up with (default: a fresh one)
//   KEEL_REVIEW_SCREENSHOTS  directory for more screenshots (every page, dark mode, a
//                     phone's width) and the pages' HTML, to review the design (optional)
//
// Protocol on stdio: once signed up, the script prints one line `NEED_LINK <email>` to
// stdout and reads one line from stdin: the absolute verification URL from the email.
// Progress goes to stderr. Exit 0 when every step passed, 1 with a message otherwise.

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const STEP_TIMEOUT_MS = 30_000;
const LINK_TIMEOUT_MS = 60_000;
const WHOLE_RUN_TIMEOUT_MS = 100_000;

const base = (process.env.KEEL_URL ?? '').replace(/\/+$/, '');
const screenshots = process.env.KEEL_SCREENSHOTS || null;
const review = process.env.KEEL_REVIEW_SCREENSHOTS || null;
const email = process.env.KEEL_EMAIL || `ada.${Date.now().toString(36)}@example.com`;
const localPart = email.slice(0, email.lastIndexOf('@'));
const password = 'correct horse battery staple';

let browser = null;
let reviewedMissingPage = false;
let step = 'starting';

function log(message) {
  process.stderr.write(`[browser] ${message}\n`);
}

async function fail(message) {
  process.stderr.write(`[browser] FAILED during "${step}": ${message}\n`);
  if (browser) {
    await Promise.race([browser.close().catch(() => {}), sleep(5_000)]);
  }
  process.exit(1);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

function check(condition, message) {
  if (!condition) {
    throw new Error(message);
  }
}

// The whole run must end: a hung browser or a missing link is a failure, never a hang.
setTimeout(() => fail(`the whole flow took longer than ${WHOLE_RUN_TIMEOUT_MS / 1000} s`), WHOLE_RUN_TIMEOUT_MS).unref();

// One line from stdin, or a failure when none comes in time.
const stdinLines = createInterface({ input: process.stdin });
const pendingLines = [];
const lineWaiters = [];
stdinLines.on('line', (line) => {
  const waiter = lineWaiters.shift();
  if (waiter) waiter(line);
  else pendingLines.push(line);
});

function readLine(timeoutMs) {
  if (pendingLines.length > 0) return Promise.resolve(pendingLines.shift());
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no line on stdin within ${timeoutMs / 1000} s`)), timeoutMs);
    lineWaiters.push((line) => {
      clearTimeout(timer);
      resolve(line);
    });
    stdinLines.once('close', () => {
      clearTimeout(timer);
      reject(new Error('stdin closed before a line arrived'));
    });
  });
}

function pathOf(page) {
  return new URL(page.url()).pathname;
}

async function expectPath(page, path) {
  await page.waitForURL((url) => url.pathname === path, { timeout: STEP_TIMEOUT_MS }).catch(() => {});
  check(pathOf(page) === path, `expected to be on ${path}, but the browser is on ${page.url()}`);
}

async function expectText(page, text) {
  const body = page.locator('body');
  await body.getByText(text, { exact: false }).first().waitFor({ timeout: STEP_TIMEOUT_MS }).catch(() => {});
  const content = await body.innerText();
  check(content.includes(text), `expected the page ${page.url()} to show "${text}"; it shows:\n${content}`);
}

async function expectNoText(page, text) {
  const content = await page.locator('body').innerText();
  check(!content.includes(text), `expected the page ${page.url()} not to show "${text}"; it shows:\n${content}`);
}

async function screenshot(page, name) {
  if (!screenshots) return;
  const path = join(screenshots, `${name}.png`);
  await page.screenshot({ path, fullPage: true, animations: 'disabled' });
  log(`screenshot ${path}`);
}

// For review only: a screenshot and the HTML of the page, in light and dark.
async function reviewShot(page, name) {
  if (!review) return;
  for (const colorScheme of ['light', 'dark']) {
    await page.emulateMedia({ colorScheme });
    const suffix = colorScheme === 'dark' ? '-dark' : '';
    await page.screenshot({ path: join(review, `${name}${suffix}.png`), fullPage: true, animations: 'disabled' });
  }
  await page.emulateMedia({ colorScheme: 'light' });
  writeFileSync(join(review, `${name}.html`), await page.content());
}

// Submits the form holding `button` and returns the response of its POST.
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
  check(base.startsWith('http'), 'KEEL_URL must be set to the app, e.g. http://127.0.0.1:3000');
  if (screenshots) mkdirSync(screenshots, { recursive: true });
  if (review) mkdirSync(review, { recursive: true });

  step = 'launching Chromium';
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox'],
    timeout: 60_000,
  });
  const context = await browser.newContext({
    baseURL: base,
    viewport: { width: 1280, height: 800 },
    colorScheme: 'light',
    reducedMotion: 'reduce',
  });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  context.setDefaultNavigationTimeout(STEP_TIMEOUT_MS);
  const page = await context.newPage();

  // A page that breaks its own CSP, misses an asset or throws fails the test.
  const problems = [];
  page.on('console', (message) => {
    // HTTP errors are judged by the response handler below (a form shown again is a 422).
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) {
      problems.push(`console error on ${page.url()}: ${message.text()}`);
    }
  });
  page.on('pageerror', (error) => problems.push(`script error on ${page.url()}: ${error.message}`));
  page.on('response', (response) => {
    const status = response.status();
    const expected =
      (status === 422 && response.request().method() === 'POST') ||
      (status === 404 && reviewedMissingPage && new URL(response.url()).pathname === '/no-such-page');
    if (status >= 400 && !expected) problems.push(`${status} for ${response.request().method()} ${response.url()}`);
  });

  step = 'landing page';
  let response = await page.goto('/');
  check(response?.status() === 200, `GET / answered ${response?.status()}`);
  await expectText(page, 'Ship the product, not the plumbing.');
  await screenshot(page, 'landing');
  await reviewShot(page, 'landing');

  step = 'sign up with a too-short password';
  response = await page.goto('/signup');
  check(response?.status() === 200, `GET /signup answered ${response?.status()}`);
  await page.getByLabel('Email', { exact: true }).fill(email);
  await page.getByLabel('Password', { exact: true }).fill('short');
  response = await submit(page, page.getByRole('button', { name: 'Create account' }), '/signup');
  check(response.status() === 422, `POST /signup with a short password answered ${response.status()}, not 422`);
  await expectPath(page, '/signup');
  const passwordError = page.locator('#password-error');
  await passwordError.waitFor({ timeout: STEP_TIMEOUT_MS });
  check((await passwordError.innerText()).trim().length > 0, 'the password error is empty');
  check(
    (await page.getByLabel('Password', { exact: true }).getAttribute('aria-invalid')) === 'true',
    'the password field is not marked aria-invalid',
  );
  check((await page.getByLabel('Email', { exact: true }).inputValue()) === email, 'the form did not keep the email that was typed');
  await screenshot(page, 'signup-error');
  await reviewShot(page, 'signup-error');

  step = 'sign up';
  await page.getByLabel('Password', { exact: true }).fill(password);
  response = await submit(page, page.getByRole('button', { name: 'Create account' }), '/signup');
  check(response.status() === 303, `POST /signup answered ${response.status()}, not 303`);
  await expectPath(page, '/dashboard');
  await expectText(page, `${localPart}'s team`);
  await expectText(page, 'Please confirm your email address');
  await reviewShot(page, 'dashboard-unverified');

  step = 'waiting for the verification link';
  process.stdout.write(`NEED_LINK ${email}\n`);
  const link = (await readLine(LINK_TIMEOUT_MS)).trim();
  check(/^https?:\/\/.+\/verify-email\?token=/.test(link), `the line on stdin is not a verification link: "${link}"`);

  step = 'opening the verification link';
  response = await page.goto(link);
  check(response?.status() === 200, `the verification link answered ${response?.status()}`);
  await expectText(page, 'Your email is confirmed');
  await reviewShot(page, 'email-confirmed');

  step = 'dashboard after confirming';
  await page.goto('/dashboard');
  await expectPath(page, '/dashboard');
  await expectText(page, `${localPart}'s team`);
  await expectNoText(page, 'Please confirm your email address');

  step = 'log out';
  response = await submit(page, page.getByRole('button', { name: 'Log out' }), '/logout');
  check(response.status() === 303, `POST /logout answered ${response.status()}, not 303`);
  await expectPath(page, '/');
  check((await page.getByRole('button', { name: 'Log out' }).count()) === 0, 'still signed in after logging out');
  response = await page.goto('/dashboard');
  await expectPath(page, '/login');

  step = 'log in';
  await page.goto('/login');
  await reviewShot(page, 'login');
  await page.getByLabel('Email', { exact: true }).fill(email);
  await page.getByLabel('Password', { exact: true }).fill(password);
  response = await submit(page, page.locator('form[action="/login"]').getByRole('button', { name: 'Log in' }), '/login');
  check(response.status() === 303, `POST /login answered ${response.status()}, not 303`);
  await expectPath(page, '/dashboard');
  await expectText(page, `${localPart}'s team`);
  await expectNoText(page, 'Please confirm your email address');
  await screenshot(page, 'dashboard');
  await reviewShot(page, 'dashboard');

  if (review) {
    step = 'review screenshots';
    for (const [path, name] of [['/settings', 'settings'], ['/pricing', 'pricing'], ['/forgot-password', 'forgot-password']]) {
      await page.goto(path);
      await reviewShot(page, name);
    }
    reviewedMissingPage = true;
    await page.goto('/no-such-page');
    await reviewShot(page, 'not-found');
    await page.setViewportSize({ width: 390, height: 844 });
    for (const [path, name] of [['/dashboard', 'dashboard-phone'], ['/', 'landing-phone']]) {
      await page.goto(path);
      await reviewShot(page, name);
    }
  }

  step = 'checking what the pages reported';
  check(problems.length === 0, `the pages had problems:\n  ${problems.join('\n  ')}`);

  step = 'closing Chromium';
  await browser.close();
  browser = null;
  log('the whole flow passed');
}

try {
  await run();
  process.exit(0);
} catch (error) {
  await fail(error?.stack ?? String(error));
}
