//! Account security (SPEC, "Account security and lifecycle"): the user's sessions, ending
//! them, and the security log.

use reqwest::{StatusCode, header};

use crate::{
    auth::{emailed_link, emails_to},
    helpers::{TestApp, spawn_app, spawn_app_with_smtp},
    visitor::{Page, Visitor},
};

const PASSWORD: &str = "correct horse battery";
const FIREFOX_LINUX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";
const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1";

/// A browser with this User-Agent, logged in as `email`.
async fn logged_in<'a>(app: &'a TestApp, email: &str, user_agent: &str) -> Visitor<'a> {
    let mut browser = Visitor::new(app);
    let token = browser.get("/login").await.csrf_token();
    let request = app
        .client
        .post(app.url("/login"))
        .header(header::USER_AGENT, user_agent)
        .form(&[("email", email), ("password", PASSWORD), ("csrf_token", &token)]);
    let page = browser.send(request).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    browser
}

/// The revoke action of the session row on `page` that is (or is not) the current one.
fn revoke_path(page: &Page, current: bool) -> String {
    let row = page
        .body
        .split("<tr class=\"session-row\">")
        .skip(1)
        .find(|row| row.contains("This browser") == current)
        .unwrap_or_else(|| panic!("no session row (current: {current}):\n{}", page.body));
    let start = row.find("action=\"").unwrap() + "action=\"".len();
    row[start..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_user_sees_their_sessions_and_signs_the_others_out() {
    let app = spawn_app().await;
    Visitor::signed_up(&app, "nadia@example.com", PASSWORD).await;
    let mut laptop = logged_in(&app, "nadia@example.com", FIREFOX_LINUX).await;
    let mut phone = logged_in(&app, "nadia@example.com", SAFARI_IPHONE).await;

    let page = laptop.get("/settings/sessions").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.body.matches("<tr class=\"session-row\">").count(),
        3,
        "{}",
        page.body
    );
    assert!(
        page.body.contains(
            "Firefox on Linux <span class=\"badge badge-success\" aria-current=\"true\">This browser"
        ),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("Safari on iPhone") && page.body.contains("127.0.0.1"),
        "{}",
        page.body
    );
    assert_eq!(page.body.matches("Signed in</td>").count(), 2, "{}", page.body);
    assert!(page.body.contains("Account created"), "{}", page.body);

    // Another user cannot end Nadia's sessions, whatever id they send.
    let phone_session = revoke_path(&phone.get("/settings/sessions").await, true);
    let mut stranger = Visitor::signed_up(&app, "oscar@example.com", PASSWORD).await;
    for path in [phone_session.as_str(), "/settings/sessions/not-an-id/revoke"] {
        let page = stranger.submit("/settings/sessions", path, &[]).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(phone.get("/dashboard").await.status, StatusCode::OK);
    // Nor can a page without the form's token.
    assert_eq!(
        laptop.post(&phone_session, &[]).await.status,
        StatusCode::FORBIDDEN
    );

    // Nadia signs her phone out from the laptop.
    let signed_out = laptop.submit("/settings/sessions", &phone_session, &[]).await;
    assert_eq!(signed_out.location(), "/settings/sessions?notice=revoked");
    let dashboard = phone.get("/dashboard").await;
    assert_eq!(dashboard.status, StatusCode::SEE_OTHER);
    assert!(
        dashboard.location().starts_with("/login"),
        "{}",
        dashboard.location()
    );
    // Ending it again: it is gone.
    let again = laptop.submit("/settings/sessions", &phone_session, &[]).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);

    // Every other session: the signup's browser goes, the laptop stays.
    let others = laptop
        .submit("/settings/sessions", "/settings/sessions/revoke-others", &[])
        .await;
    assert_eq!(others.location(), "/settings/sessions?notice=revoked-others");
    let page = laptop.get("/settings/sessions").await;
    assert_eq!(
        page.body.matches("<tr class=\"session-row\">").count(),
        1,
        "{}",
        page.body
    );
    for logged in ["A session was signed out", "Every other session was signed out"] {
        assert!(page.body.contains(logged), "{logged}: {}", page.body);
    }

    // The current session: signed out here.
    let mine = revoke_path(&page, true);
    let out = laptop.submit("/settings/sessions", &mine, &[]).await;
    assert_eq!(out.location(), "/login");
    assert!(laptop.session().is_none(), "the cookie is removed");
    assert_eq!(
        laptop.get("/settings/sessions").await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn a_password_change_is_in_the_security_log() {
    let app = spawn_app().await;
    let mut browser = Visitor::signed_up(&app, "petra@example.com", PASSWORD).await;
    let changed = browser
        .submit(
            "/settings",
            "/settings/password",
            &[
                ("current_password", PASSWORD),
                ("new_password", "a new battery staple"),
            ],
        )
        .await;
    assert_eq!(changed.status, StatusCode::SEE_OTHER);
    let page = browser.get("/settings/sessions").await;
    let log = page.body.split("Security log").nth(1).unwrap();
    let changed_at = log.find("Password changed").expect("logged");
    let created_at = log.find("Account created").expect("logged");
    assert!(changed_at < created_at, "newest first: {log}");
    assert!(log.contains("127.0.0.1"), "{log}");
}

// ---- email change ----

const CONFIRM: &str = "Confirm your new email address";
const CHANGED: &str = "Your email address was changed";

async fn change_email(browser: &mut Visitor<'_>, email: &str, password: &str) -> Page {
    browser
        .submit(
            "/settings",
            "/settings/email",
            &[("email", email), ("password", password)],
        )
        .await
}

async fn log_in(app: &TestApp, email: &str) -> StatusCode {
    let mut browser = Visitor::new(app);
    let page = browser
        .submit("/login", "/login", &[("email", email), ("password", PASSWORD)])
        .await;
    page.status
}

#[tokio::test]
async fn an_email_change_waits_for_the_new_address_and_the_old_one_can_undo_it() {
    let (app, smtp) = spawn_app_with_smtp().await;
    let mut browser = Visitor::signed_up(&app, "quinn.old@example.com", PASSWORD).await;
    Visitor::signed_up(&app, "taken@example.com", PASSWORD).await;

    for (email, password, message) in [
        ("not an address", PASSWORD, "email-error"),
        ("quinn.new@example.com", "", "Enter your current password."),
        (
            "quinn.new@example.com",
            "not my password",
            "This is not your current password.",
        ),
        ("Taken@Example.com", PASSWORD, "Another account has this address."),
        (
            "QUINN.OLD@example.com",
            PASSWORD,
            "This is your email address already.",
        ),
    ] {
        let page = change_email(&mut browser, email, password).await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY, "{email}");
        assert!(page.body.contains(message), "{message}: {}", page.body);
    }

    let sent = change_email(&mut browser, "quinn.new@example.com", PASSWORD).await;
    assert_eq!(sent.location(), "/settings?notice=email-change-sent");
    let link = emailed_link(&smtp, "quinn.new@example.com", CONFIRM, "/confirm-email").await;
    // Nothing changes before the link is followed.
    assert!(
        browser
            .get("/settings")
            .await
            .body
            .contains("quinn.old@example.com")
    );
    assert_eq!(
        log_in(&app, "quinn.new@example.com").await,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    // The link is the proof of the address, whichever browser opens it; it works once.
    let mut elsewhere = Visitor::new(&app);
    let page = elsewhere.open_link(&link).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body.contains("Sign in with quinn.new@example.com"),
        "{}",
        page.body
    );
    assert_eq!(elsewhere.open_link(&link).await.status, StatusCode::GONE);
    let settings = browser.get("/settings").await;
    assert!(
        settings.body.contains("<strong>quinn.new@example.com</strong>")
            && settings.body.contains("Verified")
    );
    assert_eq!(log_in(&app, "quinn.new@example.com").await, StatusCode::SEE_OTHER);
    assert_eq!(
        log_in(&app, "quinn.old@example.com").await,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    // The old address was told, with a link that undoes it and ends every session.
    let revert = emailed_link(&smtp, "quinn.old@example.com", CHANGED, "/revert-email").await;
    let mut owner = Visitor::new(&app);
    let page = owner.open_link(&revert).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("quinn.old@example.com again"), "{}", page.body);
    assert_eq!(
        browser.get("/dashboard").await.status,
        StatusCode::SEE_OTHER,
        "signed out"
    );
    assert_eq!(log_in(&app, "quinn.old@example.com").await, StatusCode::SEE_OTHER);
    assert_eq!(owner.open_link(&revert).await.status, StatusCode::GONE);

    let mut again = Visitor::new(&app);
    again
        .submit(
            "/login",
            "/login",
            &[("email", "quinn.old@example.com"), ("password", PASSWORD)],
        )
        .await;
    let log = again.get("/settings/sessions").await;
    for entry in ["Email address changed", "Email address restored"] {
        assert!(log.body.contains(entry), "{entry}: {}", log.body);
    }
    assert_eq!(emails_to(&smtp, "quinn.new@example.com", CONFIRM), 1);
}

#[tokio::test]
async fn an_address_is_given_to_one_account_when_two_confirm_it_at_once() {
    let (app, smtp) = spawn_app_with_smtp().await;
    let mut ruth = Visitor::signed_up(&app, "ruth@example.com", PASSWORD).await;
    let mut saul = Visitor::signed_up(&app, "saul@example.com", PASSWORD).await;
    assert_eq!(
        change_email(&mut ruth, "shared@example.com", PASSWORD)
            .await
            .status,
        StatusCode::SEE_OTHER
    );
    // The cap lets one confirmation a minute reach an address.
    let capped = change_email(&mut saul, "shared@example.com", PASSWORD).await;
    assert_eq!(capped.status, StatusCode::TOO_MANY_REQUESTS);
    let first = emailed_link(&smtp, "shared@example.com", CONFIRM, "/confirm-email").await;
    sqlx::query("UPDATE emails SET created_at = created_at - interval '1 hour'")
        .execute(&mut app.database.connect().await)
        .await
        .unwrap();
    assert_eq!(
        change_email(&mut saul, "shared@example.com", PASSWORD)
            .await
            .status,
        StatusCode::SEE_OTHER
    );
    let second = crate::helpers::wait_until(
        "a second confirmation",
        std::time::Duration::from_secs(30),
        || async {
            let link = emailed_link(&smtp, "shared@example.com", CONFIRM, "/confirm-email").await;
            if link == first {
                Err("only the first".to_owned())
            } else {
                Ok(link)
            }
        },
    )
    .await;

    let (mut a, mut b) = (Visitor::new(&app), Visitor::new(&app));
    let (first_page, second_page) = tokio::join!(a.open_link(&first), b.open_link(&second));
    let mut statuses = [first_page.status, second_page.status];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::CONFLICT]);
    let owners: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE lower(email) = 'shared@example.com'")
            .fetch_one(&mut app.database.connect().await)
            .await
            .unwrap();
    assert_eq!(owners, 1);
    let loser = if first_page.status == StatusCode::CONFLICT {
        &mut ruth
    } else {
        &mut saul
    };
    let settings = loser.get("/settings").await;
    assert!(
        !settings.body.contains("shared@example.com"),
        "kept their address: {}",
        settings.body
    );
}

