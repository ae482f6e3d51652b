//! Receiving Stripe events: what a verified delivery must contain, and storing it with the
//! job that processes it.
//!
//! Only the envelope is read here (`id`, `type`, `created`, `api_version`, `livemode`,
//! `object`), leniently: unknown fields are ignored, so a newer Stripe API version never
//! breaks ingestion. The `data.object` inside is read by processing, per event type.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::{error::Result, jobs};

/// The envelope of a Stripe event (any API version).
#[derive(Debug, Deserialize)]
pub struct Envelope {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created: i64,
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub livemode: bool,
    /// `event` for the snapshot events keel subscribes to; `v2.core.event` for thin events.
    #[serde(default)]
    pub object: Option<String>,
}

/// Why a verified body is still not an event keel can store.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotAnEvent {
    #[error("the body is not a JSON Stripe event")]
    Malformed,
    #[error("thin (v2) events are not supported: subscribe this endpoint to snapshot events")]
    ThinEvent,
    #[error("the event id is not an evt_ id")]
    BadId,
}

impl Envelope {
    pub fn parse(body: &[u8]) -> Result<Self, NotAnEvent> {
        let envelope: Envelope = serde_json::from_slice(body).map_err(|_| NotAnEvent::Malformed)?;
        match envelope.object.as_deref() {
            Some("event") | None => {}
            Some(_) => return Err(NotAnEvent::ThinEvent),
        }
        let id_ok = envelope.id.len() <= 255
            && envelope.id.strip_prefix("evt_").is_some_and(|rest| {
                !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            });
        if !id_ok {
            return Err(NotAnEvent::BadId);
        }
        if envelope.kind.is_empty() || envelope.kind.len() > 255 {
            return Err(NotAnEvent::Malformed);
        }
        Ok(envelope)
    }

    fn created_at(&self) -> Result<OffsetDateTime, NotAnEvent> {
        OffsetDateTime::from_unix_timestamp(self.created).map_err(|_| NotAnEvent::Malformed)
    }
}

/// What became of a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// First time seen: stored, and its processing queued.
    New,
    /// Already stored by an earlier delivery: nothing done.
    Duplicate,
}

impl Stored {
    pub fn as_str(self) -> &'static str {
        match self {
            Stored::New => "stored",
            Stored::Duplicate => "duplicate",
        }
    }
}

/// Processes one stored event (see `billing::events`). Queued with the event.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProcessStripeEvent {
    pub event_id: String,
}

/// Stores `envelope` with `body` (the raw, verified bytes) and queues its processing,
/// atomically. A second delivery of the same event id changes nothing.
pub async fn store(
    db: &PgPool,
    waker: &jobs::Waker,
    envelope: &Envelope,
    body: &[u8],
) -> Result<Result<Stored, NotAnEvent>> {
    let Ok(payload) = std::str::from_utf8(body) else {
        return Ok(Err(NotAnEvent::Malformed));
    };
    let created = match envelope.created_at() {
        Ok(created) => created,
        Err(problem) => return Ok(Err(problem)),
    };
    let job = jobs::NewJob::of(&ProcessStripeEvent {
        event_id: envelope.id.clone(),
    })?;
    // One statement, so atomic without a transaction: the event and its job are stored
    // together or not at all, in one round trip. A duplicate id inserts neither and returns
    // no row. `quiet` turns the jobs trigger's NOTIFY off for this statement's transaction:
    // with it, concurrent deliveries would commit one at a time (see jobs::Waker); the
    // workers are woken after the commit instead.
    let enqueued = sqlx::query_scalar!(
        r#"WITH quiet AS (SELECT set_config('keel.jobs_notify', 'off', true)),
                event AS (
               INSERT INTO stripe_events (id, type, api_version, livemode, created, payload)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (id) DO NOTHING
               RETURNING id)
           INSERT INTO jobs (kind, payload, max_attempts)
           SELECT $7, $8, $9 FROM event, quiet
           RETURNING id"#,
        envelope.id,
        envelope.kind,
        envelope.api_version,
        envelope.livemode,
        created,
        payload,
        job.kind,
        job.payload,
        job.max_attempts,
    )
    .fetch_optional(db)
    .await?;
    if enqueued.is_none() {
        return Ok(Ok(Stored::Duplicate));
    }
    waker.wake();
    Ok(Ok(Stored::New))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_event(name: &str) -> Vec<u8> {
        let path = format!("{}/../shared/stripe/events/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn every_shared_event_parses_in_both_api_shapes() {
        for dir in ["", "legacy_2025-02-24.acacia/"] {
            let folder = format!("{}/../shared/stripe/events/{dir}", env!("CARGO_MANIFEST_DIR"));
            let mut seen = 0;
            for entry in std::fs::read_dir(&folder).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                if !name.ends_with(".json") || name.starts_with('_') {
                    continue;
                }
                let envelope = Envelope::parse(&shared_event(&format!("{dir}{name}"))).unwrap();
                assert_eq!(format!("{}.json", envelope.kind), name);
                assert!(envelope.id.starts_with("evt_"));
                seen += 1;
            }
            assert!(seen >= 2, "no events in {folder}");
        }
    }

    #[test]
    fn what_is_not_a_snapshot_event_is_refused() {
        assert_eq!(Envelope::parse(b"not json").unwrap_err(), NotAnEvent::Malformed);
        assert_eq!(Envelope::parse(b"{}").unwrap_err(), NotAnEvent::Malformed);
        assert_eq!(
            Envelope::parse(br#"{"id":"evt_1","object":"v2.core.event","type":"x","created":1}"#)
                .unwrap_err(),
            NotAnEvent::ThinEvent
        );
        for id in ["cus_1", "evt_", "evt_1'; DROP TABLE", ""] {
            let body = format!(r#"{{"id":"{id}","object":"event","type":"x","created":1}}"#);
            assert_eq!(
                Envelope::parse(body.as_bytes()).unwrap_err(),
                NotAnEvent::BadId,
                "{id}"
            );
        }
        let unknown =
            br#"{"id":"evt_9","object":"event","type":"brand.new_type","created":1,"extra":{"a":1}}"#;
        assert_eq!(Envelope::parse(unknown).unwrap().kind, "brand.new_type");
    }
}
