//! Scale-out (SPEC "Scale-out"), for real: three `keel serve --no-worker` and two `keel worker`
//! processes, started at once on a fresh database, reaching PostgreSQL through PgBouncer in
//! transaction mode (migrations and `LISTEN` over `DATABASE_DIRECT_URL`), with nginx balancing
//! the web processes as in production (`proxy_next_upstream`).
//!
//! Needs PgBouncer 1.21 or later (`bash scripts/install-pgbouncer.sh`) and nginx; `bash .ci/run`
//! installs both.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection as _, migrate::MigrateDatabase as _};
use tokio_util::sync::CancellationToken;

use crate::{
    auth::emailed_link,
    billing::{FAILED, event, with},
    cli::wait_until_live,
    helpers::{
        ChildGuard, DatabaseGuard, client, database_server_url, free_port, keel_command, redis_url,
        stripe_signature, unique_database_name, wait_until,
    },
    smtp_server::{Behaviour, FakeSmtp},
};

const WEBHOOK_SECRET: &str = "whsec_scale_tests";
const PASSWORD: &str = "scale password 123";
const AUTH_BUDGET: usize = 6;

/// A path in `dir` as a string for a config file.
fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().expect("a UTF-8 temp path").to_owned()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// PgBouncer in transaction mode in front of the test server, on a port of its own.
struct PgBouncer {
    port: u16,
    _process: ChildGuard,
}

impl PgBouncer {
    fn start(dir: &Path) -> Self {
        let binary = ["/usr/local/bin/pgbouncer", "/usr/sbin/pgbouncer"]
            .into_iter()
            .find(|candidate| Path::new(candidate).exists())
            .expect("PgBouncer is installed: bash scripts/install-pgbouncer.sh");
        let version = Command::new(binary)
            .arg("--version")
            .output()
            .expect("pgbouncer runs");
        let version = String::from_utf8_lossy(&version.stdout);
        let minor: u32 = version
            .strip_prefix("PgBouncer 1.")
            .and_then(|rest| rest.split('.').next()?.parse().ok())
            .unwrap_or_else(|| panic!("unexpected `pgbouncer --version`: {version}"));
        assert!(
            minor >= 21,
            "{binary} is {version}: keel needs 1.21 or later (bash scripts/install-pgbouncer.sh)"
        );

        let server = url::Url::parse(&database_server_url()).expect("KEEL_TEST_DATABASE_URL is a URL");
        let port = free_port();
        let ini = format!(
            "[databases]\n\
             * = host={host} port={server_port} user={user}{password}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {auth_file}\n\
             pool_mode = transaction\n\
             max_prepared_statements = 100\n\
             default_pool_size = 8\n\
             max_client_conn = 200\n\
             ignore_startup_parameters = extra_float_digits\n",
            host = server.host_str().unwrap_or("127.0.0.1"),
            server_port = server.port().unwrap_or(5432),
            user = server.username(),
            password = server
                .password()
                .map(|p| format!(" password={p}"))
                .unwrap_or_default(),
            auth_file = path(dir, "users.txt"),
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        std::fs::write(dir.join("users.txt"), format!("\"{}\" \"\"\n", server.username())).unwrap();
        // PgBouncer refuses to run as root; setpriv execs it (a kill reaches it, not a wrapper).
        let mut command = if is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", binary]);
            c
        } else {
            Command::new(binary)
        };
        let log = std::fs::File::create(dir.join("pgbouncer.log")).unwrap();
        let process = command
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("pgbouncer starts");
        Self {
            port,
            _process: ChildGuard(process),
        }
    }
}

/// nginx balancing `upstreams` as production's nginx.conf proxies to keel: no kept-alive
/// upstream connections; a request that fails to reach one process goes to the next, and so
/// does a webhook delivery whose process died with it in flight (stored once by its id).
struct Nginx {
    port: u16,
    _process: ChildGuard,
}