// ---- two-factor sign-in ----

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The otpauth URI shown on `/settings/2fa`, as an authenticator app would read it.
fn enrolment_uri(page: &str) -> totp_rs::Totp {
    let start = page
        .find("<code class=\"otpauth-uri\">")
        .expect("the URI as text")
        + "<code class=\"otpauth-uri\">".len();
    let uri = page[start..]
        .split('<')
        .next()
        .unwrap()
        .replace("&#38;", "&")
        .replace("&amp;", "&");
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    totp_rs::Totp::from_url(&uri).unwrap()
}

/// A browser that logs in with the password only (a 2FA user lands on `/login/2fa`).
async fn password_step<'a>(app: &'a TestApp, email: &str) -> (Visitor<'a>, Page) {
    let mut browser = Visitor::new(app);
    let page = browser
        .submit("/login", "/login", &[("email", email), ("password", PASSWORD)])
        .await;
    (browser, page)
}

/// Turns 2FA on for `browser`'s user: the app's TOTP and the recovery codes.
async fn enrol(browser: &mut Visitor<'_>) -> (totp_rs::Totp, Vec<String>) {
    let page = browser.get("/settings/2fa").await;
    assert!(page.body.contains("<svg"), "a QR code: {}", page.body);
    let totp = enrolment_uri(&page.body);
    let code = totp.generate(unix_now()).to_string();
    let enabled = browser
        .submit("/settings/2fa", "/settings/2fa/enable", &[("code", &code)])
        .await;
    assert_eq!(enabled.status, StatusCode::OK, "{}", enabled.body);
    let codes: Vec<String> = enabled
        .body
        .split("<li><code>")
        .skip(1)
        .map(|rest| rest.split('<').next().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10, "{}", enabled.body);
    (totp, codes)
}

