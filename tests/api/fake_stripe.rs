//! A fake Stripe API for the tests: a real HTTP server on 127.0.0.1 speaking Stripe's wire
//! format (form-encoded requests with nested `a[b][c]` keys, JSON responses, Stripe's error
//! shape, `Idempotency-Key` replays), so that the app's Stripe client goes over the network as
//! in production once `STRIPE_API_BASE` points at [`FakeStripe::url`].
//!
//! Every request is recorded before it is answered, and a [`Mode`] makes the fake fail or hang,
//! for the tests of what the app does while Stripe is down or slow.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract,
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value, json};
use tokio::{net::TcpListener, task::JoinHandle};

/// How the fake answers.
#[derive(Clone, Debug, Default)]
pub enum Mode {
    #[default]
    Normal,
    /// Every request answers this status with an `api_error` body.
    Fail(u16),
    /// The next n requests answer 500, then [`Mode::Normal`].
    FailNext(usize),
    /// No request is answered (each waits an hour in its own task): a hung Stripe.
    Hang,
}

/// A request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Empty unless the body was form-encoded.
    pub form: Vec<(String, String)>,
    pub idempotency_key: Option<String>,
    pub stripe_version: Option<String>,
    pub authorization: Option<String>,
}

impl Recorded {
    /// The first value of `key` (as sent: `line_items[0][price]`) in the form, else the query.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.form
            .iter()
            .chain(&self.query)
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }
}

pub struct FakeStripe {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    server: JoinHandle<()>,
}

impl FakeStripe {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Stripe");
        let addr = listener.local_addr().expect("fake Stripe address");
        let state = Arc::new(Mutex::new(State::default()));
        let router = Router::new().fallback(handle).with_state(Arc::clone(&state));
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("the fake Stripe serves");
        });
        Self { addr, state, server }
    }

    /// The API base, without a trailing slash: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state().mode = mode;
    }

    /// Every request received, in order, including those answered with a failure.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    /// How many requests had this method and exactly this path.
    pub fn count(&self, method: &str, path: &str) -> usize {
        let state = self.state();
        state
            .requests
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .count()
    }

    /// A recurring (licensed, every 1 `interval`) price that `GET /v1/prices/{id}` returns.
    pub fn add_price(&self, id: &str, unit_amount: i64, currency: &str, interval: &str) {
        let price = json!({
            "id": id, "object": "price", "active": true, "billing_scheme": "per_unit",
            "created": now(), "currency": currency, "custom_unit_amount": null, "livemode": false,
            "lookup_key": null, "metadata": {}, "nickname": null,
            "product": format!("prod_{}", id.trim_start_matches("price_")),
            "recurring": {"interval": interval, "interval_count": 1, "meter": null,
                          "trial_period_days": null, "usage_type": "licensed"},
            "tax_behavior": "unspecified", "tiers_mode": null, "transform_quantity": null,
            "type": "recurring", "unit_amount": unit_amount,
            "unit_amount_decimal": unit_amount.to_string(),
        });
        self.state().prices.insert(id.to_owned(), price);
    }

    /// Inserts `subscription`, or replaces the one with its `"id"` in place; listed in insertion
    /// order.
    pub fn put_subscription(&self, subscription: Value) {
        let subscriptions = &mut self.state().subscriptions;
        let id = subscription["id"].as_str().expect("a subscription has an \"id\"");
        match subscriptions.iter_mut().find(|s| s["id"] == id) {
            Some(existing) => *existing = subscription,
            None => subscriptions.push(subscription),
        }
    }

    /// The subscription `id` as the fake holds it now.
    pub fn subscription(&self, id: &str) -> Option<Value> {
        self.state().subscriptions.iter().find(|s| s["id"] == id).cloned()
    }

    /// Every Checkout Session created, as Stripe holds it now (`status` open, complete or
    /// expired), in creation order.
    pub fn checkout_sessions(&self) -> Vec<Value> {
        self.state().checkout_sessions.clone()
    }

    /// The sessions of [`FakeStripe::checkout_sessions`] still `open`.
    pub fn open_checkout_sessions(&self) -> Vec<Value> {
        let sessions = self.checkout_sessions().into_iter();
        sessions.filter(|s| s["status"] == "open").collect()
    }

    /// The customer pays session `id`: as Stripe, it becomes `complete` with a subscription
    /// and no `url`.
    pub fn complete_checkout_session(&self, id: &str, subscription: &str) {
        let mut state = self.state();
        let session = state
            .checkout_sessions
            .iter_mut()
            .find(|s| s["id"] == id)
            .expect("a checkout session the fake created");
        session["status"] = "complete".into();
        session["payment_status"] = "paid".into();
        session["subscription"] = subscription.into();
        session["url"] = Value::Null;
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Poisoned only if a test already panicked while holding it.
        self.state.lock().expect("fake Stripe state")
    }
}

