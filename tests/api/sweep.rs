//! A scripted sweep of malformed requests over every route of the route map: random bytes,
//! invalid UTF-8, NUL bytes, huge and repeated fields, wrong content types, overlong queries
//! and paths, odd methods, garbage cookies and forwarding headers, forged Stripe signatures,
//! path traversal under `/static/`, and raw bytes no HTTP client would send. It runs as a
//! stranger, as an anonymous browser and signed in, with a valid CSRF token when it has one so
//! that the input reaches the handlers. Zero 5xx, no file served, and the server stays up.
//!
//! The junk is deterministic (a seeded `StdRng`): a failure names the request, and the same
//! run reproduces it.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use hmac::{KeyInit as _, Mac as _};
use rand::{RngExt as _, SeedableRng as _, rngs::StdRng};
use reqwest::{
    Method, StatusCode,
    header::{self, HeaderMap, HeaderName, HeaderValue},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use keel::http::{FORM_BODY_LIMIT, WEBHOOK_BODY_LIMIT};

use crate::{
    helpers::{TestApp, spawn_app, spawn_app_with},
    visitor::Visitor,
};

const WEBHOOK_SECRET: &str = "whsec_sweep_secret";
const PASSWORD: &str = "correct horse battery";

/// Every GET route of the route map (the fingerprinted stylesheet is added at run time).
/// `every_route_of_the_route_map_is_swept` fails when a route is missing here.
const GET_ROUTES: &[&str] = &[
    "/",
    "/pricing",
    "/signup",
    "/login",
    "/forgot-password",
    "/reset-password",
    "/verify-email",
    "/confirm-email",
    "/revert-email",
    "/dashboard",
    "/settings",
    "/settings/sessions",
    "/settings/2fa",
    "/settings/export/{id}",
    "/login/2fa",
    "/teams",
    "/team",
    "/team/activity",
    "/invite",
    "/billing",
    "/pro",
    "/health",
    "/health/live",
    "/metrics",
    "/admin",
    "/admin/users",
    "/admin/users/{id}",
    "/admin/teams",
    "/admin/teams/{id}",
    "/admin/events",
    "/admin/events/{id}",
    "/admin/jobs",
    "/admin/emails",
];

/// Every POST route of the site, with the fields its handler reads (`/webhooks/stripe` is
/// swept on its own). `every_route_of_the_route_map_is_swept` fails when a route is missing.
const POST_ROUTES: &[(&str, &[&str])] = &[
    ("/signup", &["email", "password"]),
    ("/login", &["email", "password", "next"]),
    ("/logout", &[]),
    ("/forgot-password", &["email"]),
    ("/reset-password", &["password"]),
    ("/settings/password", &["current_password", "new_password"]),
    ("/settings/email", &["email", "password"]),
    ("/settings/2fa/enable", &["code"]),
    ("/settings/export", &[]),
    ("/settings/delete", &["password", "confirm"]),
    ("/settings/2fa/disable", &["password"]),
    ("/login/2fa", &["code", "recovery_code"]),
    ("/settings/resend-verification", &[]),
    ("/settings/sessions/{id}/revoke", &[]),
    ("/settings/sessions/revoke-others", &[]),
    ("/teams", &["name"]),
    ("/teams/switch", &["team_id"]),
    ("/team/invitations", &["email", "role"]),
    ("/team/invitations/{id}/resend", &[]),
    ("/team/invitations/{id}/revoke", &[]),
    ("/team/members/{user_id}/role", &["role"]),
    ("/team/members/{user_id}/remove", &[]),
    ("/team/leave", &[]),
    ("/team/security", &["require_2fa"]),
    ("/invite", &["token"]),
    ("/billing/checkout", &["plan"]),
    ("/billing/portal", &[]),
    ("/admin/users/{id}/disable", &[]),
    ("/admin/users/{id}/enable", &[]),
    ("/admin/users/{id}/end-sessions", &[]),
    ("/admin/users/{id}/impersonate", &[]),
    ("/admin/impersonation/stop", &[]),
    ("/admin/teams/{id}/reconcile", &[]),
    ("/admin/events/{id}/replay", &[]),
    ("/admin/jobs/{id}/retry", &[]),
];

/// The query parameters any GET handler reads.
const QUERY_KEYS: &[&str] = &[
    "next", "notice", "token", "checkout", "plan", "email", "before", "q", "after", "type", "state", "status",
];

/// Deterministic junk.
struct Rng(StdRng);

impl Rng {
    fn seeded(seed: u64) -> Self {
        Self(StdRng::seed_from_u64(seed))
    }

    fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }

    /// 1 to `max` random bytes.
    fn some_bytes(&mut self, max: usize) -> Vec<u8> {
        let len = 1 + self.below(max);
        self.bytes(len)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        self.0.fill(&mut bytes[..]);
        bytes
    }

    /// Junk a header value may carry: visible ASCII, space, tab and obs-text (0x80–0xFF).
    fn header_bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let b: u8 = self.0.random();
            if b == b'\t' || (b >= 0x20 && b != 0x7f) {
                out.push(b);
            }
        }
        out
    }

    /// Something shaped like a session or link token (43 characters of URL-safe base64).
    fn token(&mut self) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        (0..43)
            .map(|_| char::from(ALPHABET[self.below(ALPHABET.len())]))
            .collect()
    }

    /// Printable junk heavy in the characters that mean something in URLs and forms.
    fn url_junk(&mut self, len: usize) -> String {
        const CHARS: &[u8] = b"&=;%+#?/\\'\"<>{}|^`[]~!$*(),:@ .aZ09_-";
        (0..len)
            .map(|_| char::from(CHARS[self.below(CHARS.len())]))
            .collect()
    }
}