impl Nginx {
    fn start(dir: &Path, upstreams: &[u16]) -> Self {
        let port = free_port();
        let servers: String = upstreams
            .iter()
            // Never marked down: a refused connection costs a fraction of a millisecond, and a
            // process started again is used at once.
            .map(|p| format!("server 127.0.0.1:{p} max_fails=0;\n"))
            .collect();
        let conf = format!(
            "daemon off;\n\
             master_process off;\n\
             error_log {error_log} warn;\n\
             pid {pid};\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {dir}/body;\n\
               proxy_temp_path {dir}/proxy;\n\
               fastcgi_temp_path {dir}/fastcgi;\n\
               uwsgi_temp_path {dir}/uwsgi;\n\
               scgi_temp_path {dir}/scgi;\n\
               upstream keel {{\n{servers}}}\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 proxy_set_header Host $http_host;\n\
                 proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                 proxy_set_header X-Forwarded-Proto $scheme;\n\
                 proxy_connect_timeout 1s;\n\
                 location / {{ proxy_pass http://keel; }}\n\
                 location = /webhooks/stripe {{\n\
                   proxy_next_upstream error timeout non_idempotent;\n\
                   proxy_pass http://keel;\n\
                 }}\n\
               }}\n\
             }}\n",
            error_log = path(dir, "nginx-error.log"),
            pid = path(dir, "nginx.pid"),
            dir = dir.display(),
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let process = Command::new("/usr/sbin/nginx")
            .args(["-e", &path(dir, "nginx-error.log"), "-p", &path(dir, ""), "-c"])
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is installed (apt-get install nginx)");
        Self {
            port,
            _process: ChildGuard(process),
        }
    }
}

/// The processes of one deployment, sharing a database, Redis, an SMTP sink and secrets.
struct Deployment {
    dir: PathBuf,
    database: DatabaseGuard,
    env: Vec<(&'static str, String)>,
    web_ports: Vec<u16>,
    web: Vec<Option<ChildGuard>>,
    workers: Vec<ChildGuard>,
    smtp: FakeSmtp,
    /// Runs until the deployment is dropped.
    _pgbouncer: PgBouncer,
    nginx: Nginx,
}

impl Deployment {
    /// Three web processes and two workers, all started at once on a database without tables.
    async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("keel-scale-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let database = DatabaseGuard::new(unique_database_name());
        sqlx::Postgres::create_database(&database.url()).await.unwrap();
        let pgbouncer = PgBouncer::start(&dir);
        let smtp = FakeSmtp::start(Behaviour::default()).await;
        let web_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nginx = Nginx::start(&dir, &web_ports);
        let env = vec![
            ("APP_ENV", "development".to_owned()),
            ("BASE_URL", format!("http://127.0.0.1:{}", nginx.port)),
            (
                "DATABASE_URL",
                format!(
                    "postgres://postgres@127.0.0.1:{}/{}",
                    pgbouncer.port, database.name
                ),
            ),
            ("DATABASE_DIRECT_URL", database.url()),
            ("DATABASE_MAX_CONNECTIONS", "4".to_owned()),
            ("REDIS_URL", redis_url()),
            ("SECRET_KEY", "5ca1e".repeat(26)),
            ("SMTP_URL", smtp.url()),
            ("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
            ("TRUSTED_PROXIES", "127.0.0.1/32".to_owned()),
            ("RATE_LIMIT_PER_SECOND", "10000".to_owned()),
            ("RATE_LIMIT_BURST", "10000".to_owned()),
            ("AUTH_RATE_LIMIT_PER_MINUTE", AUTH_BUDGET.to_string()),
            ("LOG_FORMAT", "json".to_owned()),
        ];
        let mut deployment = Self {
            dir,
            database,
            env,
            web: Vec::new(),
            web_ports,
            workers: Vec::new(),
            smtp,
            nginx,
            _pgbouncer: pgbouncer,
        };
        for i in 0..3 {
            let web = deployment.spawn_web(i);
            deployment.web.push(Some(web));
        }
        for i in 0..2 {
            let worker = deployment.spawn(&["worker"], &format!("worker{i}"), None);
            deployment.workers.push(worker);
        }
        for i in 0..3 {
            wait_until_live(&deployment.web_url(i)).await;
        }
        deployment
    }

    fn spawn(&self, args: &[&str], name: &str, port: Option<u16>) -> ChildGuard {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .unwrap();
        let bind = port.map(|port| ("BIND_ADDR", format!("127.0.0.1:{port}")));
        let child = keel_command(args, self.env.iter().cloned().chain(bind))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("keel runs");
        ChildGuard(child)
    }

    fn spawn_web(&self, i: usize) -> ChildGuard {
        self.spawn(
            &["serve", "--no-worker"],
            &format!("web{i}"),
            Some(self.web_ports[i]),
        )
    }

    fn web_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.web_ports[i])
    }