impl Drop for FakeStripe {
    /// Closes the port; a request still hanging ends with the test's runtime.
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Default)]
struct State {
    mode: Mode,
    requests: Vec<Recorded>,
    prices: HashMap<String, Value>,
    subscriptions: Vec<Value>,
    checkout_sessions: Vec<Value>,
    /// By `Idempotency-Key` (of POSTs): the first request's path and body, the answer to replay.
    replays: HashMap<String, (Vec<u8>, Answer)>,
    /// Numbers the objects created (`cus_fake1`, `cs_test_2`…).
    objects: u64,
}

/// A status and a JSON body, before the headers every response gets.
type Answer = (StatusCode, Value);

/// An answer on its way out, numbered after its request (`Request-Id: req_N` answers the N-th
/// request received), a replay marked as one.
struct Reply {
    answer: Answer,
    request_id: usize,
    replayed: bool,
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (self.answer.0, Json(self.answer.1)).into_response();
        let headers = response.headers_mut();
        let request_id = HeaderValue::from_str(&format!("req_{}", self.request_id));
        headers.insert("request-id", request_id.expect("an ASCII header"));
        if self.replayed {
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        response
    }
}

/// Every request lands here: recorded, then failed, hung or answered as Stripe would.
async fn handle(
    extract::State(state): extract::State<Arc<Mutex<State>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let is_form =
        body.is_empty() || content_type.is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let request = Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: pairs(uri.query().unwrap_or_default().as_bytes()),
        form: if is_form { pairs(&body) } else { Vec::new() },
        idempotency_key: header("idempotency-key"),
        stripe_version: header("stripe-version"),
        authorization: header(header::AUTHORIZATION.as_str()),
    };
    let reply = state
        .lock()
        .expect("fake Stripe state")
        .answer(request, &body, is_form);
    match reply {
        Some(reply) => reply.into_response(),
        // Each connection is served by a task of its own: only this request waits.
        None => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
    }
}

impl State {
    /// Records `request` and answers it; `None` to hang.
    fn answer(&mut self, request: Recorded, body: &[u8], is_form: bool) -> Option<Reply> {
        self.requests.push(request.clone());
        let request_id = self.requests.len();
        let (answer, replayed) = match self.failure() {
            Some(Mode::Hang) => return None,
            Some(Mode::Fail(status)) => (api_error(status), false),
            Some(_) => (api_error(500), false),
            None => match (refusal(&request, is_form), &request.idempotency_key) {
                (Some(refused), _) => (refused, false),
                (None, Some(key)) if request.method == "POST" => self.idempotent(key, &request, body),
                (None, _) => (self.route(&request), false),
            },
        };
        Some(Reply {
            answer,
            request_id,
            replayed,
        })
    }

    /// The failure mode this request meets, counting down [`Mode::FailNext`] (at 0, normal).
    fn failure(&mut self) -> Option<Mode> {
        match self.mode {
            Mode::Normal | Mode::FailNext(0) => None,
            Mode::FailNext(n) => {
                self.mode = Mode::FailNext(n - 1);
                Some(Mode::FailNext(n))
            }
            ref failing => Some(failing.clone()),
        }
    }

    /// The answer to a POST with a key, and whether it is a replay. Like Stripe: a key seen with
    /// the same path and body replays the first answer, a key reused for another request is an
    /// error, and only successes are kept (Stripe keeps no result for requests refused early).
    fn idempotent(&mut self, key: &str, request: &Recorded, body: &[u8]) -> (Answer, bool) {
        let fingerprint = [request.path.as_bytes(), b"\n", body].concat();
        if let Some((seen, answer)) = self.replays.get(key) {
            if *seen == fingerprint {
                return (answer.clone(), true);
            }
            let message = "Keys for idempotent requests can only be used with the same parameters they \
                           were first used with.";
            return (
                error(StatusCode::BAD_REQUEST, "idempotency_error", message),
                false,
            );
        }
        let answer = self.route(request);
        if answer.0.is_success() {
            self.replays.insert(key.to_owned(), (fingerprint, answer.clone()));
        }
        (answer, false)
    }

