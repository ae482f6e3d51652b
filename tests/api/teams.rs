//! Teams (SPEC, "Teams (B2B)"): several teams per user and the session's current team;
//! invitations; roles, removals and leaving; the audit log.

use reqwest::StatusCode;
use sqlx::{Connection as _, PgConnection};
use uuid::Uuid;

use crate::{
    auth::{emailed_link, emails_to},
    helpers::{TestApp, spawn_app, spawn_app_with_smtp},
    visitor::{Page, Visitor, field_value},
};

const PASSWORD: &str = "correct horse battery";

/// The `team_id` of the switch form for the team named `name` on `/teams`.
fn switch_id(teams_page: &str, name: &str) -> String {
    let row = teams_page
        .split("<li class=\"team-row\">")
        .find(|row| row.contains(&format!("<strong>{name}</strong>")))
        .unwrap_or_else(|| panic!("no row for {name}:\n{teams_page}"));
    field_value(row, "team_id").unwrap_or_else(|| panic!("no switch form for {name}: it is current"))
}

#[tokio::test]
async fn a_user_creates_teams_switches_between_them_and_sees_the_members() {
    let app = spawn_app().await;
    let mut owner = Visitor::signed_up(&app, "tess@example.com", PASSWORD).await;

    let empty = owner.submit("/teams", "/teams", &[("name", "   ")]).await;
    assert_eq!(empty.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(empty.body.contains("Give the team a name."), "{}", empty.body);

    let created = owner
        .submit("/teams", "/teams", &[("name", " Acme <Labs> ")])
        .await;
    assert_eq!(
        (created.status, created.location()),
        (StatusCode::SEE_OTHER, "/team")
    );
    let team = owner.get("/team").await;
    assert!(team.body.contains("Acme &#60;Labs&#62;"), "{}", team.body);
    assert!(
        team.body.contains("tess@example.com") && team.body.contains("Owner"),
        "{}",
        team.body
    );
    assert!(owner.get("/dashboard").await.body.contains("Acme &#60;Labs&#62;"));

    // Both teams listed, the new one current; back to the personal team.
    let teams = owner.get("/teams").await;
    assert!(teams.body.contains("tess&#39;s team"), "{}", teams.body);
    let personal = switch_id(&teams.body, "tess&#39;s team");
    let token = teams.csrf_token();
    let switched = owner
        .post("/teams/switch", &[("team_id", &personal), ("csrf_token", &token)])
        .await;
    assert_eq!(
        (switched.status, switched.location()),
        (StatusCode::SEE_OTHER, "/dashboard")
    );
    let dashboard = owner.get("/dashboard").await;
    assert!(dashboard.body.contains("tess&#39;s team"), "{}", dashboard.body);
    assert!(!dashboard.body.contains("Acme"), "{}", dashboard.body);
}

#[tokio::test]
async fn nobody_switches_into_a_team_they_do_not_belong_to() {
    let app = spawn_app().await;
    let mut stranger = Visitor::signed_up(&app, "uri@example.com", PASSWORD).await;
    let mut owner = Visitor::signed_up(&app, "vic@example.com", PASSWORD).await;
    owner.submit("/teams", "/teams", &[("name", "Private")]).await;
    let teams = owner.get("/teams").await;
    let others = switch_id(&teams.body, "vic&#39;s team");

    let token = stranger.get("/teams").await.csrf_token();
    let refused = stranger
        .post("/teams/switch", &[("team_id", &others), ("csrf_token", &token)])
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    for junk in ["", "not-a-uuid", "00000000-0000-0000-0000-000000000000"] {
        let page = stranger
            .post("/teams/switch", &[("team_id", junk), ("csrf_token", &token)])
            .await;
        assert!(page.status.is_client_error(), "{junk:?}: {}", page.status);
    }
    // Still in their own team, and nothing of the other one shows.
    let dashboard = stranger.get("/dashboard").await;
    assert!(dashboard.body.contains("uri&#39;s team"), "{}", dashboard.body);
    let team = stranger.get("/team").await;
    assert!(!team.body.contains("vic@example.com"), "{}", team.body);
    // Without the CSRF token nothing switches either.
    let forged = owner.post("/teams/switch", &[("team_id", &others)]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(owner.get("/dashboard").await.body.contains("Private"));
}

// ---- invitations ----

const INVITED: &str = "invited you to";

/// `who` (signed in, in the team to invite to) invites `email` as `role`.
async fn invite(who: &mut Visitor<'_>, email: &str, role: &str) -> Page {
    who.submit("/team", "/team/invitations", &[("email", email), ("role", role)])
        .await
}

async fn db(app: &TestApp) -> PgConnection {
    app.database.connect().await
}

async fn user_id(app: &TestApp, email: &str) -> Uuid {
    sqlx::query_scalar("SELECT id FROM users WHERE lower(email) = lower($1)")
        .bind(email)
        .fetch_one(&mut db(app).await)
        .await
        .unwrap()
}

/// The id of the team named `name`.
async fn team_id(app: &TestApp, name: &str) -> Uuid {
    sqlx::query_scalar("SELECT id FROM teams WHERE name = $1")
        .bind(name)
        .fetch_one(&mut db(app).await)
        .await
        .unwrap()
}

/// The audit log of team `name`, oldest first, as `action subject detail` lines.
async fn activity_of(app: &TestApp, name: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT concat_ws(' ', action, subject, detail, host(client_ip))
         FROM team_audit_log WHERE team_id = $1 ORDER BY id",
    )
    .bind(team_id(app, name).await)
    .fetch_all(&mut db(app).await)
    .await
    .unwrap()
}

/// The token of an emailed `/invite?token=…` link.
fn token_of(link: &str) -> String {
    link.split_once("token=").unwrap().1.to_owned()
}

#[tokio::test]
async fn an_invited_visitor_signs_up_from_the_email_and_joins_the_team() {
    let (app, smtp) = spawn_app_with_smtp().await;
    let mut owner = Visitor::signed_up(&app, "olive@example.com", PASSWORD).await;
    owner.submit("/teams", "/teams", &[("name", "Acme")]).await;

    let sent = invite(&mut owner, "Pat@Example.com", "admin").await;
    assert_eq!((sent.status, sent.location()), (StatusCode::SEE_OTHER, "/team"));
    let team = owner.get("/team").await;
    assert!(
        team.body.contains("Pat@Example.com") && team.body.contains("Resend"),
        "{}",
        team.body
    );
    let link = emailed_link(&smtp, "Pat@Example.com", INVITED, "/invite").await;
    assert!(link.starts_with("/invite?token="), "{link}");

    // Signed out: the invitation, and links to sign up or log in that come back here.
    let mut pat = Visitor::new(&app);
    let page = pat.open_link(&link).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.headers["referrer-policy"], "no-referrer");
    for shown in ["Join Acme", "olive@example.com", "Pat@Example.com", "Admin"] {
        assert!(page.body.contains(shown), "{shown}: {}", page.body);
    }
    let signup = "/signup?email=Pat%40Example.com&#38;next=%2Finvite";
    assert!(page.body.contains(signup), "{}", page.body);
    let form = pat.get("/signup?email=Pat%40Example.com&next=%2Finvite").await;
    assert!(form.body.contains(r#"value="Pat@Example.com""#), "{}", form.body);
    let signed_up = pat
        .post(
            "/signup",
            &[
                ("email", "Pat@Example.com"),
                ("password", PASSWORD),
                ("next", "/invite"),
                ("csrf_token", &form.csrf_token()),
            ],
        )
        .await;
    assert_eq!(
        (signed_up.status, signed_up.location()),
        (StatusCode::SEE_OTHER, "/invite")
    );

    // Signing up through the link verified the address: no verification email.
    let accept = pat.get("/invite").await;
    assert!(accept.body.contains("Accept and join Acme"), "{}", accept.body);
    assert!(pat.get("/settings").await.body.contains("Verified"));
    assert_eq!(emails_to(&smtp, "Pat@Example.com", "Confirm your email"), 0);

    let token = field_value(&accept.body, "token").unwrap();
    let joined = pat
        .post(
            "/invite",
            &[("token", &token), ("csrf_token", &accept.csrf_token())],
        )
        .await;
    assert_eq!(
        (joined.status, joined.location()),
        (StatusCode::SEE_OTHER, "/team")
    );
    let team = pat.get("/team").await;
    assert!(
        team.body.contains("Acme") && team.body.contains("olive@example.com"),
        "{}",
        team.body
    );
    let team = owner.get("/team").await;
    assert!(team.body.contains("Pat@Example.com"), "{}", team.body);
    assert!(
        !team.body.contains("Resend"),
        "no invitation pending: {}",
        team.body
    );

    // The link worked once; the log says who did what from where.
    assert_eq!(pat.get(&link).await.status, StatusCode::GONE);
    assert_eq!(
        activity_of(&app, "Acme").await,
        [
            "invitation.sent Pat@Example.com admin 127.0.0.1",
            "invitation.accepted Pat@Example.com admin 127.0.0.1",
        ]
    );
    let activity = owner.get("/team/activity").await;
    assert_eq!(activity.status, StatusCode::OK);
    assert!(
        activity.body.contains("accepted the invitation of"),
        "{}",
        activity.body
    );
}

#[tokio::test]
async fn an_existing_user_logs_in_from_the_link_and_another_address_is_refused() {
    let (app, smtp) = spawn_app_with_smtp().await;
    let mut quinn = Visitor::signed_up(&app, "quinn@example.com", PASSWORD).await;
    let mut owner = Visitor::signed_up(&app, "rhea@example.com", PASSWORD).await;
    owner.submit("/teams", "/teams", &[("name", "Globex")]).await;
    invite(&mut owner, "quinn@example.com", "member").await;
    let link = emailed_link(&smtp, "quinn@example.com", INVITED, "/invite").await;
    let token = token_of(&link);

    // Someone else, signed in, holding the link: 403 and the invited address.
    let mut other = Visitor::signed_up(&app, "sam@example.com", PASSWORD).await;
    let page = other.open_link(&link).await;
    assert!(page.body.contains("This invitation is for"), "{}", page.body);
    let refused = other
        .post(
            "/invite",
            &[("token", &token), ("csrf_token", &page.csrf_token())],
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("quinn@example.com"), "{}", refused.body);
    assert!(!other.get("/teams").await.body.contains("Globex"));

    // Signed out, the POST asks to log in first; logging in through the page comes back.
    let mut browser = Visitor::new(&app);
    let page = browser.open_link(&link).await;
    assert!(
        page.body
            .contains("/login?email=quinn%40example.com&#38;next=%2Finvite"),
        "{}",
        page.body
    );
    let csrf = browser.get("/login").await.csrf_token();
    let anonymous = browser
        .post("/invite", &[("token", &token), ("csrf_token", &csrf)])
        .await;
    assert_eq!(anonymous.status, StatusCode::SEE_OTHER);
    assert!(
        anonymous.location().starts_with("/login?next="),
        "{}",
        anonymous.location()
    );
    let login = browser
        .get("/login?email=quinn%40example.com&next=%2Finvite")
        .await;
    assert!(
        login.body.contains(r#"value="quinn@example.com""#),
        "{}",
        login.body
    );
    let logged_in = browser
        .post(
            "/login",
            &[
                ("email", "quinn@example.com"),
                ("password", PASSWORD),
                ("next", "/invite"),
                ("csrf_token", &login.csrf_token()),
            ],
        )
        .await;
    assert_eq!(logged_in.location(), "/invite");
    let page = browser.get("/invite").await;
    let joined = browser
        .post(
            "/invite",
            &[("token", &token), ("csrf_token", &page.csrf_token())],
        )
        .await;
    assert_eq!(joined.status, StatusCode::SEE_OTHER, "{}", joined.body);
    // Joined as a member, and the team is current in that session only.
    assert!(browser.get("/dashboard").await.body.contains("Globex"));
    assert!(!quinn.get("/dashboard").await.body.contains("Globex"));
    assert!(quinn.get("/teams").await.body.contains("Globex"));
    let team = browser.get("/team").await;
    assert!(
        !team.body.contains("/team/invitations"),
        "a member gets no invitation form: {}",
        team.body
    );
}

#[tokio::test]
async fn dead_invitation_links_say_why_with_404_or_410() {
    let (app, smtp) = spawn_app_with_smtp().await;
    let mut owner = Visitor::signed_up(&app, "tia@example.com", PASSWORD).await;
    owner.submit("/teams", "/teams", &[("name", "Initech")]).await;
    let mut browser = Visitor::new(&app);

    // Unknown, or not even a token: 404.
    for token in ["A".repeat(43), "junk".to_owned(), String::new()] {
        let page = browser.get(&format!("/invite?token={token}")).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{token:?}");
        assert!(page.body.contains("not valid"), "{}", page.body);
    }
    assert_eq!(browser.get("/invite").await.status, StatusCode::NOT_FOUND);

    // Resent: the old link is replaced, the new one works.
    invite(&mut owner, "uma@example.com", "member").await;
    let first = emailed_link(&smtp, "uma@example.com", INVITED, "/invite").await;
    let id = invitation_id(&owner.get("/team").await.body);
    // The email cap lets one invitation a minute reach an address.
    let capped = owner
        .submit("/team", &format!("/team/invitations/{id}/resend"), &[])
        .await;
    assert_eq!(capped.status, StatusCode::TOO_MANY_REQUESTS, "{}", capped.body);
    assert_eq!(
        browser.open_link(&first).await.status,
        StatusCode::OK,
        "nothing changed"
    );
    forget_recent_emails(&app).await;
    let resent = owner
        .submit("/team", &format!("/team/invitations/{id}/resend"), &[])
        .await;
    assert_eq!(resent.location(), "/team");
    let second = wait_for_another_link(&smtp, "uma@example.com", &first).await;
    let page = browser.get(&first).await;
    assert_eq!(page.status, StatusCode::GONE);
    assert!(page.body.contains("replaced"), "{}", page.body);
    assert_eq!(browser.open_link(&second).await.status, StatusCode::OK);

    // Inviting the address again replaces the pending invitation too (one row, new role).
    forget_recent_emails(&app).await;
    invite(&mut owner, "UMA@example.com", "admin").await;
    let third = wait_for_another_link(&smtp, "UMA@example.com", &second).await;
    assert_eq!(browser.get(&second).await.status, StatusCode::GONE);
    let page = browser.open_link(&third).await;
    assert!(page.body.contains("Admin"), "{}", page.body);
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM invitations WHERE accepted_at IS NULL AND revoked_at IS NULL",
    )
    .fetch_one(&mut db(&app).await)
    .await
    .unwrap();
    assert_eq!(pending, 1);

    // Revoked: 410, and the token in the page's form no longer works either.
    let token = token_of(&third);
    let id = invitation_id(&owner.get("/team").await.body);
    let revoked = owner
        .submit("/team", &format!("/team/invitations/{id}/revoke"), &[])
        .await;
    assert_eq!(revoked.location(), "/team");
    let page = browser.get(&third).await;
    assert_eq!(page.status, StatusCode::GONE);
    assert!(page.body.contains("withdrawn"), "{}", page.body);
    let mut uma = Visitor::signed_up(&app, "uma@example.com", PASSWORD).await;
    let csrf = uma.get("/teams").await.csrf_token();
    let refused = uma
        .post("/invite", &[("token", &token), ("csrf_token", &csrf)])
        .await;
    assert_eq!(refused.status, StatusCode::GONE);
    assert!(!uma.get("/teams").await.body.contains("Initech"));

    // Expired: 410.
    forget_recent_emails(&app).await;
    invite(&mut owner, "vera@example.com", "member").await;
    let link = emailed_link(&smtp, "vera@example.com", INVITED, "/invite").await;
    sqlx::query(
        "UPDATE invitations SET expires_at = now() - interval '1 second' WHERE email = 'vera@example.com'",
    )
    .execute(&mut db(&app).await)
    .await
    .unwrap();
    let page = browser.get(&link).await;
    assert_eq!(page.status, StatusCode::GONE);
    assert!(page.body.contains("expired"), "{}", page.body);
    let team = owner.get("/team").await;
    assert!(
        team.body.contains("Expired"),
        "the owner sees it expired and can resend: {}",
        team.body
    );
}

/// The id of the first pending invitation on a `/team` page.
fn invitation_id(team_page: &str) -> String {
    let start = team_page
        .find("/team/invitations/")
        .unwrap_or_else(|| panic!("no invitation:\n{team_page}"))
        + "/team/invitations/".len();
    team_page[start..start + 36].to_owned()
}

/// Lets the next capped email go (the tests do not wait the cap's minute out).
async fn forget_recent_emails(app: &TestApp) {
    sqlx::query("UPDATE emails SET created_at = created_at - interval '1 hour'")
        .execute(&mut db(app).await)
        .await
        .unwrap();
}

/// The invitation link of an email to `to` that is not `old`.
async fn wait_for_another_link(smtp: &crate::smtp_server::FakeSmtp, to: &str, old: &str) -> String {
    crate::helpers::wait_until(
        "a new invitation email",
        std::time::Duration::from_secs(30),
        || async {
            let link = emailed_link(smtp, to, INVITED, "/invite").await;
            if link == old {
                Err("still the old link".to_owned())
            } else {
                Ok(link)
            }
        },
    )
    .await
}

#[tokio::test]
async fn two_browsers_accepting_one_link_at_once_join_once() {
    let (app, smtp) = spawn_app_with_smtp().await;
    let mut owner = Visitor::signed_up(&app, "wes@example.com", PASSWORD).await;
    owner.submit("/teams", "/teams", &[("name", "Hooli")]).await;
    Visitor::signed_up(&app, "xia@example.com", PASSWORD).await;
    invite(&mut owner, "xia@example.com", "member").await;
    let token = token_of(&emailed_link(&smtp, "xia@example.com", INVITED, "/invite").await);

    let mut laptop = Visitor::new(&app);
    let mut phone = Visitor::new(&app);
    for browser in [&mut laptop, &mut phone] {
        let page = browser
            .submit(
                "/login",
                "/login",
                &[("email", "xia@example.com"), ("password", PASSWORD)],
            )
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
    }
    let (csrf_a, csrf_b) = (
        laptop.get("/teams").await.csrf_token(),
        phone.get("/teams").await.csrf_token(),
    );
    let statuses = race(
        (
            &mut laptop,
            "/invite",
            &[("token", &token), ("csrf_token", &csrf_a)],
        ),
        (
            &mut phone,
            "/invite",
            &[("token", &token), ("csrf_token", &csrf_b)],
        ),
    )
    .await;
    assert_eq!(statuses, [StatusCode::SEE_OTHER, StatusCode::GONE]);
    let memberships: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM memberships m JOIN users u ON u.id = m.user_id WHERE u.email = 'xia@example.com'",
    )
    .fetch_one(&mut db(&app).await)
    .await
    .unwrap();
    assert_eq!(memberships, 2, "the personal team and Hooli");
}

/// Two visitors posting at once; the two statuses, sorted.
async fn race(
    (a, a_path, a_fields): (&mut Visitor<'_>, &str, &[(&str, &str)]),
    (b, b_path, b_fields): (&mut Visitor<'_>, &str, &[(&str, &str)]),
) -> [StatusCode; 2] {
    let (a, b) = tokio::join!(a.post(a_path, a_fields), b.post(b_path, b_fields));
    let mut statuses = [a.status, b.status];
    statuses.sort();
    statuses
}

// ---- roles ----

/// A user made without the signup form (the role matrix's targets).
async fn insert_user(conn: &mut PgConnection, email: &str) -> Uuid {
    sqlx::query_scalar("INSERT INTO users (email, password_hash) VALUES ($1, 'not a hash') RETURNING id")
        .bind(email)
        .fetch_one(conn)
        .await
        .unwrap()
}

/// `visitor` (signed up as `email`) made a member of `team` as `role`, working in it.
async fn join_as(app: &TestApp, visitor: &mut Visitor<'_>, email: &str, team: Uuid, role: &str) {
    sqlx::query("INSERT INTO memberships (team_id, user_id, role) VALUES ($1, $2, $3)")
        .bind(team)
        .bind(user_id(app, email).await)
        .bind(role)
        .execute(&mut db(app).await)
        .await
        .unwrap();
    let csrf = visitor.get("/teams").await.csrf_token();
    let switched = visitor
        .post(
            "/teams/switch",
            &[("team_id", &team.to_string()), ("csrf_token", &csrf)],
        )
        .await;
    assert_eq!(switched.status, StatusCode::SEE_OTHER);
}

/// What the team's members and invitations are: changes when anything about them changes.
async fn fingerprint(conn: &mut PgConnection, team: Uuid) -> String {
    sqlx::query_scalar(
        "SELECT coalesce(string_agg(x, ',' ORDER BY x), '') FROM (
             SELECT user_id::text || ':' || role AS x FROM memberships WHERE team_id = $1
             UNION ALL
             SELECT id::text || ':' || role || ':' || encode(token_hash, 'hex') || ':' || (revoked_at IS NULL)
             FROM invitations WHERE team_id = $1
         ) facts",
    )
    .bind(team)
    .fetch_one(conn)
    .await
    .unwrap()
}

/// SPEC's role table, request by request: each role (owner, admin, member) × each action,
/// against a team reset before every request, and against another team's ids. An allowed
/// action changes the team; a refused one changes nothing.
#[tokio::test]
async fn the_role_matrix() {
    const SEE_OTHER: u16 = 303;
    const OK: u16 = 200;
    let app = spawn_app().await;
    let mut owner = Visitor::signed_up(&app, "owner@example.com", PASSWORD).await;
    owner.submit("/teams", "/teams", &[("name", "Matrix")]).await;
    let team = team_id(&app, "Matrix").await;
    let mut admin = Visitor::signed_up(&app, "admin@example.com", PASSWORD).await;
    join_as(&app, &mut admin, "admin@example.com", team, "admin").await;
    let mut member = Visitor::signed_up(&app, "member@example.com", PASSWORD).await;
    join_as(&app, &mut member, "member@example.com", team, "member").await;

    let mut conn = db(&app).await;
    let other_owner = insert_user(&mut conn, "t-owner@example.com").await;
    let other_admin = insert_user(&mut conn, "t-admin@example.com").await;
    let other_member = insert_user(&mut conn, "t-member@example.com").await;
    // Another team, with a member and an invitation of its own.
    let elsewhere = insert_user(&mut conn, "elsewhere@example.com").await;
    let other_team: Uuid = sqlx::query_scalar("INSERT INTO teams (name) VALUES ('Other') RETURNING id")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO memberships (team_id, user_id, role) VALUES ($1, $2, 'owner')")
        .bind(other_team)
        .bind(elsewhere)
        .execute(&mut conn)
        .await
        .unwrap();
    let foreign_invitation = Uuid::new_v4();
    let pending = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO invitations (id, team_id, email, role, token_hash, expires_at)
         VALUES ($1, $2, 'foreign@example.com', 'member', sha256(gen_random_uuid()::text::bytea), now() + interval '1 day')",
    )
    .bind(foreign_invitation)
    .bind(other_team)
    .execute(&mut conn)
    .await
    .unwrap();

    let member_path = |id: Uuid, what: &str| format!("/team/members/{id}/{what}");
    // (action, path, fields, status for the owner, the admin, the member)
    type Case = (&'static str, String, Vec<(&'static str, &'static str)>, [u16; 3]);
    let cases: Vec<Case> = vec![
        (
            "invite a member",
            "/team/invitations".into(),
            vec![("email", "EMAIL"), ("role", "member")],
            [SEE_OTHER, SEE_OTHER, 403],
        ),
        (
            "invite an admin",
            "/team/invitations".into(),
            vec![("email", "EMAIL"), ("role", "admin")],
            [SEE_OTHER, SEE_OTHER, 403],
        ),
        (
            "invite an owner",
            "/team/invitations".into(),
            vec![("email", "EMAIL"), ("role", "owner")],
            [SEE_OTHER, 403, 403],
        ),
        (
            "invite as a made-up role",
            "/team/invitations".into(),
            vec![("email", "EMAIL"), ("role", "root")],
            [422, 422, 403],
        ),
        (
            "resend",
            format!("/team/invitations/{pending}/resend"),
            vec![],
            [SEE_OTHER, SEE_OTHER, 403],
        ),
        (
            "revoke",
            format!("/team/invitations/{pending}/revoke"),
            vec![],
            [SEE_OTHER, SEE_OTHER, 403],
        ),
        (
            "member → admin",
            member_path(other_member, "role"),
            vec![("role", "admin")],
            [SEE_OTHER, SEE_OTHER, 403],
        ),
        (
            "admin → member",
            member_path(other_admin, "role"),
            vec![("role", "member")],
            [SEE_OTHER, SEE_OTHER, 403],
        ),
        (
            "owner → admin",
            member_path(other_owner, "role"),
            vec![("role", "admin")],
            [SEE_OTHER, 403, 403],
        ),
        (
            "member → owner",
            member_path(other_member, "role"),
            vec![("role", "owner")],
            [SEE_OTHER, 403, 403],
        ),
        (
            "member → superuser",
            member_path(other_member, "role"),
            vec![("role", "superuser")],
            [422, 422, 422],
        ),
        (
            "remove a member",
            member_path(other_member, "remove"),
            vec![],
            [SEE_OTHER, SEE_OTHER, 403],
        ),
        (
            "remove an admin",
            member_path(other_admin, "remove"),
            vec![],
            [SEE_OTHER, SEE_OTHER, 403],
        ),
        (
            "remove an owner",
            member_path(other_owner, "remove"),
            vec![],
            [SEE_OTHER, 403, 403],
        ),
        (
            "role of another team's member",
            member_path(elsewhere, "role"),
            vec![("role", "member")],
            [404, 404, 404],
        ),
        (
            "remove another team's member",
            member_path(elsewhere, "remove"),
            vec![],
            [404, 404, 404],
        ),
        (
            "remove a made-up id",
            "/team/members/not-an-id/remove".into(),
            vec![],
            [404, 404, 404],
        ),
        (
            "resend another team's invitation",
            format!("/team/invitations/{foreign_invitation}/resend"),
            vec![],
            [404, 404, 403],
        ),
        (
            "revoke another team's invitation",
            format!("/team/invitations/{foreign_invitation}/revoke"),
            vec![],
            [404, 404, 403],
        ),
    ];

    let mut failures = Vec::new();
    for (n, (action, path, fields, expected)) in cases.iter().enumerate() {
        for (actor, (name, visitor)) in [
            ("owner", &mut owner),
            ("admin", &mut admin),
            ("member", &mut member),
        ]
        .into_iter()
        .enumerate()
        {
            reset(
                &mut conn,
                team,
                [other_owner, other_admin, other_member],
                pending,
                &format!("p{n}{name}@example.com"),
            )
            .await;
            let other_before = fingerprint(&mut conn, other_team).await;
            let before = fingerprint(&mut conn, team).await;
            let email = format!("new{n}{name}@example.com");
            let fields: Vec<(&str, &str)> = fields
                .iter()
                .map(|(key, value)| (*key, if *value == "EMAIL" { email.as_str() } else { *value }))
                .collect();
            let page = visitor.submit("/teams", path, &fields).await;
            let changed = fingerprint(&mut conn, team).await != before;
            let want = expected[actor];
            if page.status.as_u16() != want || changed != (want == SEE_OTHER) {
                failures.push(format!(
                    "{name}: {action}: {} (want {want}), changed: {changed}",
                    page.status
                ));
            }
            assert_eq!(
                fingerprint(&mut conn, other_team).await,
                other_before,
                "{name}: {action}"
            );
        }
    }
    for (name, visitor, want) in [
        ("owner", &mut owner, OK),
        ("admin", &mut admin, OK),
        ("member", &mut member, 403),
    ] {
        let status = visitor.get("/team/activity").await.status.as_u16();
        if status != want {
            failures.push(format!("{name}: see the activity: {status} (want {want})"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The matrix's team as every case starts: the three actors, an owner, an admin and a member
/// to act on, and one pending invitation (`pending`, for `email`).
async fn reset(
    conn: &mut PgConnection,
    team: Uuid,
    [owner, admin, member]: [Uuid; 3],
    pending: Uuid,
    email: &str,
) {
    let mut tx = conn.begin().await.unwrap();
    for statement in [
        "DELETE FROM memberships WHERE team_id = $1 AND user_id NOT IN (SELECT id FROM users WHERE email IN
             ('owner@example.com', 'admin@example.com', 'member@example.com'))",
        "UPDATE memberships SET role = split_part(u.email, '@', 1) FROM users u
         WHERE team_id = $1 AND u.id = user_id",
        "DELETE FROM invitations WHERE team_id = $1",
    ] {
        sqlx::query(statement).bind(team).execute(&mut *tx).await.unwrap();
    }
    for (user, role) in [(owner, "owner"), (admin, "admin"), (member, "member")] {
        sqlx::query("INSERT INTO memberships (team_id, user_id, role) VALUES ($1, $2, $3)")
            .bind(team)
            .bind(user)
            .bind(role)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO invitations (id, team_id, email, role, token_hash, expires_at)
         VALUES ($1, $2, $3, 'member', sha256(gen_random_uuid()::text::bytea), now() + interval '1 day')",
    )
    .bind(pending)
    .bind(team)
    .bind(email)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_team_never_loses_its_last_owner() {
    let app = spawn_app().await;
    let mut yara = Visitor::signed_up(&app, "yara@example.com", PASSWORD).await;
    yara.submit("/teams", "/teams", &[("name", "Solo")]).await;
    let team = team_id(&app, "Solo").await;
    let me = user_id(&app, "yara@example.com").await.to_string();

    for (path, fields) in [
        (format!("/team/members/{me}/role"), vec![("role", "admin")]),
        (format!("/team/members/{me}/remove"), vec![]),
        ("/team/leave".to_owned(), vec![]),
    ] {
        let page = yara.submit("/team", &path, &fields).await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY, "{path}");
        assert!(
            page.body.contains(r#"role="alert">A team needs an owner"#),
            "{}",
            page.body
        );
    }

    // Two owners each stepping down at once: the second is the last owner then.
    let mut zed = Visitor::signed_up(&app, "zed@example.com", PASSWORD).await;
    join_as(&app, &mut zed, "zed@example.com", team, "owner").await;
    let them = user_id(&app, "zed@example.com").await.to_string();
    let (csrf_y, csrf_z) = (
        yara.get("/team").await.csrf_token(),
        zed.get("/team").await.csrf_token(),
    );
    let (demote_me, demote_them) = (
        format!("/team/members/{me}/role"),
        format!("/team/members/{them}/role"),
    );
    let statuses = race(
        (
            &mut yara,
            &demote_me,
            &[("role", "member"), ("csrf_token", &csrf_y)],
        ),
        (
            &mut zed,
            &demote_them,
            &[("role", "member"), ("csrf_token", &csrf_z)],
        ),
    )
    .await;
    assert_eq!(
        statuses,
        [StatusCode::SEE_OTHER, StatusCode::UNPROCESSABLE_ENTITY]
    );
    assert_eq!(owners(&app, team).await, 1);

    // Two owners demoting each other at once: the second is no longer an owner then (403).
    make_all_owners(&app, team).await;
    let statuses = race(
        (
            &mut yara,
            &demote_them,
            &[("role", "member"), ("csrf_token", &csrf_y)],
        ),
        (
            &mut zed,
            &demote_me,
            &[("role", "member"), ("csrf_token", &csrf_z)],
        ),
    )
    .await;
    assert_eq!(statuses, [StatusCode::SEE_OTHER, StatusCode::FORBIDDEN]);
    assert_eq!(owners(&app, team).await, 1);

    // One owner removes themselves twice at once: once, and an owner stays. (The second
    // request acts on the session's team as it finds it: still Solo, 404 as no longer a
    // member; or already her personal team, 422 as its last owner.)
    make_all_owners(&app, team).await;
    let csrf = yara.get("/team").await.csrf_token();
    let remove_me = format!("/team/members/{me}/remove");
    let mut twin = Visitor::new(&app);
    twin.cookies = yara.cookies.clone();
    let statuses = race(
        (&mut yara, &remove_me, &[("csrf_token", &csrf)]),
        (&mut twin, &remove_me, &[("csrf_token", &csrf)]),
    )
    .await;
    assert_eq!(statuses[0], StatusCode::SEE_OTHER, "{statuses:?}");
    assert!(
        [StatusCode::NOT_FOUND, StatusCode::UNPROCESSABLE_ENTITY].contains(&statuses[1]),
        "{statuses:?}"
    );
    assert_eq!(owners(&app, team).await, 1);
    // Yara is still signed in, now in her personal team.
    let dashboard = yara.get("/dashboard").await;
    assert_eq!(dashboard.status, StatusCode::OK);
    assert!(dashboard.body.contains("yara&#39;s team"), "{}", dashboard.body);
}

async fn make_all_owners(app: &TestApp, team: Uuid) {
    sqlx::query("UPDATE memberships SET role = 'owner' WHERE team_id = $1")
        .bind(team)
        .execute(&mut db(app).await)
        .await
        .unwrap();
}

async fn owners(app: &TestApp, team: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM memberships WHERE team_id = $1 AND role = 'owner'")
        .bind(team)
        .fetch_one(&mut db(app).await)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_removed_member_stays_signed_in_without_the_team_and_the_log_records_it() {
    let app = spawn_app().await;
    let mut boss = Visitor::signed_up(&app, "boss@example.com", PASSWORD).await;
    boss.submit("/teams", "/teams", &[("name", "Umbrella")]).await;
    let team = team_id(&app, "Umbrella").await;
    let mut cleo = Visitor::signed_up(&app, "cleo@example.com", PASSWORD).await;
    join_as(&app, &mut cleo, "cleo@example.com", team, "member").await;
    let mut dora = Visitor::signed_up(&app, "dora@example.com", PASSWORD).await;
    join_as(&app, &mut dora, "dora@example.com", team, "member").await;
    // Dora leaves her personal team's ownership behind: her only team is then Umbrella.
    sqlx::query("DELETE FROM teams WHERE name = 'dora''s team'")
        .execute(&mut db(&app).await)
        .await
        .unwrap();

    let cleo_id = user_id(&app, "cleo@example.com").await;
    let promoted = boss
        .submit(
            "/team",
            &format!("/team/members/{cleo_id}/role"),
            &[("role", "admin")],
        )
        .await;
    assert_eq!(promoted.location(), "/team");
    let dora_id = user_id(&app, "dora@example.com").await;
    let removed = boss
        .submit("/team", &format!("/team/members/{dora_id}/remove"), &[])
        .await;
    assert_eq!(removed.location(), "/team");
    // Still signed in, in a new personal team; Umbrella is gone from her teams.
    let dashboard = dora.get("/dashboard").await;
    assert_eq!(dashboard.status, StatusCode::OK);
    assert!(dashboard.body.contains("dora&#39;s team"), "{}", dashboard.body);
    assert!(!dora.get("/teams").await.body.contains("Umbrella"));
    assert!(!dora.get("/team").await.body.contains("boss@example.com"));

    let left = cleo.submit("/team", "/team/leave", &[]).await;
    assert_eq!(left.location(), "/teams");
    assert!(!cleo.get("/teams").await.body.contains("Umbrella"));

    assert_eq!(
        activity_of(&app, "Umbrella").await,
        [
            "member.role_changed cleo@example.com member → admin 127.0.0.1",
            "member.removed dora@example.com 127.0.0.1",
            "member.left 127.0.0.1",
        ]
    );
    // Append-only: an update may only erase personal data.
    let update = sqlx::query("UPDATE team_audit_log SET action = 'x'")
        .execute(&mut db(&app).await)
        .await;
    assert!(update.is_err(), "{update:?}");
}

#[tokio::test]
async fn the_activity_page_pages_newest_first() {
    let app = spawn_app().await;
    let mut boss = Visitor::signed_up(&app, "eli@example.com", PASSWORD).await;
    boss.submit("/teams", "/teams", &[("name", "Busy")]).await;
    let team = team_id(&app, "Busy").await;
    sqlx::query(
        "INSERT INTO team_audit_log (team_id, action, subject)
         SELECT $1, 'member.removed', 'user' || n || '@example.com' FROM generate_series(1, 60) AS n",
    )
    .bind(team)
    .execute(&mut db(&app).await)
    .await
    .unwrap();
    let first = boss.get("/team/activity").await;
    assert!(first.body.contains("user60@example.com") && !first.body.contains("user10@example.com"));
    assert_eq!(first.body.matches("class=\"activity-row\"").count(), 50);
    let start = first
        .body
        .find("/team/activity?before=")
        .expect("a link to older entries");
    let older: String = first.body[start..].chars().take_while(|c| *c != '"').collect();
    let second = boss.get(&older).await;
    assert_eq!(second.body.matches("class=\"activity-row\"").count(), 10);
    assert!(second.body.contains("user1@example.com") && !second.body.contains("user60@"));
    assert!(!second.body.contains("?before="), "no older page");
    assert_eq!(
        boss.get("/team/activity?before=junk").await.status,
        StatusCode::BAD_REQUEST
    );
}
