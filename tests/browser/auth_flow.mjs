// The account and team story in real Chromium, driven by tests/api/browser.rs (run it with
// `cargo nextest run browser`): sign up (first with a too-short password), confirm the email
// through the emailed link, log out, log in, and see the dashboard. Then, as that user (the
// owner): create a team and invite a fresh address as a member. In a second browser context
// (the invitee: signed out, cookies of its own): open the emailed invitation link, create an
// account from it (the address comes filled in, and needs no verification email), accept, and
// land on the team. Then the owner's team page lists the new member and no pending invitation.
// Last, the owner turns on two-factor sign-in (the QR code and the otpauth:// URI; the code is
// computed here from the URI's secret, RFC 6238) and gets 10 recovery codes; logs out; logs in
// with the password, which leads to the code page and no session; a code already used is
// refused, the next step's code signs in; logs out, and signs in once more with a recovery code.
//
// Environment:
//   KEEL_URL          the app, e.g. http://127.0.0.1:3000 (required)
//   KEEL_SCREENSHOTS  directory for landing.png, signup-error.png, dashboard.png, invite.png
//                     (the invitation page, signed out), team.png (the owner's team page
//                     after the invitee joined) and two-factor.png (the owner's two-factor
//                     enrolment, with its QR code) (optional)
//   KEEL_EMAIL        the address to sign up with (default: a fresh one)
//   KEEL_INVITEE      the address to invite (default: a fresh one)
//   KEEL_REVIEW_SCREENSHOTS  directory for more screenshots (every page, dark mode, a
//                     phone's width) and the pages' HTML, to review the design (optional)
//
// Protocol on stdio: once signed up, the script prints one line `NEED_LINK <email>` to
// stdout and reads one line from stdin: the absolute verification URL from the email. Once
// it has invited someone, it prints `NEED_INVITE <invitee's email>` and reads one line: the
// absolute invitation URL from the email to the invitee.
// Progress goes to stderr. Exit 0 when every step passed, 1 with a message otherwise.

import { createHmac } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const STEP_TIMEOUT_MS = 30_000;
const LINK_TIMEOUT_MS = 60_000;
// RFC 6238 as the app uses it (totp-rs's defaults): HMAC-SHA1, 30-second steps, 6 digits.
const TOTP_STEP_SECONDS = 30;
const TOTP_DIGITS = 6;
const WHOLE_RUN_TIMEOUT_MS = 100_000;

const base = (process.env.KEEL_URL ?? '').replace(/\/+$/, '');
const screenshots = process.env.KEEL_SCREENSHOTS || null;
const review = process.env.KEEL_REVIEW_SCREENSHOTS || null;
const email = process.env.KEEL_EMAIL || `ada.${Date.now().toString(36)}@example.com`;
const localPart = email.slice(0, email.lastIndexOf('@'));
const password = 'correct horse battery staple';
const teamName = 'Acme Rockets';
const invitee = process.env.KEEL_INVITEE || `bo.${Date.now().toString(36)}@example.com`;
const inviteePassword = 'purple monkey dishwasher lamp';

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

// The bytes of RFC 4648 base32 text (an otpauth:// URI's `secret`, unpadded).
function base32Bytes(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  const bytes = [];
  let bits = 0;
  let value = 0;
  for (const char of text.replace(/=+$/, '').toUpperCase()) {
    const digit = alphabet.indexOf(char);
    check(digit >= 0, `the secret "${text}" is not base32`);
    value = ((value << 5) | digit) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      bytes.push((value >> bits) & 0xff);
    }
  }
  return Buffer.from(bytes);
}

// The TOTP code of `secret` (bytes) at `unixSeconds` (RFC 6238 over RFC 4226): HMAC-SHA1 of
// the step counter as 8 bytes big-endian, dynamic truncation, the last 6 decimal digits.
function totpCode(secret, unixSeconds) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(unixSeconds / TOTP_STEP_SECONDS)));
  const mac = createHmac('sha1', secret).update(counter).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  const truncated = mac.readUInt32BE(offset) & 0x7fffffff;
  return String(truncated % 10 ** TOTP_DIGITS).padStart(TOTP_DIGITS, '0');
}

function unixNow() {
  return Date.now() / 1000;
}