    fn route(&mut self, request: &Recorded) -> Answer {
        let segments: Vec<&str> = request.path.split('/').skip(1).collect();
        match (request.method.as_str(), segments.as_slice()) {
            ("POST", ["v1", "customers"]) => self.create_customer(request),
            ("POST", ["v1", "checkout", "sessions"]) => self.create_checkout_session(request),
            ("GET", ["v1", "checkout", "sessions", id]) => found(
                self.checkout_sessions.iter().find(|s| s["id"] == *id),
                "checkout.session",
                id,
            ),
            ("POST", ["v1", "checkout", "sessions", id, "expire"]) => self.expire_checkout_session(id),
            ("POST", ["v1", "billing_portal", "sessions"]) => self.create_portal_session(request),
            ("GET", ["v1", "prices", id]) => found(self.prices.get(*id), "price", id),
            ("GET", ["v1", "subscriptions"]) => self.list_subscriptions(request),
            ("GET", ["v1", "subscriptions", id]) => found(
                self.subscriptions.iter().find(|s| s["id"] == *id),
                "subscription",
                id,
            ),
            ("POST", ["v1", "subscriptions", id]) => self.update_subscription(id, request),
            ("DELETE", ["v1", "subscriptions", id]) => self.cancel_subscription(id),
            (method, _) => {
                let message = format!("Unrecognized request URL ({method}: {}).", request.path);
                error(StatusCode::NOT_FOUND, "invalid_request_error", &message)
            }
        }
    }

    fn next_object(&mut self) -> u64 {
        self.objects += 1;
        self.objects
    }

    fn create_customer(&mut self, request: &Recorded) -> Answer {
        let customer = json!({
            "id": format!("cus_fake{}", self.next_object()), "object": "customer",
            "email": text(request, "email"), "name": text(request, "name"),
            "metadata": hash(request, "metadata"), "created": now(), "livemode": false,
        });
        (StatusCode::OK, customer)
    }

    fn create_checkout_session(&mut self, request: &Recorded) -> Answer {
        let required = ["mode", "success_url", "line_items[0][price]"];
        if let Some(param) = required.into_iter().find(|p| request.param(p).is_none()) {
            return missing(param);
        }
        let id = format!("cs_test_{}", self.next_object());
        let created = now();
        let session = json!({
            "id": id, "object": "checkout.session",
            "url": format!("https://checkout.stripe.com/c/pay/{id}"),
            "mode": text(request, "mode"), "customer": text(request, "customer"),
            "client_reference_id": text(request, "client_reference_id"),
            "success_url": text(request, "success_url"), "cancel_url": text(request, "cancel_url"),
            "metadata": hash(request, "metadata"), "status": "open", "livemode": false,
            "created": created, "expires_at": created + 24 * 3600,
            "automatic_tax": {"enabled": false, "liability": null, "provider": null, "status": null},
            "custom_fields": [],
            "custom_text": {"after_submit": null, "shipping_address": null, "submit": null,
                            "terms_of_service_acceptance": null},
            "payment_method_types": ["card"], "payment_status": "unpaid", "shipping_options": [],
            "subscription": null, "currency": null, "amount_total": null,
        });
        self.checkout_sessions.push(session.clone());
        (StatusCode::OK, session)
    }

    /// Like Stripe: only an `open` session can be expired; it then has no `url`.
    fn expire_checkout_session(&mut self, id: &str) -> Answer {
        let Some(session) = self.checkout_sessions.iter_mut().find(|s| s["id"] == id) else {
            return no_such(StatusCode::NOT_FOUND, "checkout.session", id, "session");
        };
        if session["status"] != "open" {
            let message = format!(
                "Only Checkout Sessions with a status in [\"open\"] can be expired. This Checkout Session has status {}.",
                session["status"]
            );
            return error(StatusCode::BAD_REQUEST, "invalid_request_error", &message);
        }
        session["status"] = "expired".into();
        session["url"] = Value::Null;
        (StatusCode::OK, session.clone())
    }