#[tokio::test]
async fn two_factor_sign_in_with_a_code_once_or_a_recovery_code_once() {
    let app = spawn_app().await;
    let mut browser = Visitor::signed_up(&app, "tara@example.com", PASSWORD).await;

    // A wrong code, or one of another secret, does not turn it on.
    let page = browser.get("/settings/2fa").await;
    let theirs = enrolment_uri(&page.body);
    let other = totp_rs::Builder::new()
        .with_secret(b"another secret, 20 b".to_vec())
        .build()
        .unwrap();
    for code in [
        "000000",
        "12345",
        "abcdef",
        &other.generate(unix_now()).to_string(),
    ] {
        let refused = browser
            .submit("/settings/2fa", "/settings/2fa/enable", &[("code", code)])
            .await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{code}");
    }
    // A reload shows the same secret: the app that scanned it keeps working.
    assert_eq!(
        enrolment_uri(&browser.get("/settings/2fa").await.body)
            .to_url()
            .unwrap(),
        theirs.to_url().unwrap()
    );
    let (totp, recovery) = enrol(&mut browser).await;
    assert!(
        browser
            .get("/settings/2fa")
            .await
            .body
            .contains("Two-factor sign-in is on")
    );

    // The password alone starts no session.
    let (mut laptop, page) = password_step(&app, "tara@example.com").await;
    assert_eq!(page.location(), "/login/2fa");
    assert!(laptop.session().is_none());
    assert_eq!(laptop.get("/dashboard").await.status, StatusCode::SEE_OTHER);
    let wrong = laptop
        .submit("/login/2fa", "/login/2fa", &[("code", "000000")])
        .await;
    assert_eq!(wrong.status, StatusCode::UNPROCESSABLE_ENTITY);
    let empty = laptop.submit("/login/2fa", "/login/2fa", &[("code", " ")]).await;
    assert_eq!(empty.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(empty.body.contains("Enter the 6-digit code"), "{}", empty.body);
    assert!(laptop.session().is_none());
    // The code of the enrolment's step was used: the next step's code signs in, once.
    let code = totp.generate(unix_now() + 30).to_string();
    let signed_in = laptop
        .submit("/login/2fa", "/login/2fa", &[("code", &code)])
        .await;
    assert_eq!(
        (signed_in.status, signed_in.location()),
        (StatusCode::SEE_OTHER, "/dashboard")
    );
    assert!(laptop.session().is_some() && !laptop.cookies.contains_key("keel_2fa"));
    assert_eq!(laptop.get("/dashboard").await.status, StatusCode::OK);

    let (mut phone, _) = password_step(&app, "tara@example.com").await;
    let replayed = phone.submit("/login/2fa", "/login/2fa", &[("code", &code)]).await;
    assert_eq!(
        replayed.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a code is accepted once"
    );
    let with_recovery = phone
        .submit(
            "/login/2fa",
            "/login/2fa",
            &[("recovery_code", &recovery[0].to_uppercase())],
        )
        .await;
    assert_eq!(
        with_recovery.status,
        StatusCode::SEE_OTHER,
        "{}",
        with_recovery.body
    );
    let (mut tablet, _) = password_step(&app, "tara@example.com").await;
    let again = tablet
        .submit("/login/2fa", "/login/2fa", &[("recovery_code", &recovery[0])])
        .await;
    assert_eq!(
        again.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a recovery code works once"
    );
    assert!(
        again.body.contains("id=\"recovery_code-error\"")
            && again.body.contains("<details class=\"auth-alt\" open>"),
        "the message is under the recovery field, shown open: {}",
        again.body
    );

    // The half-done login is bound to its browser, and ends after 5 minutes.
    let mut stranger = Visitor::new(&app);
    let csrf = stranger.get("/login").await.csrf_token();
    let code = totp.generate(unix_now() + 30).to_string();
    let no_cookie = stranger
        .post("/login/2fa", &[("code", &code), ("csrf_token", &csrf)])
        .await;
    assert_eq!(no_cookie.location(), "/login?notice=2fa-expired");
    sqlx::query("UPDATE pending_logins SET expires_at = now() - interval '1 second'")
        .execute(&mut app.database.connect().await)
        .await
        .unwrap();
    assert_eq!(
        tablet.get("/login/2fa").await.location(),
        "/login?notice=2fa-expired"
    );

    let log = laptop.get("/settings/sessions").await;
    for entry in ["Two-factor sign-in turned on", "A wrong two-factor code"] {
        assert!(log.body.contains(entry), "{entry}: {}", log.body);
    }

    // Off, with the password only.
    let refused = laptop
        .submit("/settings/2fa", "/settings/2fa/disable", &[("password", "nope")])
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    let off = laptop
        .submit(
            "/settings/2fa",
            "/settings/2fa/disable",
            &[("password", PASSWORD)],
        )
        .await;
    assert_eq!(off.location(), "/settings");
    let (_, page) = password_step(&app, "tara@example.com").await;
    assert_eq!(page.location(), "/dashboard");
}

#[tokio::test]
async fn wrong_codes_are_throttled_like_passwords() {
    let app = spawn_app().await;
    let mut browser = Visitor::signed_up(&app, "uma@example.com", PASSWORD).await;
    let (totp, _) = enrol(&mut browser).await;
    let (mut attacker, _) = password_step(&app, "uma@example.com").await;
    let mut statuses = Vec::new();
    for guess in 0..12 {
        let page = attacker
            .submit("/login/2fa", "/login/2fa", &[("code", &format!("{guess:06}"))])
            .await;
        statuses.push(page.status);
        if page.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(page.headers.contains_key(header::RETRY_AFTER));
            // Locked: even the right code waits.
            let code = totp.generate(unix_now() + 30).to_string();
            let right = attacker
                .submit("/login/2fa", "/login/2fa", &[("code", &code)])
                .await;
            assert_eq!(right.status, StatusCode::TOO_MANY_REQUESTS);
            break;
        }
    }
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    assert!(attacker.session().is_none());
}

