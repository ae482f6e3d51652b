//! The email outbox through a real SMTP conversation: every email arrives exactly once
//! although the server asks to retry every third message, a refused recipient ends failed
//! without endless retries, and `keel send-test-email` reports what the server said.

use std::{collections::HashMap, time::Duration};

use keel::{
    jobs::{self, Backoff, Schedule, Worker, WorkerConfig},
    mail::{self, Email, Mailer, Rendered},
};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::{
    helpers::{migrated_database, run_keel_async, wait_until},
    smtp_server::{Behaviour, FakeSmtp},
};

struct Notice {
    number: usize,
}

impl Email for Notice {
    fn render(&self) -> anyhow::Result<Rendered> {
        Ok(Rendered {
            subject: format!("Notice {}", self.number),
            text: format!("Notice number {}.", self.number),
            html: format!("<p>Notice number {}.</p>", self.number),
        })
    }
}

const BOUNCE: &str = "bounce@example.com";

/// A worker running keel's own jobs with short retry delays, until the guard drops.
fn start_delivery(pool: &sqlx::PgPool, mailer: Mailer) -> DropGuard {
    let config = WorkerConfig {
        backoff: Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(200),
        },
        ..WorkerConfig::default()
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(
        Worker::new(pool.clone(), mailer, jobs::registry(), Schedule::new(), config).run(shutdown.clone()),
    );
    shutdown.drop_guard()
}

#[tokio::test]
async fn fifty_emails_arrive_exactly_once_through_a_server_that_asks_to_retry() {
    let smtp = FakeSmtp::start(Behaviour {
        fail_every_nth_data: 3,
        refuse: vec![BOUNCE.to_owned()],
        ..Behaviour::default()
    })
    .await;
    let (_database, pool) = migrated_database().await;
    let mailer = Mailer::new("keel <noreply@example.com>", Some(&smtp.url())).unwrap();

    let mut tx = pool.begin().await.unwrap();
    for number in 0..50 {
        let to = if number == 7 {
            BOUNCE.to_owned()
        } else {
            format!("user{number}@example.com")
        };
        let queued = mail::enqueue(
            &mut tx,
            &mailer,
            &to,
            &format!("notice:{number}"),
            &Notice { number },
        )
        .await;
        assert!(queued.unwrap());
    }
    // The same idempotency key again is not a second email.
    assert!(
        !mail::enqueue(
            &mut tx,
            &mailer,
            "user1@example.com",
            "notice:1",
            &Notice { number: 1 }
        )
        .await
        .unwrap()
    );
    tx.commit().await.unwrap();

    let _worker = start_delivery(&pool, mailer);

    wait_until("emails pending or jobs left", Duration::from_secs(30), || async {
        let (pending, jobs_left): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM emails WHERE status = 'pending'), (SELECT count(*) FROM jobs)",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        match (pending, jobs_left) {
            (0, 0) => Ok(()),
            state => Err(format!("{state:?}")),
        }
    })
    .await;

    let statuses: HashMap<String, i64> =
        sqlx::query_as("SELECT status, count(*) FROM emails GROUP BY status")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(
        statuses,
        HashMap::from([("sent".into(), 49), ("failed".into(), 1)])
    );
    let (recipient, error): (String, String) =
        sqlx::query_as("SELECT recipient, last_error FROM emails WHERE status = 'failed'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(recipient, BOUNCE);
    assert!(error.contains("550"), "{error}");

    // Exactly once: the server accepted each sent email one time, under its stored Message-ID.
    let accepted = smtp.accepted();
    assert_eq!(accepted.len(), 49, "accepted {} messages", accepted.len());
    let mut sent_ids: Vec<String> = sqlx::query_scalar("SELECT message_id FROM emails WHERE status = 'sent'")
        .fetch_all(&pool)
        .await
        .unwrap();
    let mut accepted_ids: Vec<String> = accepted.iter().map(|a| a.message_id.clone()).collect();
    sent_ids.sort();
    accepted_ids.sort();
    assert_eq!(accepted_ids, sent_ids);
    assert!(
        smtp.failed_data_commands() >= 16,
        "the server refused {} times",
        smtp.failed_data_commands()
    );
    let notice = accepted
        .iter()
        .find(|a| a.recipients == ["user3@example.com"])
        .unwrap();
    assert!(notice.data.contains("Subject: Notice 3"), "{}", notice.data);
    assert!(
        notice.data.contains("multipart/alternative"),
        "text and HTML parts"
    );
}

#[tokio::test]
async fn a_setup_problem_is_retried_until_fixed_not_marked_failed() {
    let smtp = FakeSmtp::start(Behaviour::default()).await;
    smtp.set_require_auth(true); // e.g. a rotated SMTP password: 530 for every message
    let (_database, pool) = migrated_database().await;
    let mailer = Mailer::new("keel <noreply@example.com>", Some(&smtp.url())).unwrap();
    let mut conn = pool.acquire().await.unwrap();
    mail::enqueue(
        &mut conn,
        &mailer,
        "user@example.com",
        "setup:1",
        &Notice { number: 1 },
    )
    .await
    .unwrap();

    let _worker = start_delivery(&pool, mailer);

    wait_until("three attempts", Duration::from_secs(10), || async {
        let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM jobs")
            .fetch_one(&pool)
            .await
            .unwrap();
        if attempts >= 3 {
            Ok(())
        } else {
            Err(format!("{attempts} attempts"))
        }
    })
    .await;
    let (status, error): (String, String) = sqlx::query_as("SELECT status, last_error FROM emails")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "pending", "a 530 is about our setup, not the recipient");
    assert!(error.contains("530"), "{error}");

    smtp.set_require_auth(false); // the operator fixes SMTP_URL
    wait_until("the email sent", Duration::from_secs(10), || async {
        let status: String = sqlx::query_scalar("SELECT status FROM emails")
            .fetch_one(&pool)
            .await
            .unwrap();
        if status == "sent" { Ok(()) } else { Err(status) }
    })
    .await;
    assert_eq!(smtp.accepted().len(), 1);
}

async fn send_test_email(smtp_url: &str, to: &str) -> (i32, String) {
    let env = vec![
        ("SMTP_URL", smtp_url.to_owned()),
        ("EMAIL_FROM", "Acme <hello@acme.test>".to_owned()),
        ("BASE_URL", "https://app.acme.test".to_owned()),
        ("LOG_FORMAT", "json".to_owned()),
    ];
    run_keel_async(&["send-test-email", to], env).await
}

#[tokio::test]
async fn send_test_email_reports_what_the_smtp_server_said() {
    let smtp = FakeSmtp::start(Behaviour {
        refuse: vec![BOUNCE.to_owned()],
        ..Behaviour::default()
    })
    .await;
    let (code, output) = send_test_email(&smtp.url(), "ops@acme.test").await;
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("test email to ops@acme.test accepted"),
        "{output}"
    );
    let accepted = smtp.accepted();
    assert_eq!(accepted.len(), 1);
    assert!(accepted[0].data.contains("Subject: Your SMTP settings work"));
    assert!(accepted[0].data.contains("https://app.acme.test/"));

    let (code, output) = send_test_email(&smtp.url(), BOUNCE).await;
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("550"), "{output}");

    // Nothing listens on port 1: a clear error, not a hang or a panic.
    let (code, output) = send_test_email("smtp://127.0.0.1:1", "ops@acme.test").await;
    assert_eq!(code, 1, "{output}");
    assert!(!output.contains("panicked"), "{output}");
}