    fn create_portal_session(&mut self, request: &Recorded) -> Answer {
        if request.param("customer").is_none() {
            return missing("customer");
        }
        let id = format!("bps_{}", self.next_object());
        let session = json!({
            "id": id, "object": "billing_portal.session",
            "url": format!("https://billing.stripe.com/p/session/{id}"),
            "customer": text(request, "customer"), "return_url": text(request, "return_url"),
            "livemode": false, "configuration": "bpc_fake_default", "created": now(),
            "flow": null, "locale": null, "on_behalf_of": null,
        });
        (StatusCode::OK, session)
    }

    /// The items' quantities (`items[i][id]`, `items[i][quantity]`); like Stripe, an item the
    /// subscription does not have is refused, and nothing changes.
    fn update_subscription(&mut self, id: &str, request: &Recorded) -> Answer {
        let Some(subscription) = self.subscriptions.iter_mut().find(|s| s["id"] == id) else {
            return no_such(StatusCode::NOT_FOUND, "subscription", id, "id");
        };
        let mut updated = subscription.clone();
        for i in 0.. {
            let Some(item_id) = request.param(&format!("items[{i}][id]")) else {
                break;
            };
            let items = updated["items"]["data"].as_array_mut();
            let Some(item) = items.and_then(|items| items.iter_mut().find(|item| item["id"] == item_id))
            else {
                let message = format!("Invalid subscription item: {item_id} is not an item of {id}.");
                return param_error(
                    StatusCode::BAD_REQUEST,
                    None,
                    &format!("items[{i}][id]"),
                    &message,
                );
            };
            if let Some(quantity) = request.param(&format!("items[{i}][quantity]")) {
                let Ok(quantity) = quantity.parse::<u64>() else {
                    return param_error(StatusCode::BAD_REQUEST, None, "quantity", "Invalid integer");
                };
                item["quantity"] = quantity.into();
            }
        }
        *subscription = updated.clone();
        (StatusCode::OK, updated)
    }

    /// Like Stripe: a subscription canceled at once; canceling it again is refused.
    fn cancel_subscription(&mut self, id: &str) -> Answer {
        let Some(subscription) = self.subscriptions.iter_mut().find(|s| s["id"] == id) else {
            return no_such(StatusCode::NOT_FOUND, "subscription", id, "id");
        };
        if subscription["status"] == "canceled" {
            let message = format!(
                "A canceled subscription can only update its cancellation_details and metadata. ({id})"
            );
            return error(StatusCode::BAD_REQUEST, "invalid_request_error", &message);
        }
        subscription["status"] = "canceled".into();
        subscription["canceled_at"] = now().into();
        (StatusCode::OK, subscription.clone())
    }

    /// Stripe's cursor paging, in insertion order: `status` (`all`, one status, or by default
    /// all but `canceled`), `customer`, `limit` (1 to 100, default 10), `starting_after`.
    fn list_subscriptions(&self, request: &Recorded) -> Answer {
        let limit = match request.param("limit") {
            None => 10,
            Some(raw) => match raw.parse::<usize>() {
                Ok(limit @ 1..=100) => limit,
                _ => {
                    let message = format!("Invalid limit: '{raw}'; it must be an integer from 1 to 100.");
                    return param_error(StatusCode::BAD_REQUEST, None, "limit", &message);
                }
            },
        };
        let start = match request.param("starting_after") {
            None => 0,
            Some(cursor) => match self.subscriptions.iter().position(|s| s["id"] == cursor) {
                Some(index) => index + 1,
                None => return no_such(StatusCode::BAD_REQUEST, "subscription", cursor, "starting_after"),
            },
        };
        let (status, customer) = (request.param("status"), request.param("customer"));
        let listed: Vec<&Value> = self.subscriptions[start..]
            .iter()
            .filter(|s| match status {
                Some("all") => true,
                Some(status) => s["status"] == status,
                None => s["status"] != "canceled",
            })
            .filter(|s| customer.is_none_or(|customer| s["customer"] == customer))
            .collect();
        let page = json!({
            "object": "list", "url": "/v1/subscriptions", "has_more": listed.len() > limit,
            "data": listed.into_iter().take(limit).collect::<Vec<_>>(),
        });
        (StatusCode::OK, page)
    }
}