#[tokio::test]
async fn a_team_that_requires_two_factor_sends_members_without_it_to_enrol() {
    let app = spawn_app().await;
    let mut owner = Visitor::signed_up(&app, "vera@example.com", PASSWORD).await;
    owner.submit("/teams", "/teams", &[("name", "Vault")]).await;
    let refused = owner
        .submit("/team", "/team/security", &[("require_2fa", "on")])
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(refused.body.contains("for yourself first"), "{}", refused.body);
    enrol(&mut owner).await;
    let junk = owner
        .submit("/team", "/team/security", &[("require_2fa", "yes")])
        .await;
    assert_eq!(junk.status, StatusCode::BAD_REQUEST);
    let saved = owner
        .submit("/team", "/team/security", &[("require_2fa", "on")])
        .await;
    assert_eq!(saved.location(), "/team");

    // A member without 2FA, working in the team.
    let mut walt = Visitor::signed_up(&app, "walt@example.com", PASSWORD).await;
    let team: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO memberships (team_id, user_id, role)
         SELECT t.id, u.id, 'member' FROM teams t, users u WHERE t.name = 'Vault' AND u.email = 'walt@example.com'
         RETURNING team_id",
    )
    .fetch_one(&mut app.database.connect().await)
    .await
    .unwrap();
    let csrf = walt.get("/teams").await.csrf_token();
    walt.post(
        "/teams/switch",
        &[("team_id", &team.to_string()), ("csrf_token", &csrf)],
    )
    .await;
    for path in ["/dashboard", "/team", "/team/activity", "/billing", "/pro"] {
        let page = walt.get(path).await;
        assert_eq!(
            page.location(),
            "/settings/2fa?notice=team-requires-2fa",
            "{path}"
        );
    }
    let changing_it = walt.submit("/teams", "/team/security", &[]).await;
    assert_eq!(changing_it.location(), "/settings/2fa?notice=team-requires-2fa");
    // What lets them enrol or go stays open.
    assert_eq!(walt.get("/teams").await.status, StatusCode::OK);
    let enrol_page = walt.get("/settings/2fa?notice=team-requires-2fa").await;
    assert!(
        enrol_page.body.contains("Your team requires two-factor sign-in"),
        "{}",
        enrol_page.body
    );
    enrol(&mut walt).await;
    assert_eq!(walt.get("/dashboard").await.status, StatusCode::OK);
    // Only the owner sets the policy.
    let forbidden = walt.submit("/team", "/team/security", &[]).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);

    let activity = owner.get("/team/activity").await;
    assert!(
        activity.body.contains("changed the team&#39;s security settings")
            || activity.body.contains("changed the team's security settings"),
        "{}",
        activity.body
    );
    let off = owner.submit("/team", "/team/security", &[]).await;
    assert_eq!(off.location(), "/team");
    assert!(!owner.get("/team").await.body.contains("checked"));
}