// The app's cookie `name` in `page`'s browser (`__Host-` prefixed when the app is on HTTPS).
async function appCookie(page, name) {
  const cookies = await page.context().cookies(base);
  return cookies.find((cookie) => cookie.name === name || cookie.name === `__Host-${name}`) ?? null;
}

// Logs out with the header's button, from any signed-in page.
async function logOut(page) {
  const response = await submit(page, page.getByRole('button', { name: 'Log out' }), '/logout');
  check(response.status() === 303, `POST /logout answered ${response.status()}, not 303`);
  await expectPath(page, '/');
  check((await page.getByRole('button', { name: 'Log out' }).count()) === 0, 'still signed in after logging out');
  check((await appCookie(page, 'keel_session')) === null, 'the session cookie is still there after logging out');
}

// Logs in with the password of a two-factor user: the code page, no session yet.
async function logInToTheCodePage(page) {
  await page.goto('/login');
  await page.getByLabel('Email', { exact: true }).fill(email);
  await page.getByLabel('Password', { exact: true }).fill(password);
  const response = await submit(page, page.locator('form[action="/login"]').getByRole('button', { name: 'Log in' }), '/login');
  check(response.status() === 303, `POST /login answered ${response.status()}, not 303`);
  await expectPath(page, '/login/2fa');
  await expectText(page, 'Enter your code');
  check((await page.getByRole('button', { name: 'Log out' }).count()) === 0, 'signed in by the password alone');
  check((await appCookie(page, 'keel_session')) === null, 'a session cookie was set by the password alone');
  const pendingCookie = await appCookie(page, 'keel_2fa');
  check(pendingCookie !== null, 'no half-done login cookie (keel_2fa) after the password');
  check(pendingCookie.httpOnly, 'the half-done login cookie is not HttpOnly');
}

// Where a second factor signed in: the dashboard, with a session and no half-done login.
async function expectSignedInWithSecondFactor(page, response) {
  check(response.status() === 303, `POST /login/2fa answered ${response.status()}, not 303`);
  await expectPath(page, '/dashboard');
  await expectText(page, email);
  check((await page.getByRole('button', { name: 'Log out' }).count()) === 1, 'no "Log out" button after the second factor');
  check((await appCookie(page, 'keel_session')) !== null, 'no session cookie after the second factor');
  check((await appCookie(page, 'keel_2fa')) === null, 'the half-done login cookie outlived the sign-in');
}

// A page that breaks its own CSP, misses an asset or throws fails the test.
const problems = [];

