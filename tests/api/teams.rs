//! Several teams per user and the session's current team (SPEC, "Teams (B2B)").

use reqwest::StatusCode;

use crate::{
    helpers::spawn_app,
    visitor::{Visitor, field_value},
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