/// What Stripe refuses before looking at the request: a missing or malformed API key, a POST
/// body that is not a form.
fn refusal(request: &Recorded, is_form: bool) -> Option<Answer> {
    let authorized = (request.authorization.as_deref())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|key| key.starts_with("sk_") || key.starts_with("rk_"));
    let (status, message) = if !authorized {
        (StatusCode::UNAUTHORIZED, "Invalid API Key provided")
    } else if request.method == "POST" && !is_form {
        let message = "Invalid request: the body must be application/x-www-form-urlencoded.";
        (StatusCode::BAD_REQUEST, message)
    } else {
        return None;
    };
    Some(error(status, "invalid_request_error", message))
}

fn pairs(encoded: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(encoded).into_owned().collect()
}

/// The param as a JSON string, or null when absent.
fn text(request: &Recorded, key: &str) -> Value {
    request.param(key).map_or(Value::Null, Value::from)
}

/// The object Stripe builds from `name[key]=value` params (`metadata[team_id]=42`).
fn hash(request: &Recorded, name: &str) -> Value {
    let prefix = format!("{name}[");
    let entries = request.form.iter().filter_map(|(key, value)| {
        let key = key.strip_prefix(&prefix)?.strip_suffix(']')?;
        (!key.contains('[')).then(|| (key.to_owned(), Value::from(value.as_str())))
    });
    Value::Object(entries.collect::<Map<_, _>>())
}

fn now() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH);
    since_epoch.expect("the clock is after 1970").as_secs()
}

fn found(object: Option<&Value>, kind: &str, id: &str) -> Answer {
    match object {
        Some(object) => (StatusCode::OK, object.clone()),
        None => no_such(StatusCode::NOT_FOUND, kind, id, "id"),
    }
}

/// Stripe's error shape, `{"error": {"type": …, "message": …}}`.
fn error(status: StatusCode, kind: &str, message: &str) -> Answer {
    (status, json!({"error": {"type": kind, "message": message}}))
}

/// An `invalid_request_error` about one param; like Stripe, with a `code` only when one applies.
fn param_error(status: StatusCode, code: Option<&str>, param: &str, message: &str) -> Answer {
    let (status, mut body) = error(status, "invalid_request_error", message);
    body["error"]["param"] = param.into();
    if let Some(code) = code {
        body["error"]["code"] = code.into();
    }
    (status, body)
}

fn missing(param: &str) -> Answer {
    let message = format!("Missing required param: {param}.");
    param_error(
        StatusCode::BAD_REQUEST,
        Some("parameter_missing"),
        param,
        &message,
    )
}

fn no_such(status: StatusCode, kind: &str, id: &str, param: &str) -> Answer {
    let message = format!("No such {kind}: '{id}'");
    param_error(status, Some("resource_missing"), param, &message)
}

fn api_error(status: u16) -> Answer {
    let status = StatusCode::from_u16(status).expect("Mode::Fail holds an HTTP status");
    error(
        status,
        "api_error",
        "An unknown error occurred (fake Stripe failure mode).",
    )
}