/// Every byte percent-encoded.
fn pct(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

fn value(bytes: impl AsRef<[u8]>) -> HeaderValue {
    HeaderValue::from_bytes(bytes.as_ref()).expect("a header value the client can send")
}

/// Who sends a request: its cookies, and the CSRF token that goes with them.
struct Who {
    name: &'static str,
    signed_in: bool,
    /// Sees the operator console (`/admin…`), which is 404 to anyone else, whatever the method.
    operator: bool,
    cookies: Option<String>,
    csrf: Option<String>,
}

impl Who {
    /// A form body: this sender's token first (when it has one), then `fields` exactly as
    /// given (encoded, or deliberately not).
    fn form(&self, fields: &[(&str, &[u8])]) -> Vec<u8> {
        let mut pairs: Vec<Vec<u8>> = Vec::new();
        if let Some(token) = &self.csrf {
            pairs.push(format!("csrf_token={token}").into_bytes());
        }
        for (key, value) in fields {
            let mut pair = key.as_bytes().to_vec();
            pair.push(b'=');
            pair.extend_from_slice(value);
            pairs.push(pair);
        }
        pairs.join(&b'&')
    }

    /// The token as `X-CSRF-Token`, for bodies that are not URL-encoded forms.
    fn csrf_header(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(token) = &self.csrf {
            headers.insert("x-csrf-token", value(token));
        }
        headers
    }

    /// This sender's cookies followed by `junk`, as one `Cookie` header.
    fn cookies_then(&self, junk: &[u8]) -> HeaderValue {
        let mut line = self.cookies.clone().unwrap_or_default().into_bytes();
        if !line.is_empty() {
            line.extend_from_slice(b"; ");
        }
        line.extend_from_slice(junk);
        value(line)
    }
}

/// What a response must be: anything below 500, or one of a few statuses.
#[derive(Clone, Copy)]
enum Expect {
    Below500,
    OneOf(&'static [u16]),
    /// Below 500 but not this one (a body just under the limit is not 413).
    Not(u16),
}

impl Expect {
    fn allows(self, status: u16) -> bool {
        status < 500
            && match self {
                Expect::Below500 => true,
                Expect::OneOf(statuses) => statuses.contains(&status),
                Expect::Not(refused) => status != refused,
            }
    }
}

struct Probe {
    category: &'static str,
    who: &'static str,
    method: Method,
    path: String,
    headers: HeaderMap,
    /// `Cookie` set by the probe itself: the sender's own cookies are not added.
    own_cookies: bool,
    body: Option<Vec<u8>>,
    expect: Expect,
    /// Said in a failure message after the path (what the body was).
    note: String,
}

impl Probe {
    fn new(category: &'static str, who: &Who, method: Method, path: impl Into<String>) -> Self {
        let mut headers = HeaderMap::new();
        if let Some(cookies) = &who.cookies {
            headers.insert(header::COOKIE, value(cookies));
        }
        Self {
            category,
            who: who.name,
            method,
            path: path.into(),
            headers,
            own_cookies: false,
            body: None,
            expect: Expect::Below500,
            note: String::new(),
        }
    }

    fn get(category: &'static str, who: &Who, path: impl Into<String>) -> Self {
        Self::new(category, who, Method::GET, path)
    }

    fn post(category: &'static str, who: &Who, path: impl Into<String>) -> Self {
        Self::new(category, who, Method::POST, path)
    }

    fn header(mut self, name: impl AsRef<str>, value: HeaderValue) -> Self {
        let name = HeaderName::from_bytes(name.as_ref().as_bytes()).expect("a header name");
        if name == header::COOKIE && !self.own_cookies {
            self.headers.remove(header::COOKIE);
            self.own_cookies = true;
        }
        self.headers.append(name, value);
        self
    }

    fn headers(mut self, headers: HeaderMap) -> Self {
        for (name, value) in &headers {
            self = self.header(name.clone(), value.clone());
        }
        self
    }

    /// A body with a `Content-Type` (or none).
    fn body(mut self, content_type: Option<&[u8]>, body: Vec<u8>) -> Self {
        if let Some(content_type) = content_type {
            self = self.header(header::CONTENT_TYPE, value(content_type));
        }
        self.body = Some(body);
        self
    }

    fn form(self, body: Vec<u8>) -> Self {
        self.body(Some(b"application/x-www-form-urlencoded"), body)
    }

    fn expect(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }

    fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

/// Sends probes and keeps what went wrong.
struct Sweep<'a> {
    app: &'a TestApp,
    /// Requests sent, by category.
    sent: BTreeMap<&'static str, usize>,
    /// Answers, by status.
    statuses: BTreeMap<u16, usize>,
    problems: Vec<String>,
}

/// At most `max` characters of `text`, for messages.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        text.chars().take(max).collect::<String>() + "…"
    }
}

impl<'a> Sweep<'a> {
    fn new(app: &'a TestApp) -> Self {
        Self {
            app,
            sent: BTreeMap::new(),
            statuses: BTreeMap::new(),
            problems: Vec::new(),
        }
    }

    fn total(&self) -> usize {
        self.sent.values().sum()
    }

    /// Sends `probe`; its status and body, or `None` if no response came.
    async fn send(&mut self, probe: Probe) -> Option<(StatusCode, Vec<u8>)> {
        *self.sent.entry(probe.category).or_default() += 1;
        let what = format!(
            "[{} as {}] {} {}{}",
            probe.category,
            probe.who,
            probe.method,
            clip(&probe.path, 100),
            probe.note
        );
        let mut request = self
            .app
            .client
            .request(probe.method, self.app.url(&probe.path))
            .headers(probe.headers);
        if let Some(body) = probe.body {
            request = request.body(body);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                self.problems.push(format!("{what} → no response: {error}"));
                return None;
            }
        };
        let status = response.status();
        let body = match response.bytes().await {
            Ok(body) => body.to_vec(),
            Err(error) => {
                self.problems
                    .push(format!("{what} → {status}, then the body broke off: {error}"));
                return None;
            }
        };
        *self.statuses.entry(status.as_u16()).or_default() += 1;
        if !probe.expect.allows(status.as_u16()) {
            self.problems.push(format!("{what} → {status}"));
        }
        Some((status, body))
    }

    /// Writes `request` on a fresh connection by hand and reads the answer to the end.
    async fn send_raw(&mut self, category: &'static str, request: &[u8], expect: Expect) -> String {
        *self.sent.entry(category).or_default() += 1;
        let what = format!(
            "[{category}, raw] {:?}",
            clip(&String::from_utf8_lossy(request), 100)
        );
        let mut stream = TcpStream::connect(("127.0.0.1", self.app.port))
            .await
            .expect("connect");
        // The server may answer (and close) before it has read everything.
        let _ = stream.write_all(request).await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        if read.is_err() {
            self.problems.push(format!("{what} → no answer within 10 s"));
            return answer;
        }
        let status = answer
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| answer.strip_prefix("HTTP/1.0 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse::<u16>().ok());
        if let Some(status) = status {
            *self.statuses.entry(status).or_default() += 1;
        }
        match status {
            Some(status) if expect.allows(status) => {}
            Some(status) => self.problems.push(format!("{what} → {status}")),
            None => self
                .problems
                .push(format!("{what} → no status line: {:?}", clip(&answer, 80))),
        }
        answer
    }
}