    fn nginx_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.nginx.port)
    }

    /// The log of process `name`, for a failure's message.
    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// SIGTERM to web process `i`, and its exit (it drains first).
    fn stop_web(&mut self, i: usize) {
        let mut web = self.web[i].take().expect("running");
        let pid = web.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = web.0.wait().unwrap();
        assert!(
            status.success(),
            "web{i} exited {status}: {}",
            self.log(&format!("web{i}"))
        );
    }

    async fn deliver(&self, base: &str, event: &Value) -> StatusCode {
        let body = serde_json::to_vec(event).unwrap();
        client()
            .post(format!("{base}/webhooks/stripe"))
            .header("stripe-signature", stripe_signature(WEBHOOK_SECRET, &body))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("scale test files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A browser of its own, at any of the processes: keeps its cookies; claims a client address
/// of its own (`X-Forwarded-For`, trusted from 127.0.0.1) so that its auth budget is its own.
struct Browser {
    client: reqwest::Client,
    cookies: Vec<(String, String)>,
    address: String,
}

struct Page {
    status: StatusCode,
    location: String,
    body: String,
}

impl Browser {
    fn new() -> Self {
        let octets = uuid::Uuid::new_v4().into_bytes();
        Self {
            client: client(),
            cookies: Vec::new(),
            address: format!("198.18.{}.{}", octets[0], octets[1]),
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let cookie: Vec<String> = self.cookies.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let response = request
            .header("cookie", cookie.join("; "))
            .header("x-forwarded-for", &self.address)
            .send()
            .await
            .expect("request sent");
        for set in response.headers().get_all("set-cookie") {
            let pair = set.to_str().unwrap().split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != name);
            self.cookies.push((name.to_owned(), value.to_owned()));
        }
        let location = response
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Page {
            status: response.status(),
            location,
            body: response.text().await.unwrap(),
        }
    }

    async fn get(&mut self, base: &str, path: &str) -> Page {
        let request = self.client.get(format!("{base}{path}"));
        self.send(request).await
    }

    /// The form's token from `form_base`, posted to `post_base`.
    async fn submit(
        &mut self,
        form_base: &str,
        post_base: &str,
        path: &str,
        fields: &[(&str, &str)],
    ) -> Page {
        let form = self.get(form_base, path).await;
        let token = crate::visitor::field_value(&form.body, "csrf_token").expect("a form");
        let mut fields = fields.to_vec();
        fields.push(("csrf_token", &token));
        let request = self.client.post(format!("{post_base}{path}")).form(&fields);
        self.send(request).await
    }

    fn session(&self) -> String {
        let (_, value) = self
            .cookies
            .iter()
            .find(|(n, _)| n == "keel_session")
            .expect("signed in");
        format!("keel_session={value}")
    }
}

/// Requests through nginx until `stop`: signed-in pages and webhook deliveries (each a new
/// event, stored before its 200). Returns the first (up to 10) requests that did not get
/// their 200.
async fn load(nginx: String, session: String, stop: CancellationToken) -> Vec<String> {
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..6 {
        let (nginx, session, stop, failures) = (
            nginx.clone(),
            session.clone(),
            stop.clone(),
            Arc::clone(&failures),
        );
        tasks.spawn(async move {
            let client = client();
            let mut n = 0;
            while !stop.is_cancelled() {
                n += 1;
                let outcome = if lane % 2 == 0 {
                    client
                        .get(format!("{nginx}/dashboard"))
                        .header("cookie", &session)
                        .send()
                        .await
                } else {
                    let event = with(
                        event("", "customer.updated"),
                        "/id",
                        json!(format!("evt_load_{lane}_{n}_{}", uuid::Uuid::new_v4().simple())),
                    );
                    let body = serde_json::to_vec(&event).unwrap();
                    client
                        .post(format!("{nginx}/webhooks/stripe"))
                        .header("stripe-signature", stripe_signature(WEBHOOK_SECRET, &body))
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                };
                match outcome {
                    Ok(response) if response.status() == StatusCode::OK => {}
                    Ok(response) => failures
                        .lock()
                        .unwrap()
                        .push(format!("lane {lane}: {}", response.status())),
                    Err(error) => failures.lock().unwrap().push(format!("lane {lane}: {error}")),
                }
            }
            n
        });
    }
    let mut sent = 0;
    while let Some(count) = tasks.join_next().await {
        sent += count.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(sent > 100, "the load ran: {sent} requests");
    failures.into_iter().take(10).collect()
}

#[tokio::test]
async fn three_web_processes_and_two_workers_behind_nginx_and_pgbouncer_act_as_one() {
    let mut deployment = Deployment::start().await;
    let (web0, web1, web2) = (
        deployment.web_url(0),
        deployment.web_url(1),
        deployment.web_url(2),
    );

    // All five came up against one fresh database; the migrations ran once.
    let mut db = deployment.database.connect().await;
    let applied: Vec<(i64, bool)> = sqlx::query_as("SELECT version, success FROM _sqlx_migrations")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert_eq!(applied.len(), keel::db::MIGRATOR.iter().count());
    assert!(applied.iter().all(|(_, success)| *success));
    for (i, worker) in deployment.workers.iter_mut().enumerate() {
        assert!(
            worker.0.try_wait().unwrap().is_none(),
            "worker{i}: {}",
            deployment.log(&format!("worker{i}"))
        );
    }
    for base in [&web0, &web1, &web2] {
        let health = client().get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK, "{base}/health through PgBouncer");
    }

    // A CSRF token made by one process is accepted by another; the session works on a third,
    // and the emailed link (sent by a worker) on the first.
    let mut owner = Browser::new();
    let signup = owner
        .submit(
            &web0,
            &web1,
            "/signup",
            &[("email", "owner@example.com"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(signup.status, StatusCode::SEE_OTHER, "{}", signup.body);
    let dashboard = owner.get(&web2, "/dashboard").await;
    assert_eq!(dashboard.status, StatusCode::OK, "{}", dashboard.location);
    let link = emailed_link(
        &deployment.smtp,
        "owner@example.com",
        "Confirm your email",
        "/verify-email?token=",
    )
    .await;
    let opened = owner.get(&web0, &link).await;
    assert_eq!(opened.status, StatusCode::SEE_OTHER);
    let verified = owner.get(&web2, &opened.location).await;
    assert_eq!(verified.status, StatusCode::OK, "{}", verified.body);
    let verified_at: Option<time::OffsetDateTime> =
        sqlx::query_scalar("SELECT email_verified_at FROM users WHERE email = 'owner@example.com'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert!(
        verified_at.is_some(),
        "the link made by a worker verified the address"
    );

    // The auth forms' budget is one for all three processes: AUTH_BUDGET posts from one
    // client address, whichever process takes them, then 429.
    let mut guesser = Browser::new();
    let mut statuses = Vec::new();
    for i in 0..2 * AUTH_BUDGET {
        let base = deployment.web_url(i % 3);
        // Another address each time, so that the per-account backoff is not what refuses.
        let email = format!("nobody{i}@example.com");
        let page = guesser
            .submit(
                &base,
                &base,
                "/login",
                &[("email", &email), ("password", "a wrong one")],
            )
            .await;
        statuses.push(page.status.as_u16());
    }
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(refused, AUTH_BUDGET, "one budget across processes: {statuses:?}");
    assert!(statuses[..AUTH_BUDGET].iter().all(|s| *s == 422), "{statuses:?}");

    // Stripe sends each event twice, to different processes: processed once, one email.
    let team: uuid::Uuid = sqlx::query_scalar("SELECT team_id FROM memberships")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let checkout = event("", "checkout.session.completed");
    let checkout = with(
        checkout,
        "/data/object/client_reference_id",
        json!(team.to_string()),
    );
    let checkout = with(
        checkout,
        "/data/object/metadata",
        json!({ "team_id": team.to_string() }),
    );
    for stripe_event in [
        checkout,
        event("", "customer.subscription.created"),
        event("", "invoice.paid"),
        event("", "customer.subscription.updated"),
        event("", "invoice.payment_failed"),
    ] {
        let (first, second) = tokio::join!(
            deployment.deliver(&web0, &stripe_event),
            deployment.deliver(&web1, &stripe_event)
        );
        assert_eq!(
            (first, second),
            (StatusCode::OK, StatusCode::OK),
            "{}",
            stripe_event["type"]
        );
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(stored, 5, "each event stored once");
    let database_url = deployment.database.url();
    wait_until("the events processed", Duration::from_secs(60), || {
        let url = database_url.clone();
        async move {
            let mut db = sqlx::PgConnection::connect(&url)
                .await
                .map_err(|e| e.to_string())?;
            let (waiting, status): (i64, Option<String>) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM stripe_events WHERE processed_at IS NULL),
                        (SELECT status FROM subscriptions)",
            )
            .fetch_one(&mut db)
            .await
            .map_err(|e| e.to_string())?;
            match (waiting, status.as_deref()) {
                (0, Some("past_due")) => Ok(()),
                state => Err(format!("{state:?}")),
            }
        }
    })
    .await;
    let failed_emails = || {
        deployment
            .smtp
            .accepted()
            .iter()
            .filter(|m| m.recipients.iter().any(|r| r == "owner@example.com") && m.data.contains(FAILED))
            .count()
    };
    wait_until("the dunning email", Duration::from_secs(30), || async {
        match failed_emails() {
            0 => Err("none yet".to_owned()),
            n => Ok(n),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        failed_emails(),
        1,
        "exactly one email for an event delivered twice"
    );

    // One web process killed with kill -9 under load: nginx sends its requests to the others.
    let session = owner.session();
    let stop = CancellationToken::new();
    let running = tokio::spawn(load(deployment.nginx_url(), session.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    deployment.web[1].take().expect("running").kill_9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let failures = running.await.unwrap();
    assert!(
        failures.is_empty(),
        "failed requests after a kill -9: {failures:?}"
    );

    // A rolling restart under load: each process in turn stopped (it drains) and started again.
    let new_web1 = deployment.spawn_web(1);
    deployment.web[1] = Some(new_web1);
    wait_until_live(&web1).await;
    let stop = CancellationToken::new();
    let running = tokio::spawn(load(deployment.nginx_url(), session, stop.clone()));
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        deployment.stop_web(i);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let restarted = deployment.spawn_web(i);
        deployment.web[i] = Some(restarted);
        wait_until_live(&deployment.web_url(i)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let failures = running.await.unwrap();
    assert!(
        failures.is_empty(),
        "failed requests in a rolling restart: {failures:?}"
    );
}