// ---- data export ----

#[tokio::test]
async fn a_data_export_reaches_its_user_only_for_a_day() {
    let (app, smtp) = spawn_app_with_smtp().await;
    let mut xena = Visitor::signed_up(&app, "xena@example.com", PASSWORD).await;
    xena.submit("/teams", "/teams", &[("name", "Xena's Shop")]).await;
    let asked = xena.submit("/settings", "/settings/export", &[]).await;
    assert_eq!(asked.location(), "/settings?notice=export-started");
    let link = emailed_link(
        &smtp,
        "xena@example.com",
        "Your data export is ready",
        "/settings/export/",
    )
    .await;

    let download = xena.get(&link).await;
    assert_eq!(download.status, StatusCode::OK, "{}", download.body);
    assert_eq!(download.headers[header::CONTENT_TYPE], "application/json");
    assert!(
        download.headers[header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    let document: serde_json::Value = serde_json::from_str(&download.body).unwrap();
    assert_eq!(document["profile"]["email"], "xena@example.com");
    let teams: Vec<&str> = document["teams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["team"].as_str().unwrap())
        .collect();
    assert_eq!(teams, ["xena's team", "Xena's Shop"]);
    assert_eq!(document["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(document["sessions"][0]["client_ip"], "127.0.0.1");
    let events: Vec<&str> = document["security_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["account_created", "data_exported"]);

    // Another user, or nobody, cannot have it.
    let mut yuri = Visitor::signed_up(&app, "yuri@example.com", PASSWORD).await;
    assert_eq!(yuri.get(&link).await.status, StatusCode::NOT_FOUND);
    let stranger = Visitor::new(&app).get(&link).await;
    assert_eq!(stranger.status, StatusCode::SEE_OTHER);
    assert!(
        stranger.location().starts_with("/login?next="),
        "{}",
        stranger.location()
    );
    assert_eq!(
        xena.get("/settings/export/not-an-id").await.status,
        StatusCode::NOT_FOUND
    );
    // After 24 hours: gone.
    sqlx::query("UPDATE data_exports SET expires_at = now() - interval '1 second'")
        .execute(&mut app.database.connect().await)
        .await
        .unwrap();
    assert_eq!(xena.get(&link).await.status, StatusCode::GONE);
    assert_eq!(
        emails_to(&smtp, "xena@example.com", "Your data export is ready"),
        1
    );
}

// ---- deletion ----

const STRIPE_KEY: &str = "sk_test_keel_deletion_tests";

/// The app with a fake Stripe and an SMTP sink.
async fn app_with_stripe_and_smtp(
    fake: &crate::fake_stripe::FakeStripe,
) -> (TestApp, crate::smtp_server::FakeSmtp) {
    let url = fake.url();
    crate::helpers::spawn_app_with_smtp_and(|env| {
        env.insert("STRIPE_SECRET_KEY", STRIPE_KEY.into());
        env.insert("STRIPE_API_BASE", url);
        env.insert("STRIPE_PRICES", "pro=price_deletion_pro".into());
    })
    .await
}

/// A live subscription of the team of `email` (where they are owner), in keel and in Stripe.
async fn subscribed(app: &TestApp, fake: &crate::fake_stripe::FakeStripe, email: &str, id: &str) {
    let team: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO subscriptions (id, team_id, customer_id, status, price_id, state_as_of)
         SELECT $2, m.team_id, 'cus_deletion', 'active', 'price_deletion_pro', now()
         FROM memberships m JOIN users u ON u.id = m.user_id WHERE u.email = $1 AND m.role = 'owner'
         RETURNING team_id",
    )
    .bind(email)
    .bind(id)
    .fetch_one(&mut app.database.connect().await)
    .await
    .unwrap();
    fake.put_subscription(serde_json::json!({
        "id": id, "object": "subscription", "customer": "cus_deletion", "status": "active",
        "metadata": {"team_id": team.to_string()},
        "items": {"object": "list", "data": [{"id": format!("si_{id}"), "object": "subscription_item",
                                              "price": {"id": "price_deletion_pro", "object": "price"}}]}
    }));
}

async fn delete(browser: &mut Visitor<'_>, password: &str, confirm: &str) -> Page {
    browser
        .submit(
            "/settings",
            "/settings/delete",
            &[("password", password), ("confirm", confirm)],
        )
        .await
}

#[tokio::test]
async fn deleting_an_account_cancels_what_it_alone_paid_for_and_forgets_the_user() {
    let fake = crate::fake_stripe::FakeStripe::start().await;
    let (app, smtp) = app_with_stripe_and_smtp(&fake).await;
    let mut zoe = Visitor::signed_up(&app, "zoe@example.com", PASSWORD).await;
    subscribed(&app, &fake, "zoe@example.com", "sub_zoe").await;
    // Zoe is also a member of Bo's team, which goes on.
    let mut bo = Visitor::signed_up(&app, "bo@example.com", PASSWORD).await;
    bo.submit("/teams", "/teams", &[("name", "Bo's Band")]).await;
    let mut db = app.database.connect().await;
    sqlx::query(
        "INSERT INTO memberships (team_id, user_id, role)
         SELECT t.id, u.id, 'member' FROM teams t, users u WHERE t.name = 'Bo''s Band' AND u.email = 'zoe@example.com'",
    )
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO team_audit_log (team_id, actor_id, actor_email, client_ip, action, subject)
         SELECT t.id, u.id, u.email, '192.0.2.7', 'invitation.accepted', u.email
         FROM teams t, users u WHERE t.name = 'Bo''s Band' AND u.email = 'zoe@example.com'",
    )
    .execute(&mut db)
    .await
    .unwrap();

    for (password, confirm, message) in [
        (
            "wrong password",
            "zoe@example.com",
            "This is not your current password",
        ),
        (PASSWORD, "someone@example.com", "Type your email address exactly"),
    ] {
        let page = delete(&mut zoe, password, confirm).await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(page.body.contains(message), "{message}: {}", page.body);
    }
    // Stripe down: nothing is deleted, and the page says so.
    fake.set_mode(crate::fake_stripe::Mode::Fail(500));
    let down = delete(&mut zoe, PASSWORD, "Zoe@Example.com").await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        down.body.contains("Your account was not deleted"),
        "{}",
        down.body
    );
    assert_eq!(zoe.get("/dashboard").await.status, StatusCode::OK);
    fake.set_mode(crate::fake_stripe::Mode::Normal);

    let deleted = delete(&mut zoe, PASSWORD, "Zoe@Example.com").await;
    assert_eq!((deleted.status, deleted.location()), (StatusCode::SEE_OTHER, "/"));
    assert!(zoe.session().is_none());
    assert_eq!(zoe.get("/dashboard").await.status, StatusCode::SEE_OTHER);
    assert_eq!(
        log_in(&app, "zoe@example.com").await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // Her own team's subscription was canceled in Stripe, with its idempotency key.
    assert_eq!(fake.subscription("sub_zoe").unwrap()["status"], "canceled");
    let requests = fake.requests();
    let cancel = requests.iter().rev().find(|r| r.method == "DELETE").unwrap();
    assert_eq!(cancel.idempotency_key.as_deref(), Some("keel-cancel-sub_zoe"));
    // Her team is gone; Bo's stays, and its log no longer names her.
    let teams: Vec<String> = sqlx::query_scalar("SELECT name FROM teams ORDER BY name")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert_eq!(teams, ["Bo's Band", "bo's team"]);
    let row: (Option<String>, Option<String>, Option<String>) =
        sqlx::query_as("SELECT actor_email, host(client_ip), subject FROM team_audit_log WHERE action = 'invitation.accepted'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(row, (None, None, Some("a deleted user".to_owned())));
    let anywhere: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM users WHERE email = 'zoe@example.com')
              + (SELECT count(*) FROM team_audit_log WHERE actor_email = 'zoe@example.com' OR subject = 'zoe@example.com')",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(anywhere, 0);
    assert!(bo.get("/team").await.body.contains("bo@example.com"));
    emailed_link(&smtp, "zoe@example.com", "Your account was deleted", "").await;
}

#[tokio::test]
async fn the_last_owner_of_a_team_with_members_cannot_delete_their_account() {
    let app = spawn_app().await;
    let mut ann = Visitor::signed_up(&app, "ann.owner@example.com", PASSWORD).await;
    ann.submit("/teams", "/teams", &[("name", "Ann's Agency")]).await;
    Visitor::signed_up(&app, "ben@example.com", PASSWORD).await;
    sqlx::query(
        "INSERT INTO memberships (team_id, user_id, role)
         SELECT t.id, u.id, 'member' FROM teams t, users u WHERE t.name = 'Ann''s Agency' AND u.email = 'ben@example.com'",
    )
    .execute(&mut app.database.connect().await)
    .await
    .unwrap();
    let refused = delete(&mut ann, PASSWORD, "ann.owner@example.com").await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        refused.body.contains("last owner of Ann&#39;s Agency"),
        "{}",
        refused.body
    );
    assert_eq!(ann.get("/dashboard").await.status, StatusCode::OK);
    // Once Ben is an owner too, she may go; the team stays with him.
    sqlx::query("UPDATE memberships SET role = 'owner'")
        .execute(&mut app.database.connect().await)
        .await
        .unwrap();
    let deleted = delete(&mut ann, PASSWORD, "ann.owner@example.com").await;
    assert_eq!(deleted.status, StatusCode::SEE_OTHER, "{}", deleted.body);
    let members: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM memberships m JOIN teams t ON t.id = m.team_id WHERE t.name = 'Ann''s Agency'",
    )
    .fetch_one(&mut app.database.connect().await)
    .await
    .unwrap();
    assert_eq!(members, 1);
}

#[tokio::test]
async fn a_deletion_posted_twice_at_once_deletes_once_and_answers_both() {
    let app = spawn_app().await;
    let mut cleo = Visitor::signed_up(&app, "cleo.twice@example.com", PASSWORD).await;
    let mut twin = Visitor::new(&app);
    twin.cookies = cleo.cookies.clone();
    let csrf = cleo.get("/settings").await.csrf_token();
    let fields = [
        ("password", PASSWORD),
        ("confirm", "cleo.twice@example.com"),
        ("csrf_token", csrf.as_str()),
    ];
    let (a, b) = tokio::join!(
        cleo.post("/settings/delete", &fields),
        twin.post("/settings/delete", &fields)
    );
    let statuses = [a.status, b.status];
    assert!(statuses.contains(&StatusCode::SEE_OTHER), "{statuses:?}");
    assert!(statuses.iter().all(|s| !s.is_server_error()), "{statuses:?}");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut app.database.connect().await)
        .await
        .unwrap();
    assert_eq!(users, 0);
}