/// The three senders: a stranger (no cookies), an anonymous browser (its CSRF cookie and
/// token), and a signed-in user. `leaver` is another signed-in user, for `/logout`: a valid
/// logout ends its session, and `signed_in` must stay signed in for the whole sweep.
struct Senders {
    stranger: Who,
    anonymous: Who,
    signed_in: Who,
    leaver: Who,
}

async fn signed_in(app: &TestApp, name: &'static str, email: &str) -> Who {
    let mut visitor = Visitor::new(app);
    let page = visitor
        .submit("/signup", "/signup", &[("email", email), ("password", PASSWORD)])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let csrf = visitor.get("/settings").await.csrf_token();
    Who {
        name,
        signed_in: true,
        operator: false,
        cookies: Some(visitor.cookie_header()),
        csrf: Some(csrf),
    }
}

/// A route of the operator console that answers 404 to anyone but an operator (all but the
/// end of an impersonation, which the impersonated user's session posts).
fn hidden_console(path: &str) -> bool {
    path.starts_with("/admin") && path != "/admin/impersonation/stop"
}

/// [`signed_in`] as an operator of the console, so that the sweep reaches its handlers.
async fn operator(app: &TestApp, name: &'static str, email: &str) -> Who {
    let who = signed_in(app, name, email).await;
    sqlx::query("UPDATE users SET is_operator = true WHERE email = $1")
        .bind(email)
        .execute(&mut app.database.connect().await)
        .await
        .unwrap();
    Who {
        operator: true,
        ..who
    }
}

impl Senders {
    async fn new(app: &TestApp) -> Self {
        let mut browser = Visitor::new(app);
        let csrf = browser.get("/signup").await.csrf_token();
        Self {
            stranger: Who {
                name: "stranger",
                signed_in: false,
                operator: false,
                cookies: None,
                csrf: None,
            },
            anonymous: Who {
                name: "anonymous",
                signed_in: false,
                operator: false,
                cookies: Some(browser.cookie_header()),
                csrf: Some(csrf),
            },
            signed_in: operator(app, "signed in (an operator)", "sweeper@example.com").await,
            leaver: signed_in(app, "signed in (leaving)", "leaver@example.com").await,
        }
    }
}

/// Garbage `Cookie` headers (and a forged session) after or before `who`'s own cookies.
fn garbage_cookies(rng: &mut Rng, who: &Who) -> Vec<HeaderMap> {
    let mut variants = Vec::new();
    let one = |value: HeaderValue| {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, value);
        headers
    };
    // Overlong.
    variants.push(one(
        who.cookies_then(&[b"junk=".as_slice(), &[b'x'; 32 * 1024]].concat())
    ));
    // Characters no cookie may hold, and pairs that are not pairs.
    variants.push(one(who.cookies_then(
        b"keel_session=\xff\xfe\x80; keel_csrf=\"\xc3\x28\"; ;;; =; ==x; keel_session; \\;,",
    )));
    // A forged session, first, so it is the one read.
    variants.push(one(value(format!(
        "keel_session={}; keel_csrf={}; {}",
        rng.token(),
        rng.token(),
        who.cookies.clone().unwrap_or_default()
    ))));
    // A session cookie of the right length with the wrong alphabet, quoted and spaced.
    variants.push(one(value(format!(
        "keel_session=\" {} \"; keel_session={}",
        "+/".repeat(21),
        "é".repeat(43)
    ))));
    // Random header bytes.
    variants.push(one(who.cookies_then(&rng.header_bytes(512))));
    // Many Cookie headers.
    let mut many = HeaderMap::new();
    if let Some(cookies) = &who.cookies {
        many.append(header::COOKIE, value(cookies));
    }
    for i in 0..60 {
        many.append(header::COOKIE, value(format!("c{i}={}", rng.token())));
    }
    variants.push(many);
    variants
}

/// Garbage `X-Forwarded-For` (the test client is a trusted proxy, so it is parsed).
fn garbage_forwarded_for(rng: &mut Rng) -> Vec<HeaderMap> {
    let list: Vec<String> = (0..600)
        .map(|i| format!("10.{}.{}.{}", i % 256, (i / 256) % 256, rng.below(256)))
        .collect();
    [
        rng.header_bytes(256),
        b"unknown, 999.1.1.1, 1.2.3.4.5, [::1]:x, ::ffff:, <script>, , ,".to_vec(),
        b"\xff\xfe, 2001:db8::1%eth0, [2001:db8::1]:99999, -1, 0x7f.1".to_vec(),
        list.join(", ").into_bytes(),
    ]
    .into_iter()
    .map(|junk| {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", value(&junk));
        headers.append("x-forwarded-for", value("203.0.113.9"));
        headers.append("x-forwarded-for", value(&junk));
        headers
    })
    .collect()
}

/// Other headers with junk in them: request id, accept, encodings, auth, ranges, user agent.
fn garbage_headers(rng: &mut Rng) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("x-request-id", value(b"../../\xff\xfe; rm -rf /"));
    headers.insert(header::ACCEPT, value(b"application/json;q=\xff, */*;q=-1"));
    headers.insert(header::ACCEPT_ENCODING, value(b"gzip;q=\xff, br;q=2, *;q=x"));
    headers.insert(header::AUTHORIZATION, value(b"Bearer \xff\xfe\x80"));
    headers.insert(header::RANGE, value(b"bytes=99999999999999999999-0"));
    headers.insert(header::IF_NONE_MATCH, value(rng.header_bytes(64)));
    headers.insert(header::USER_AGENT, value(rng.header_bytes(2048)));
    headers.insert("x-csrf-token", value(rng.header_bytes(64)));
    headers
}