// A page in a new browser context: cookies of its own, as another person's browser.
async function newPage() {
  const context = await browser.newContext({
    baseURL: base,
    viewport: { width: 1280, height: 800 },
    colorScheme: 'light',
    reducedMotion: 'reduce',
  });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  context.setDefaultNavigationTimeout(STEP_TIMEOUT_MS);
  const page = await context.newPage();
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
  return page;
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
  const page = await newPage();

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

  step = 'create a team';
  response = await page.goto('/teams');
  check(response?.status() === 200, `GET /teams answered ${response?.status()}`);
  await expectText(page, `${localPart}'s team`);
  await reviewShot(page, 'teams');
  await page.getByLabel('Team name', { exact: true }).fill(teamName);
  response = await submit(page, page.getByRole('button', { name: 'Create team' }), '/teams');
  check(response.status() === 303, `POST /teams answered ${response.status()}, not 303`);
  await expectPath(page, '/team');
  await expectText(page, teamName);
  await expectText(page, 'Invite someone');

  step = 'invite someone';
  const inviteForm = page.locator('form[action="/team/invitations"]');
  await inviteForm.getByLabel('Email', { exact: true }).fill(invitee);
  await inviteForm.getByLabel('Role', { exact: true }).selectOption('member');
  response = await submit(page, inviteForm.getByRole('button', { name: 'Send invitation' }), '/team/invitations');
  check(response.status() === 303, `POST /team/invitations answered ${response.status()}, not 303`);
  await expectPath(page, '/team');
  const pending = page.getByRole('listitem').filter({ hasText: invitee });
  check((await pending.count()) === 1, `the team page lists ${await pending.count()} pending invitations to ${invitee}, not 1`);
  const pendingText = await pending.innerText();
  check(pendingText.includes('Member'), `the pending invitation does not say "Member": ${pendingText}`);
  check((await pending.getByRole('button', { name: 'Resend' }).count()) === 1, 'the pending invitation has no "Resend" button');
  await reviewShot(page, 'team-invited');

  step = 'waiting for the invitation link';
  process.stdout.write(`NEED_INVITE ${invitee}\n`);
  const invitation = (await readLine(LINK_TIMEOUT_MS)).trim();
  check(/^https?:\/\/.+\/invite\?token=/.test(invitation), `the line on stdin is not an invitation link: "${invitation}"`);

  // The invitee: another browser, signed out.
  step = 'the invitee opens the invitation link';
  const guest = await newPage();
  response = await guest.goto(invitation);
  check(response?.status() === 200, `the invitation link answered ${response?.status()}`);
  await expectPath(guest, '/invite');
  check(!guest.url().includes('token='), `the token stayed in the URL: ${guest.url()}`);
  await expectText(guest, `Join ${teamName}`);
  await expectText(guest, `${email} invited ${invitee} to join as Member.`);
  const signedIn = (await guest.getByRole('button', { name: 'Log out' }).count()) > 0;
  check(!signedIn, "the invitee's browser is signed in before signing up");
  await screenshot(guest, 'invite');
  await reviewShot(guest, 'invite');

  step = 'the invitee signs up from the invitation';
  const createAccount = guest.getByRole('link', { name: 'Create an account' });
  const signupHref = new URL(await createAccount.getAttribute('href'), base);
  check(
    signupHref.pathname === '/signup' &&
      signupHref.searchParams.get('email') === invitee &&
      signupHref.searchParams.get('next') === '/invite',
    `"Create an account" links to ${signupHref.pathname}${signupHref.search}, not /signup with the invitee's email and next=/invite`,
  );
  await createAccount.click();
  await expectPath(guest, '/signup');
  const filledIn = await guest.getByLabel('Email', { exact: true }).inputValue();
  check(filledIn === invitee, `the signup form's email is "${filledIn}", not the invitee's ${invitee}`);
  await guest.getByLabel('Password', { exact: true }).fill(inviteePassword);
  response = await submit(guest, guest.getByRole('button', { name: 'Create account' }), '/signup');
  check(response.status() === 303, `POST /signup from the invitation answered ${response.status()}, not 303`);
  await expectPath(guest, '/invite');
  await expectText(guest, `Join ${teamName}`);
  await reviewShot(guest, 'invite-signed-in');

  step = 'the invitee accepts';
  response = await submit(guest, guest.getByRole('button', { name: `Accept and join ${teamName}` }), '/invite');
  check(response.status() === 303, `POST /invite answered ${response.status()}, not 303`);
  await expectPath(guest, '/team');
  await expectText(guest, teamName);
  for (const [who, shows] of [[email, ['Owner']], [invitee, ['(you)', 'Member']]]) {
    const row = guest.getByRole('row').filter({ hasText: who });
    check((await row.count()) === 1, `the invitee's team page lists ${await row.count()} members ${who}, not 1`);
    const rowText = await row.innerText();
    for (const text of shows) {
      check(rowText.includes(text), `the invitee's team page shows "${rowText}" for ${who}, without "${text}"`);
    }
  }
  await reviewShot(guest, 'team-joined');

  step = "the invitee's address is verified";
  await guest.goto('/settings');
  await expectPath(guest, '/settings');
  await expectText(guest, invitee);
  await expectText(guest, 'Verified');
  await expectNoText(guest, 'Not verified');

  step = 'the owner sees the new member';
  response = await page.goto('/team');
  check(response?.status() === 200, `GET /team answered ${response?.status()}`);
  const memberRow = page.getByRole('row').filter({ hasText: invitee });
  check((await memberRow.count()) === 1, `the owner's team page lists ${await memberRow.count()} members ${invitee}, not 1`);
  const memberRole = await memberRow.getByRole('combobox').inputValue();
  check(memberRole === 'member', `the owner's team page shows ${invitee} as "${memberRole}", not member`);
  await expectNoText(page, 'Resend');
  await expectNoText(page, 'Pending invitations');
  await screenshot(page, 'team');
  await reviewShot(page, 'team');

  step = "the script's TOTP codes match RFC 6238";
  // RFC 6238's SHA-1 test vectors: secret "12345678901234567890"; its 8-digit codes end with
  // these 6 digits.
  const rfcSecret = base32Bytes('GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ');
  check(rfcSecret.toString() === '12345678901234567890', `base32 decodes to "${rfcSecret}"`);
  for (const [time, code] of [[59, '287082'], [1_111_111_109, '081804'], [2_000_000_000, '279037']]) {
    check(totpCode(rfcSecret, time) === code, `the TOTP at ${time} is ${totpCode(rfcSecret, time)}, not ${code}`);
  }

  step = 'the owner opens two-factor sign-in';
  await page.goto('/settings');
  await expectPath(page, '/settings');
  const enrolmentPage = page.waitForResponse(
    (response) => new URL(response.url()).pathname === '/settings/2fa',
    { timeout: STEP_TIMEOUT_MS },
  );
  await page.getByRole('link', { name: 'Set up two-factor sign-in' }).click();
  response = await enrolmentPage;
  check(response.status() === 200, `GET /settings/2fa answered ${response.status()}`);
  // This page holds the secret, the next one the recovery codes: no cache may keep them.
  let caching = response.headers()['cache-control'];
  check(caching === 'no-store', `GET /settings/2fa has Cache-Control "${caching}", not no-store`);
  await expectPath(page, '/settings/2fa');
  await expectText(page, 'Turn on two-factor sign-in');
  const qrCode = page.locator('.qr-code > svg');
  check((await qrCode.count()) === 1, `the page has ${await qrCode.count()} inline SVG QR codes, not 1`);
  const qrBox = await qrCode.boundingBox();
  const qrSize = qrBox ? `${qrBox.width}×${qrBox.height} px` : 'not laid out';
  check(qrBox !== null && qrBox.width >= 150 && qrBox.height >= 150, `the QR code is too small to scan: ${qrSize}`);
  check((await qrCode.locator('path, rect').count()) > 0, 'the QR code SVG draws nothing');
  const uriText = page.locator('code.otpauth-uri');
  check((await uriText.count()) === 1, `the page has ${await uriText.count()} otpauth URIs as text, not 1`);
  const uri = (await uriText.innerText()).trim();
  check(uri.startsWith('otpauth://totp/'), `the URI shown is not otpauth://totp/…: "${uri}"`);
  const otpauth = new URL(uri);
  const label = decodeURIComponent(otpauth.pathname);
  check(label.endsWith(`:${email}`) || label === `/${email}`, `the URI's label "${label}" does not name ${email}`);
  const computed = [['digits', String(TOTP_DIGITS)], ['period', String(TOTP_STEP_SECONDS)], ['algorithm', 'SHA1']];
  for (const [parameter, expected] of computed) {
    const value = otpauth.searchParams.get(parameter);
    const fits = value === null || value.toUpperCase() === expected;
    check(fits, `the URI asks for ${parameter}=${value}; the script computes ${expected}`);
  }
  const secret = base32Bytes(otpauth.searchParams.get('secret') ?? '');
  check(secret.length >= 16, `the URI's secret is ${secret.length} bytes, fewer than 16`);
  await screenshot(page, 'two-factor');
  await reviewShot(page, 'two-factor');

  step = 'the owner turns on two-factor sign-in';
  const enrolledAt = unixNow();
  const enrolmentCode = totpCode(secret, enrolledAt);
  await page.getByLabel('Code', { exact: true }).fill(enrolmentCode);
  response = await submit(page, page.getByRole('button', { name: 'Turn on' }), '/settings/2fa/enable');
  check(response.status() === 200, `POST /settings/2fa/enable answered ${response.status()}, not 200`);
  caching = response.headers()['cache-control'];
  check(caching === 'no-store', `the recovery codes come with Cache-Control "${caching}", not no-store`);
  await expectText(page, 'Two-factor sign-in is on.');
  const recoveryCodes = await page.locator('ul.recovery-codes li code').allInnerTexts();
  check(recoveryCodes.length === 10, `the page shows ${recoveryCodes.length} recovery codes, not 10:\n${recoveryCodes.join('\n')}`);
  check(new Set(recoveryCodes).size === 10, `the recovery codes repeat:\n${recoveryCodes.join('\n')}`);
  for (const code of recoveryCodes) {
    check(/^[a-z0-9]{5}-[a-z0-9]{5}$/.test(code.trim()), `a recovery code looks wrong: "${code}"`);
  }
  const recoveryCode = recoveryCodes[3].trim();
  check((await page.locator('.qr-code svg').count()) === 0, 'the QR code is still shown once two-factor sign-in is on');
  const enrolmentStep = Math.floor(enrolledAt / TOTP_STEP_SECONDS);
  log(`two-factor sign-in turned on with the code of step ${enrolmentStep}`);
  await reviewShot(page, 'two-factor-recovery-codes');

  step = 'two-factor sign-in stays on, the codes shown once';
  response = await page.goto('/settings/2fa');
  check(response?.status() === 200, `GET /settings/2fa answered ${response?.status()}`);
  await expectText(page, 'Signing in asks for a code from your app');
  check((await page.getByRole('button', { name: 'Turn off' }).count()) === 1, 'no "Turn off" button once two-factor sign-in is on');
  check((await page.locator('ul.recovery-codes').count()) === 0, 'the recovery codes are shown again');
  check((await page.locator('.qr-code svg').count()) === 0, 'a QR code is shown again once two-factor sign-in is on');
  await expectNoText(page, 'otpauth://');

  step = 'log out, log in with the password: the code page';
  await logOut(page);
  await logInToTheCodePage(page);
  await reviewShot(page, 'login-2fa');
  await page.goto('/dashboard');
  await expectPath(page, '/login');
  response = await page.goto('/login/2fa');
  check(response?.status() === 200, `GET /login/2fa answered ${response?.status()} with the half-done login`);
  await expectText(page, 'Enter your code');

  step = 'the enrolment code is refused (a step is accepted once)';
  const codeField = page.locator('form[action="/login/2fa"]').getByLabel('Code', { exact: true });
  const signIn = page.getByRole('button', { name: 'Sign in', exact: true });
  await codeField.fill(enrolmentCode);
  response = await submit(page, signIn, '/login/2fa');
  check(response.status() === 422, `POST /login/2fa with the code used to turn 2FA on answered ${response.status()}, not 422`);
  await expectPath(page, '/login/2fa');
  await expectText(page, 'That code is not right, or was used already.');
  check((await appCookie(page, 'keel_session')) === null, 'a session cookie was set by a used code');

  step = 'sign in with the next code';
  // The enrolment took the current step; the next one (now + 30 s) is within the ±1 step the
  // app accepts, so no waiting for the clock.
  const signInAt = unixNow() + TOTP_STEP_SECONDS;
  const signInCode = totpCode(secret, signInAt);
  check(signInCode !== enrolmentCode, 'the next step has the same code as the enrolment (one in a million): run again');
  log(`signing in with the code of step ${Math.floor(signInAt / TOTP_STEP_SECONDS)}`);
  await codeField.fill(signInCode);
  response = await submit(page, signIn, '/login/2fa');
  await expectSignedInWithSecondFactor(page, response);
  await reviewShot(page, 'dashboard-2fa');

  step = 'log out, sign in with a recovery code';
  await logOut(page);
  await logInToTheCodePage(page);
  const lostPhone = page.locator('details').filter({ hasText: 'Lost your phone? Use a recovery code' });
  check((await lostPhone.count()) === 1, `the code page has ${await lostPhone.count()} "Lost your phone?" sections, not 1`);
  const recoveryField = lostPhone.getByLabel('Recovery code', { exact: true });
  check(!(await recoveryField.isVisible()), 'the recovery code form shows before "Lost your phone?" is opened');
  await lostPhone.getByText('Lost your phone? Use a recovery code').click();
  await recoveryField.waitFor({ state: 'visible', timeout: STEP_TIMEOUT_MS });
  await recoveryField.fill(recoveryCode);
  response = await submit(page, lostPhone.getByRole('button', { name: 'Sign in with a recovery code' }), '/login/2fa');
  await expectSignedInWithSecondFactor(page, response);

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