#[tokio::test]
async fn fake_stripe_speaks_like_stripe() {
    const SECRET: &str = "sk_test_fake";
    let fake = FakeStripe::start().await;
    let client = crate::helpers::client();
    let url = |path: &str| format!("{}{path}", fake.url());
    let get = |path: &str| client.get(url(path)).bearer_auth(SECRET);
    let post = |path: &str| client.post(url(path)).bearer_auth(SECRET);
    let create = |form: &[(&str, &str)]| {
        let request = post("/v1/customers").header("Idempotency-Key", "team-42");
        request.header("Stripe-Version", "2026-01-28").form(form)
    };

    // The same key and body: one customer, the same answer replayed.
    let ada = [("email", "ada@example.com"), ("metadata[team_id]", "42")];
    let (status, headers, first) = send(create(&ada)).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["metadata"], json!({"team_id": "42"}));
    assert_eq!(headers[header::CONTENT_TYPE.as_str()], "application/json");
    assert!(
        headers["request-id"]
            .to_str()
            .is_ok_and(|id| id.starts_with("req_"))
    );
    let (status, headers, again) = send(create(&ada)).await;
    assert_eq!((status, &again), (200, &first));
    assert_eq!(headers["idempotent-replayed"], "true");
    let (status, _, conflict) = send(create(&[("email", "eve@example.com")])).await;
    assert_eq!(status, 400);
    assert_eq!(conflict["error"]["type"], "idempotency_error");
    let (_, _, bob) = send(post("/v1/customers").form(&[("name", "Bob")])).await;
    assert_eq!(
        [&first["id"], &bob["id"]],
        ["cus_fake1", "cus_fake2"],
        "one object per key"
    );
    let recorded = &fake.requests()[0];
    assert_eq!(recorded.param("metadata[team_id]"), Some("42"));
    assert_eq!(recorded.idempotency_key.as_deref(), Some("team-42"));
    assert_eq!(recorded.stripe_version.as_deref(), Some("2026-01-28"));
    assert_eq!(recorded.authorization.as_deref(), Some("Bearer sk_test_fake"));

    // A Checkout Session: retrieved as created; expired once, then refused.
    let form = [
        ("mode", "subscription"),
        ("success_url", "https://example.com/ok"),
        ("line_items[0][price]", "price_pro"),
    ];
    let (status, _, session) = send(post("/v1/checkout/sessions").form(&form)).await;
    assert_eq!((status, &session["status"]), (200, &json!("open")), "{session}");
    let id = session["id"].as_str().unwrap();
    let (status, _, retrieved) = send(get(&format!("/v1/checkout/sessions/{id}"))).await;
    assert_eq!((status, &retrieved), (200, &session));
    let expire = format!("/v1/checkout/sessions/{id}/expire");
    let (status, _, expired) = send(post(&expire)).await;
    assert_eq!(
        (status, &expired["status"], &expired["url"]),
        (200, &json!("expired"), &Value::Null)
    );
    let (status, _, refused) = send(post(&expire)).await;
    assert_eq!(
        (status, &refused["error"]["type"]),
        (400, &json!("invalid_request_error"))
    );
    assert_eq!(fake.open_checkout_sessions(), Vec::<Value>::new());

    // Cursor paging; a canceled subscription is listed only with `status=all`.
    fake.put_subscription(json!({"id": "sub_a", "object": "subscription", "status": "active"}));
    fake.put_subscription(json!({"id": "sub_b", "object": "subscription", "status": "active"}));
    fake.put_subscription(json!({"id": "sub_b", "object": "subscription", "status": "canceled"}));
    let (_, _, page) = send(get("/v1/subscriptions?status=all&limit=1")).await;
    assert_eq!(
        (&page["data"][0]["id"], &page["has_more"]),
        (&json!("sub_a"), &json!(true))
    );
    let (_, _, page) = send(get("/v1/subscriptions?status=all&limit=1&starting_after=sub_a")).await;
    assert_eq!(
        (&page["data"][0]["status"], &page["has_more"]),
        (&json!("canceled"), &json!(false))
    );
    assert_eq!(fake.requests().last().map(|r| r.query.len()), Some(3));
    let (_, _, page) = send(get("/v1/subscriptions")).await;
    assert_eq!(page["data"].as_array().map(Vec::len), Some(1), "{page}");

    let (status, _, missing) = send(get("/v1/prices/price_gone")).await;
    assert_eq!(
        (status, &missing["error"]["code"]),
        (404, &json!("resource_missing"))
    );
    assert_eq!(send(client.get(url("/v1/prices/price_gone"))).await.0, 401);

    // Failure modes: answered 500 once, then normally; a status of choice; no answer at all.
    fake.add_price("price_pro", 1900, "eur", "month");
    fake.set_mode(Mode::FailNext(1));
    let (status, _, failed) = send(get("/v1/prices/price_pro")).await;
    assert_eq!((status, &failed["error"]["type"]), (500, &json!("api_error")));
    let (status, _, price) = send(get("/v1/prices/price_pro")).await;
    assert_eq!((status, &price["unit_amount"]), (200, &json!(1900)));
    fake.set_mode(Mode::Fail(503));
    assert_eq!(send(get("/v1/prices/price_pro")).await.0, 503);
    fake.set_mode(Mode::Hang);
    let hung = get("/v1/prices/price_pro")
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(hung.is_err_and(|e| e.is_timeout()), "a hung request times out");
    fake.set_mode(Mode::Normal);
    assert_eq!(
        send(get("/v1/prices/price_pro")).await.0,
        200,
        "answers while one hangs"
    );
    assert_eq!(
        fake.count("GET", "/v1/prices/price_pro"),
        5,
        "failures are recorded too"
    );
}

/// Sends `request`: the status, the headers and the JSON body.
async fn send(request: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = request.send().await.expect("the fake Stripe answers");
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, response.json().await.expect("a JSON body"))
}