async fn hostile_gets(sweep: &mut Sweep<'_>, rng: &mut Rng, who: &Who, route: &str) {
    let q = |query: &str| format!("{route}?{query}");
    let all_keys = |value: &str| {
        QUERY_KEYS
            .iter()
            .map(|key| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let utf8 = "invalid UTF-8";
    for path in [
        q(&all_keys("%FF%FE")),
        q(&all_keys("%C0%AF%ED%A0%80")),
        q("%FF%FE=%FF&%C3%28"),
        format!("{route}%FF%FE"),
    ] {
        sweep.send(Probe::get(utf8, who, path)).await;
    }
    let nul = "NUL bytes";
    for path in [
        q(&all_keys("%00")),
        q("next=/%00/evil&token=a%00b&checkout=success%00"),
        format!("{route}/%00"),
    ] {
        sweep.send(Probe::get(nul, who, path)).await;
    }
    let repeated = (0..300)
        .map(|i| {
            QUERY_KEYS
                .iter()
                .map(|key| format!("{key}=v{i}"))
                .collect::<Vec<_>>()
                .join("&")
        })
        .collect::<Vec<_>>()
        .join("&");
    sweep.send(Probe::get("repeated fields", who, q(&repeated))).await;
    let long = "overlong query or path";
    for path in [
        q(&format!("next=/{}", "a".repeat(16 * 1024))),
        q(&format!("token={}", "%FF".repeat(20 * 1024))),
        // Just under what a URI may be (64 KiB); past it, see `raw_requests`.
        q(&format!("x={}", "a".repeat(63 * 1024))),
        format!("{route}/{}", "a".repeat(16 * 1024)),
    ] {
        sweep.send(Probe::get(long, who, path)).await;
    }
    let random = "random bytes";
    let (a, b) = (rng.bytes(64), rng.bytes(64));
    sweep
        .send(Probe::get(random, who, q(&format!("{}={}", pct(&a), pct(&b)))))
        .await;
    let junk = rng.url_junk(200);
    sweep.send(Probe::get(random, who, q(&junk))).await;
    let forged = rng.token();
    sweep
        .send(Probe::get("forged tokens", who, q(&format!("token={forged}"))))
        .await;
    for cookies in garbage_cookies(rng, who).into_iter().step_by(2) {
        sweep
            .send(Probe::get("garbage cookies", who, route).headers(cookies))
            .await;
    }
    for forwarded in garbage_forwarded_for(rng).into_iter().skip(2) {
        sweep
            .send(Probe::get("garbage X-Forwarded-For", who, route).headers(forwarded))
            .await;
    }
    sweep
        .send(Probe::get("garbage headers", who, route).headers(garbage_headers(rng)))
        .await;
    // JSON errors, and a body on a GET.
    sweep
        .send(
            Probe::get("wrong content types", who, q("%FF"))
                .header(header::ACCEPT, value("application/json"))
                .body(Some(b"application/json"), rng.bytes(256)),
        )
        .await;
}

async fn hostile_posts(sweep: &mut Sweep<'_>, rng: &mut Rng, who: &Who, route: &str, fields: &[&str]) {
    // Routes that read no fields still get some.
    let fields: &[&str] = if fields.is_empty() { &["x"] } else { fields };
    let every = |value: &[u8]| who.form(&fields.iter().map(|key| (*key, value)).collect::<Vec<_>>());
    let token = who.csrf_header();

    let random = "random bytes";
    let mut body = who.form(&[]);
    body.push(b'&');
    body.extend(rng.some_bytes(2048));
    sweep.send(Probe::post(random, who, route).form(body)).await;
    let body = rng.some_bytes(2048);
    sweep
        .send(
            Probe::post(random, who, route)
                .headers(token.clone())
                .body(None, body),
        )
        .await;
    let body = rng.some_bytes(2048);
    sweep
        .send(
            Probe::post(random, who, route)
                .headers(token.clone())
                .body(Some(b"application/octet-stream"), body),
        )
        .await;

    let utf8 = "invalid UTF-8";
    for body in [
        every(b"%FF%FE%C0%AF%ED%A0%80"),
        every(b"\xff\xfe\xc3\x28\xed\xa0\x80"),
        [who.form(&[]), b"&\xff\xfe=1&%FF%FE=%FE".to_vec()].concat(),
    ] {
        sweep.send(Probe::post(utf8, who, route).form(body)).await;
    }
    sweep
        .send(Probe::post(utf8, who, format!("{route}?token=%FF%FE&next=%C0%AF")).form(every(b"x")))
        .await;

    let nul = "NUL bytes";
    let plausible = who.form(&[
        (
            "email",
            format!("nul%00{}@example.com", rng.below(1_000_000)).as_bytes(),
        ),
        ("password", b"pass%00word-1234"),
        ("next", b"/%00/evil"),
        ("current_password", b"x%00"),
        ("new_password", b"new%00password-1234"),
        ("plan", b"pro%00"),
    ]);
    for body in [every(b"%00"), every(b"a\0b\0"), plausible] {
        sweep.send(Probe::post(nul, who, route).form(body)).await;
    }
    sweep
        .send(Probe::post(nul, who, format!("{route}%00")).form(every(b"x")))
        .await;

    let huge = "huge fields";
    let room = FORM_BODY_LIMIT - every(b"").len();
    let under = every(&vec![b'a'; room / fields.len() - 1]);
    assert!(under.len() < FORM_BODY_LIMIT);
    sweep
        .send(Probe::post(huge, who, route).form(under).expect(Expect::Not(413)))
        .await;
    let over = every(&vec![b'a'; room / fields.len() + 1]);
    assert!(over.len() > FORM_BODY_LIMIT);
    sweep
        .send(
            Probe::post(huge, who, route)
                .form(over)
                .expect(Expect::OneOf(&[413])),
        )
        .await;
    sweep
        .send(Probe::post(huge, who, format!("{route}?token={}", "a".repeat(60 * 1024))).form(every(b"x")))
        .await;

    let repeated = "repeated fields";
    let many: Vec<(&str, Vec<u8>)> = (0..1000)
        .flat_map(|i| fields.iter().map(move |key| (*key, format!("v{i}").into_bytes())))
        .collect();
    let many: Vec<(&str, &[u8])> = many.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    sweep
        .send(Probe::post(repeated, who, route).form(who.form(&many)))
        .await;
    let mut body = who.form(&[]);
    for _ in 0..200 {
        body.extend(format!("&csrf_token={}", rng.token()).as_bytes());
    }
    sweep.send(Probe::post(repeated, who, route).form(body)).await;

    let types = "wrong content types";
    let form = every(b"a%40example.com");
    let json = format!(
        "{{{}}}",
        fields
            .iter()
            .map(|key| format!("\"{key}\":\"a@example.com\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut boundary = b"multipart/form-data; boundary=".to_vec();
    boundary.extend(rng.header_bytes(40));
    for (content_type, body) in [
        (Some(b"text/plain".to_vec()), form.clone()),
        (Some(boundary), rng.bytes(512)),
        (
            Some(b"multipart/form-data".to_vec()),
            b"--x\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\na\r\n--x--\r\n".to_vec(),
        ),
        (Some(b"application/json".to_vec()), json.clone().into_bytes()),
        (Some(b"application/json".to_vec()), form.clone()),
        (None, form.clone()),
        (
            Some(b"application/x-www-form-urlencoded; charset=\xff\xfe".to_vec()),
            form.clone(),
        ),
        (
            Some(b"application/x-www-form-urlencoded".to_vec()),
            json.into_bytes(),
        ),
        (Some(b"APPLICATION/X-WWW-FORM-URLENCODED".to_vec()), form.clone()),
        (Some(b"\xff/\xfe; ; =".to_vec()), form.clone()),
    ] {
        sweep
            .send(
                Probe::post(types, who, route)
                    .headers(token.clone())
                    .body(content_type.as_deref(), body),
            )
            .await;
    }
    // Two content types at once.
    sweep
        .send(
            Probe::post(types, who, route)
                .header(header::CONTENT_TYPE, value("text/plain"))
                .form(form.clone()),
        )
        .await;

    for cookies in garbage_cookies(rng, who).into_iter().skip(1).step_by(2) {
        sweep
            .send(
                Probe::post("garbage cookies", who, route)
                    .headers(cookies)
                    .form(form.clone()),
            )
            .await;
    }
    for forwarded in garbage_forwarded_for(rng).into_iter().take(2) {
        sweep
            .send(
                Probe::post("garbage X-Forwarded-For", who, route)
                    .headers(forwarded)
                    .form(form.clone()),
            )
            .await;
    }
    let headers = "garbage headers";
    sweep
        .send(
            Probe::post(headers, who, route)
                .headers(garbage_headers(rng))
                .form(form.clone()),
        )
        .await;
    for junk in [rng.header_bytes(64), vec![b'A'; 16 * 1024]] {
        sweep
            .send(
                Probe::post(headers, who, route)
                    .header("x-csrf-token", value(junk))
                    .form(form.clone()),
            )
            .await;
    }
}

/// The envelope of a snapshot event.
fn event_json(id: &str, kind: &str, created: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "object": "event",
        "type": kind,
        "created": created,
    })
}

fn webhook_signature(body: &[u8], t: i64) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

async fn hostile_webhooks(sweep: &mut Sweep<'_>, rng: &mut Rng, who: &Who) {
    const PATH: &str = "/webhooks/stripe";
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let event = br#"{"id":"evt_sweep","object":"event","type":"invoice.paid","created":1700000000}"#;
    let signatures: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"t=".to_vec(),
        b"v1=".to_vec(),
        b",,,,=,=".to_vec(),
        b"t=abc,v1=def".to_vec(),
        b"t=99999999999999999999999,v1=00".to_vec(),
        b"t=-9223372036854775808,v1=zz".to_vec(),
        format!("t={now},v1={}", "0".repeat(64)).into_bytes(),
        format!("t={now},v0={}", "f".repeat(64)).into_bytes(),
        format!("t={now},{}", "v1=00,".repeat(2000)).into_bytes(),
        format!("t={now},v1={}", "\u{e9}".repeat(32)).into_bytes(),
        format!("t={now},v1={}", "a".repeat(32 * 1024)).into_bytes(),
        rng.header_bytes(128),
        b"t=\xff\xfe,v1=\x80".to_vec(),
    ];
    let sig = "garbage Stripe-Signature";
    for signature in &signatures {
        for body in [event.to_vec(), rng.some_bytes(4096)] {
            sweep
                .send(
                    Probe::post(sig, who, PATH)
                        .header("stripe-signature", value(signature))
                        .body(Some(b"application/json"), body),
                )
                .await;
        }
    }
    sweep
        .send(Probe::post(sig, who, PATH).body(Some(b"application/json"), event.to_vec()))
        .await;
    // Two signature headers, the second one valid.
    sweep
        .send(
            Probe::post(sig, who, PATH)
                .header("stripe-signature", value("t=1,v1=00"))
                .header("stripe-signature", value(webhook_signature(event, now)))
                .body(Some(b"application/json"), event.to_vec()),
        )
        .await;

    let types = "wrong content types";
    for content_type in [
        None,
        Some(&b"text/plain"[..]),
        Some(b"multipart/form-data; boundary=\xff"),
        Some(b"application/x-www-form-urlencoded"),
    ] {
        sweep
            .send(
                Probe::post(types, who, PATH)
                    .header("stripe-signature", value(b"t=1,v1=00"))
                    .body(content_type, rng.bytes(300)),
            )
            .await;
    }

    let huge = "huge fields";
    let mut at_limit = event.to_vec();
    at_limit.resize(WEBHOOK_BODY_LIMIT, b' ');
    sweep
        .send(
            Probe::post(huge, who, PATH)
                .header("stripe-signature", value(b"t=1,v1=00"))
                .body(Some(b"application/json"), at_limit)
                .expect(Expect::OneOf(&[400])),
        )
        .await;
    for size in [WEBHOOK_BODY_LIMIT + 1, 2 * WEBHOOK_BODY_LIMIT] {
        sweep
            .send(
                Probe::post(huge, who, PATH)
                    .header("stripe-signature", value(b"t=1,v1=00"))
                    .body(Some(b"application/json"), rng.bytes(size))
                    .expect(Expect::OneOf(&[413])),
            )
            .await;
    }

    // Correctly signed bodies that are not events Stripe would send: the handler's own checks
    // and the database see them.
    let mut hostile = vec![
        event_json("evt_sweep_nul_type", "invoice.paid\u{0}", 1_700_000_000.into()),
        event_json("evt_\u{0}", "invoice.paid", 1.into()),
        event_json("evt_sweep_past", "invoice.paid", (-300_000_000_000_i64).into()),
        event_json("evt_sweep_min", "invoice.paid", i64::MIN.into()),
        event_json("evt_sweep_future", "invoice.paid", 253_402_300_800_i64.into()),
        event_json("evt_sweep_float", "invoice.paid", 1e300.into()),
        event_json("evt_sweep_string", "invoice.paid", "yesterday".into()),
        event_json(&format!("evt_{}", "a".repeat(300)), "x", 1.into()),
        event_json("evt_sweep_long_type", &"t".repeat(256), 1.into()),
        event_json("evt_sweep_empty_type", "", 1.into()),
    ];
    let mut version = event_json("evt_sweep_nul_version", "invoice.paid", 1_700_000_000.into());
    version["api_version"] = "2024\u{0}x".into();
    let mut thin = event_json("evt_sweep_thin", "x", 1.into());
    thin["object"] = "v2.core.event".into();
    let mut livemode = event_json("evt_sweep_live", "x", 1.into());
    livemode["livemode"] = "yes".into();
    let mut nested = event_json("evt_sweep_nested", "customer.subscription.updated", 1.into());
    nested["data"] = serde_json::json!({ "object": { "id": "sub_\u{0}", "customer": null, "items": 7 } });
    hostile.extend([version, thin, livemode, nested]);
    let mut bodies: Vec<Vec<u8>> = hostile
        .iter()
        .map(|event| serde_json::to_vec(event).unwrap())
        .collect();
    let mut trailing_nul = event.to_vec();
    trailing_nul.extend_from_slice(b"\0\0");
    let mut utf8 = br#"{"id":"evt_sweep_utf8","created":1,"type":""#.to_vec();
    utf8.extend_from_slice(b"\xff\xfe\"}");
    bodies.extend([
        rng.bytes(512),
        Vec::new(),
        trailing_nul,
        // Invalid UTF-8, a lone surrogate, a repeated key, nesting past any parser's limit.
        utf8,
        br#"{"id":"evt_sweep_surrogate","type":"\ud800","created":1}"#.to_vec(),
        br#"{"id":"evt_sweep_dup","id":"evt_sweep_dup2","type":"x","created":1}"#.to_vec(),
        "[".repeat(100_000).into_bytes(),
    ]);
    for body in bodies {
        let signature = webhook_signature(&body, now);
        let note = format!(" {:?}", clip(&String::from_utf8_lossy(&body), 100));
        sweep
            .send(
                Probe::post("signed hostile events", who, PATH)
                    .note(note)
                    .header("stripe-signature", value(signature))
                    .body(Some(b"application/json"), body),
            )
            .await;
    }
}

/// Paths that climb out of `/static/`, and what the file they aim at would contain.
fn traversal_paths(asset: &str) -> Vec<(String, &'static str)> {
    let cargo = "[package]";
    let passwd = "root:";
    let mut paths = vec![
        ("/static/../Cargo.toml".to_owned(), cargo),
        ("/static/../../../../../../etc/passwd".to_owned(), passwd),
        ("/static/..%2fCargo.toml".to_owned(), cargo),
        ("/static/..%2f..%2f..%2f..%2f..%2fetc%2fpasswd".to_owned(), passwd),
        ("/static/..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd".to_owned(), passwd),
        ("/static/%2e%2e/Cargo.toml".to_owned(), cargo),
        ("/static/%2e%2e%2fCargo.toml".to_owned(), cargo),
        (
            "/static/%2E%2E%2F%2E%2E%2F%2E%2E%2Fetc%2Fpasswd".to_owned(),
            passwd,
        ),
        ("/static/%252e%252e%252fCargo.toml".to_owned(), cargo),
        ("/static/..%252f..%252f..%252fetc%252fpasswd".to_owned(), passwd),
        ("/static/%25252e%25252e%25252fCargo.toml".to_owned(), cargo),
        ("/static/..%5cCargo.toml".to_owned(), cargo),
        ("/static/..\\..\\Cargo.toml".to_owned(), cargo),
        ("/static/%c0%ae%c0%ae/Cargo.toml".to_owned(), cargo),
        (
            "/static/%c0%ae%c0%ae%c0%af%c0%ae%c0%ae%c0%afetc%c0%afpasswd".to_owned(),
            passwd,
        ),
        ("/static/..%c0%af..%c0%afetc%c0%afpasswd".to_owned(), passwd),
        ("/static/%u002e%u002e/Cargo.toml".to_owned(), cargo),
        ("/static/....//....//etc/passwd".to_owned(), passwd),
        ("/static//etc/passwd".to_owned(), passwd),
        ("/static/%2fetc%2fpasswd".to_owned(), passwd),
        ("/static/.%2e/Cargo.toml".to_owned(), cargo),
        ("/static/./../Cargo.toml".to_owned(), cargo),
        ("/static/..;/Cargo.toml".to_owned(), cargo),
        ("/static/Cargo.toml%00.css".to_owned(), cargo),
        ("/static/..%00/Cargo.toml".to_owned(), cargo),
        ("/static/file:%2f%2f%2fetc%2fpasswd".to_owned(), passwd),
    ];
    paths.push((format!("{asset}/../../Cargo.toml"), cargo));
    paths.push((format!("{asset}%2f..%2f..%2fCargo.toml"), cargo));
    paths
}

async fn traversal(sweep: &mut Sweep<'_>, who: &Who, asset: &str) -> Vec<String> {
    let mut leaks = Vec::new();
    let category = "path traversal";
    let not_served = Expect::OneOf(&[400, 404]);
    for (path, marker) in traversal_paths(asset) {
        // As written, byte for byte (an HTTP client would resolve the dots first)…
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let answer = sweep.send_raw(category, request.as_bytes(), not_served).await;
        if answer.contains(marker) {
            leaks.push(format!("raw {path}: {}", clip(&answer, 200)));
        }
        // …in absolute form…
        let request = format!("GET http://127.0.0.1{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let answer = sweep.send_raw(category, request.as_bytes(), not_served).await;
        if answer.contains(marker) {
            leaks.push(format!("absolute-form {path}: {}", clip(&answer, 200)));
        }
        // …and through the client, as a browser would send it.
        let probe = Probe::get(category, who, path.clone()).expect(not_served);
        if let Some((_, body)) = sweep.send(probe).await
            && String::from_utf8_lossy(&body).contains(marker)
        {
            leaks.push(format!(
                "client {path}: {}",
                clip(&String::from_utf8_lossy(&body), 200)
            ));
        }
    }
    leaks
}

async fn odd_methods(sweep: &mut Sweep<'_>, who: &Who, paths: &[&str], all: bool) {
    let category = "odd methods";
    for path in paths {
        // A wrong method is 405 for everyone: behind login too, the login check runs only for
        // the route's own methods. The console is 404 to anyone but an operator, whatever the
        // method: it does not reveal that it exists.
        let expect = if hidden_console(path) && !who.operator {
            Expect::OneOf(&[404])
        } else {
            Expect::OneOf(&[405])
        };
        for method in ["PUT", "DELETE", "PATCH"] {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            sweep
                .send(
                    Probe::new(category, who, method, *path)
                        .headers(who.csrf_header())
                        .form(who.form(&[("email", b"a@example.com")]))
                        .expect(expect),
                )
                .await;
        }
        if all {
            for method in ["HEAD", "OPTIONS", "TRACE", "BREW", "M-SEARCH"] {
                let method = Method::from_bytes(method.as_bytes()).unwrap();
                sweep.send(Probe::new(category, who, method, *path)).await;
            }
        }
    }
}

/// `head` (a request line and header lines) with a Host, and the connection closed after.
fn http(head: &[u8], body: &[u8]) -> Vec<u8> {
    [head, b"\r\nHost: x\r\nConnection: close\r\n\r\n", body].concat()
}

async fn raw_requests(sweep: &mut Sweep<'_>, rng: &mut Rng, who: &Who) {
    let category = "raw bytes";
    let bad = Expect::OneOf(&[400]);
    let any = Expect::Below500;
    let get = |head: &[u8]| http(head, b"");
    let mut with_cookie = b"GET /dashboard HTTP/1.1\r\nCookie: ".to_vec();
    with_cookie.extend(who.cookies.clone().unwrap_or_default().as_bytes());
    with_cookie.extend(b"; keel_session=\x00\x01");
    let mut many_headers = b"GET / HTTP/1.1".to_vec();
    for i in 0..150 {
        many_headers.extend(format!("\r\nX-H{i}: v").as_bytes());
    }
    let huge_header = format!("GET / HTTP/1.1\r\nX-Huge: {}", "a".repeat(512 * 1024));
    let huge_uri = format!("GET /?{} HTTP/1.1", "a".repeat(70 * 1024));
    let mut cases: Vec<(Vec<u8>, Expect)> = vec![
        // Raw invalid UTF-8 and NUL where no client puts them.
        (get(b"GET /\xff\xfe HTTP/1.1"), bad),
        (get(b"GET /login?next=\xff\xfe&token=\xc0\xaf HTTP/1.1"), bad),
        (get(b"GET /static/\x00 HTTP/1.1"), bad),
        (get(b"GET /verify-email?token=\x00 HTTP/1.1"), bad),
        (get(b"G\x00T / HTTP/1.1"), bad),
        (get(b"GET / HTTP/1.1\r\nX-Bad: \x00"), bad),
        (get(&with_cookie), bad),
        (get(b"GET / HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\x00"), bad),
        (
            http(
                b"POST /webhooks/stripe HTTP/1.1\r\nStripe-Signature: t=1,v1=\x00\r\nContent-Length: 2",
                b"{}",
            ),
            bad,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: \xff\xfe\r\nConnection: close\r\n\r\n".to_vec(),
            any,
        ),
        (get(b"GET / HTTP/1.1\r\nHost: y"), any),
        (b"GET / HTTP/1.0\r\n\r\n".to_vec(), any),
        // Broken header lines.
        (get(b"GET / HTTP/1.1\r\nBad Header: x"), bad),
        (get(b"GET / HTTP/1.1\r\nno colon here"), bad),
        (get(b"GET / HTTP/1.1\r\nX-A: a\r\n folded"), bad),
        (get(b"GET / HTTP/1.1\r\n: empty name"), bad),
        // Bodies framed wrongly.
        (get(b"POST /login HTTP/1.1\r\nContent-Length: -1"), bad),
        (get(b"POST /login HTTP/1.1\r\nContent-Length: abc"), bad),
        (
            http(
                b"POST /login HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2",
                b"ab",
            ),
            bad,
        ),
        (
            get(b"POST /login HTTP/1.1\r\nContent-Length: 99999999999999999999999"),
            bad,
        ),
        (get(b"POST /login HTTP/1.1\r\nTransfer-Encoding: gzip"), bad),
        (
            http(
                b"POST /login HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\
                  Content-Type: application/x-www-form-urlencoded",
                b"zz\r\nabc\r\n0\r\n\r\n",
            ),
            any,
        ),
        (
            http(
                b"POST /login HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked",
                b"3\r\na=b\r\n0\r\n\r\n",
            ),
            any,
        ),
        // Versions, methods and targets.
        (get(b"GET / HTTP/9.9"), bad),
        (get(b"GET / HTTP/1.1 extra"), bad),
        (get(b"GET  /  HTTP/1.1"), any),
        (get(b"CONNECT 127.0.0.1:1 HTTP/1.1"), any),
        (get(b"GET * HTTP/1.1"), any),
        (get(b"OPTIONS * HTTP/1.1"), any),
        (get(b"GET relative/path HTTP/1.1"), any),
        (b"NOT-HTTP\r\n\r\n".to_vec(), bad),
        // Too big to parse.
        (get(huge_uri.as_bytes()), Expect::OneOf(&[414, 431])),
        (get(huge_header.as_bytes()), Expect::OneOf(&[431])),
        (get(&many_headers), Expect::OneOf(&[431])),
    ];
    for _ in 0..4 {
        let mut junk = rng.some_bytes(1024);
        junk.extend(b"\r\n\r\n");
        cases.push((junk, any));
    }
    for (request, expect) in cases {
        sweep.send_raw(category, &request, expect).await;
    }
}

#[tokio::test]
async fn a_malformed_request_sweep_over_every_route_gets_no_5xx_and_the_server_stays_up() {
    let app = spawn_app_with(|env| {
        env.insert("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned());
        env.insert("STRIPE_PRICES", "pro=price_123".to_owned());
        // The test client is a trusted proxy, so garbage X-Forwarded-For is parsed, not ignored.
        env.insert("TRUSTED_PROXIES", "127.0.0.1/32".to_owned());
        // The sweep posts to the auth forms well over 1,000 times a minute: no 429 may keep
        // its input from the handlers.
        env.insert("AUTH_RATE_LIMIT_PER_MINUTE", "1000000".to_owned());
    })
    .await;
    let started = Instant::now();
    let senders = Senders::new(&app).await;
    let landing = app.get("/").await.text().await.unwrap();
    let asset = landing
        .split('"')
        .find(|part| part.starts_with("/static/app."))
        .unwrap_or_else(|| panic!("no stylesheet in the landing page:\n{landing}"))
        .to_owned();
    let mut sweep = Sweep::new(&app);
    let mut rng = Rng::seeded(0x5EED_CAFE_F00D_D00D);

    let gets: Vec<&str> = GET_ROUTES.iter().copied().chain([asset.as_str()]).collect();
    for who in [&senders.anonymous, &senders.signed_in] {
        for route in &gets {
            hostile_gets(&mut sweep, &mut rng, who, route).await;
        }
    }
    for who in [&senders.stranger, &senders.anonymous, &senders.signed_in] {
        for (route, fields) in POST_ROUTES {
            let who = if *route == "/logout" && who.signed_in {
                &senders.leaver
            } else {
                who
            };
            hostile_posts(&mut sweep, &mut rng, who, route, fields).await;
        }
    }
    hostile_webhooks(&mut sweep, &mut rng, &senders.stranger).await;
    let every_path: Vec<&str> = gets
        .iter()
        .copied()
        .chain(POST_ROUTES.iter().map(|(route, _)| *route))
        .chain(["/webhooks/stripe"])
        .collect();
    odd_methods(&mut sweep, &senders.anonymous, &every_path, true).await;
    odd_methods(&mut sweep, &senders.signed_in, &every_path, false).await;
    let leaks = traversal(&mut sweep, &senders.stranger, &asset).await;
    raw_requests(&mut sweep, &mut rng, &senders.signed_in).await;

    let elapsed = started.elapsed();
    eprintln!(
        "sweep: {} requests in {elapsed:.1?}\nsent: {:?}\nanswered: {:?}",
        sweep.total(),
        sweep.sent,
        sweep.statuses
    );
    assert!(
        sweep.problems.is_empty(),
        "{} of {} hostile requests were answered wrongly:\n{}",
        sweep.problems.len(),
        sweep.total(),
        sweep.problems.join("\n")
    );
    assert!(leaks.is_empty(), "files served:\n{}", leaks.join("\n"));

    // The server stays up, and the signed-in user is still signed in.
    assert_eq!(app.get("/health/live").await.status(), 200);
    let landing = app.get("/").await;
    assert_eq!(landing.status(), 200);
    assert!(landing.text().await.unwrap().contains("/static/app."));
    let dashboard = app
        .client
        .get(app.url("/dashboard"))
        .header(header::COOKIE, senders.signed_in.cookies.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(dashboard.status(), 200);
}

/// Routes the sweep covers other than through the lists above.
const SWEPT_APART: &[(&str, &str)] = &[
    (
        "/static/{file}",
        "swept with the fingerprinted stylesheet and the traversal paths",
    ),
    ("/webhooks/stripe", "swept on its own (hostile_webhooks)"),
];

/// The route map's paths as written in `src/http/` (every `.route("…"` outside the test
/// modules). A route this cannot read (a path that is not a literal, a nested or service
/// router) is a failure rather than a route left out.
fn route_map_paths() -> Vec<String> {
    let mut paths = Vec::new();
    let mut unreadable = Vec::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        assert!(
            file.extension().is_some_and(|ext| ext == "rs"),
            "{}: the route guard reads only the files of src/http/: teach it this one",
            file.display()
        );
        let source = std::fs::read_to_string(&file).unwrap();
        let code = source.split("#[cfg(test)]").next().unwrap_or_default();
        for unsupported in [
            ".nest(",
            ".nest_service(",
            ".route_service(",
            ".fallback_service(",
        ] {
            if code.contains(unsupported) {
                unreadable.push(format!("{}: {unsupported}", file.display()));
            }
        }
        for (at, _) in code.match_indices(".route(") {
            let rest = code[at + ".route(".len()..].trim_start();
            match rest.strip_prefix('"').and_then(|rest| rest.split_once('"')) {
                Some((path, _)) => paths.push(path.to_owned()),
                None => unreadable.push(format!("{}: .route({}", file.display(), clip(rest, 40))),
            }
        }
    }
    assert!(
        unreadable.is_empty(),
        "routes the guard cannot read (give .route a literal path):\n{}",
        unreadable.join("\n")
    );
    paths
}

/// The guard of the sweep's lists: every route of the route map, with each method it
/// answers (from the `Allow` of a 405), is swept, and the lists name no route that is gone.
#[tokio::test]
async fn every_route_of_the_route_map_is_swept() {
    let app = spawn_app().await;
    let operator = operator(&app, "operator", "guard@example.com").await;
    let paths = route_map_paths();
    assert!(paths.len() >= GET_ROUTES.len(), "{paths:?}");
    let mut missing = Vec::new();
    for path in &paths {
        if SWEPT_APART.iter().any(|(apart, _)| apart == path) {
            continue;
        }
        // No route takes PATCH: axum answers 405 with the methods the route does take (the
        // console only to an operator: to anyone else it is 404).
        let mut patch = app.client.patch(app.url(path));
        if hidden_console(path) {
            let hidden = app.client.patch(app.url(path)).send().await.unwrap();
            assert_eq!(hidden.status(), 404, "PATCH {path} by a stranger");
            patch = patch.header(header::COOKIE, operator.cookies.clone().unwrap());
        }
        let response = patch.send().await.unwrap();
        assert_eq!(response.status(), 405, "PATCH {path}");
        let allow = response.headers()[header::ALLOW].to_str().unwrap().to_owned();
        for method in allow.split(',').map(str::trim) {
            let swept = match method {
                "GET" => GET_ROUTES.contains(&path.as_str()),
                "POST" => POST_ROUTES.iter().any(|(route, _)| route == path),
                "HEAD" => true,
                _ => false,
            };
            if !swept {
                missing.push(format!("{method} {path}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "routes of the route map the malformed-request sweep does not cover (add them to GET_ROUTES / POST_ROUTES):\n{}",
        missing.join("\n")
    );
    let stale: Vec<&str> = GET_ROUTES
        .iter()
        .copied()
        .chain(POST_ROUTES.iter().map(|(route, _)| *route))
        .filter(|route| !paths.iter().any(|path| path == route))
        .collect();
    assert!(
        stale.is_empty(),
        "swept routes the route map no longer has: {stale:?}"
    );
}
