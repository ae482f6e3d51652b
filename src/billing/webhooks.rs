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
        // Stripe's timestamps are never before 1970; far earlier ones PostgreSQL cannot store.
        if self.created < 0 {
            return Err(NotAnEvent::Malformed);
        }
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
    // PostgreSQL text cannot hold NUL (JSON can, as `\u0000`).
    let has_nul = |text: &str| text.contains('\0');
    if has_nul(&envelope.kind) || envelope.api_version.as_deref().is_some_and(has_nul) {
        return Ok(Err(NotAnEvent::Malformed));
    }
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

    fn fixture_event(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/stripe/events/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn every_fixture_event_parses_in_both_api_shapes() {
        for dir in ["", "legacy_2025-02-24.acacia/"] {
            let folder = format!(
                "{}/tests/fixtures/stripe/events/{dir}",
                env!("CARGO_MANIFEST_DIR")
            );
            let mut seen = 0;
            for entry in std::fs::read_dir(&folder).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                if !name.ends_with(".json") || name.starts_with('_') {
                    continue;
                }
                let envelope = Envelope::parse(&fixture_event(&format!("{dir}{name}"))).unwrap();
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

/// Properties of `Envelope::parse` over hostile bodies (it runs only after the signature
/// check, but a leaked or rotated-out secret makes its input anyone's).
#[cfg(test)]
mod properties {
    use proptest::{collection::vec, prelude::*, sample::Index};
    use serde_json::{Map, Value, json};

    use super::*;
    use crate::billing::events::properties::json_value;

    /// What an accepted envelope always satisfies.
    fn check_invariants(envelope: &Envelope) -> Result<(), TestCaseError> {
        let rest = envelope.id.strip_prefix("evt_");
        prop_assert!(envelope.id.len() <= 255, "{:?}", envelope.id);
        prop_assert!(
            rest.is_some_and(
                |rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            ),
            "{:?}",
            envelope.id
        );
        prop_assert!(!envelope.kind.is_empty() && envelope.kind.len() <= 255);
        prop_assert!(matches!(envelope.object.as_deref(), None | Some("event")));
        Ok(())
    }

    fn id_tail() -> impl Strategy<Value = String> {
        let alphabet: Vec<char> = ('a'..='z')
            .chain('A'..='Z')
            .chain('0'..='9')
            .chain(['_'])
            .collect();
        vec(prop::sample::select(alphabet), 1..251).prop_map(String::from_iter)
    }

    /// An event id: mostly valid, or a near miss.
    fn id() -> impl Strategy<Value = Value> {
        prop_oneof![
            3 => id_tail().prop_map(|tail| Value::from(format!("evt_{tail}"))),
            1 => id_tail().prop_map(|tail| Value::from(format!("evt_{tail}{}", "x".repeat(255)))),
            1 => vec(any::<char>(), 0..12)
                .prop_map(|tail| Value::from(format!("evt_{}", String::from_iter(tail)))),
            1 => json_value(),
        ]
    }

    fn kind() -> impl Strategy<Value = Value> {
        prop_oneof![
            3 => vec(any::<char>(), 1..40).prop_map(|c| Value::from(String::from_iter(c))),
            1 => Just(Value::from("")),
            1 => Just(Value::from("x".repeat(256))),
            1 => json_value(),
        ]
    }

    /// An object with the envelope's fields, each one valid, wrong or missing, and others.
    fn envelope_json() -> impl Strategy<Value = Value> {
        (
            proptest::option::of(id()),
            proptest::option::of(kind()),
            proptest::option::of(prop_oneof![any::<i64>().prop_map(Value::from), json_value()]),
            proptest::option::of(prop_oneof![
                Just(Value::from("event")),
                Just(Value::from("v2.core.event")),
                Just(Value::Null),
                json_value()
            ]),
            proptest::option::of(prop_oneof![Just(Value::from("2025-03-31.basil")), json_value()]),
            proptest::option::of(prop_oneof![any::<bool>().prop_map(Value::from), json_value()]),
            vec((id_tail(), json_value()), 0..3),
        )
            .prop_map(|(id, kind, created, object, api_version, livemode, extra)| {
                let mut map = Map::new();
                for (key, value) in extra {
                    map.insert(format!("x_{key}"), value);
                }
                for (key, value) in [
                    ("id", id),
                    ("type", kind),
                    ("created", created),
                    ("object", object),
                    ("api_version", api_version),
                    ("livemode", livemode),
                ] {
                    if let Some(value) = value {
                        map.insert(key.to_owned(), value);
                    }
                }
                Value::Object(map)
            })
    }

    proptest! {
        #![proptest_config(crate::proptest_config(512))]

        /// Any bytes at all: an answer, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(body in vec(any::<u8>(), 0..512)) {
            if let Ok(envelope) = Envelope::parse(&body) {
                check_invariants(&envelope)?;
            }
        }

        /// Objects with every field valid, wrong or missing: whatever is accepted satisfies
        /// the envelope's invariants, and a well-formed event is accepted as written.
        #[test]
        fn accepted_envelopes_satisfy_the_invariants(event in envelope_json()) {
            let body = serde_json::to_vec(&event).unwrap();
            match Envelope::parse(&body) {
                Ok(envelope) => {
                    check_invariants(&envelope)?;
                    prop_assert_eq!(event["id"].as_str(), Some(envelope.id.as_str()));
                    prop_assert_eq!(event["type"].as_str(), Some(envelope.kind.as_str()));
                    prop_assert_eq!(event["created"].as_i64(), Some(envelope.created));
                    prop_assert_eq!(
                        event.get("api_version").and_then(Value::as_str),
                        envelope.api_version.as_deref()
                    );
                    prop_assert_eq!(
                        event.get("livemode").and_then(Value::as_bool).unwrap_or(false),
                        envelope.livemode
                    );
                }
                Err(_) => {
                    let id = event["id"].as_str().unwrap_or_default();
                    let id_ok = id.len() <= 255
                        && id.strip_prefix("evt_").is_some_and(|rest| {
                            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                        });
                    let kind_ok = event["type"].as_str().is_some_and(|k| !k.is_empty() && k.len() <= 255);
                    let object_ok =
                        matches!(event.get("object"), None | Some(Value::Null)) || event["object"] == "event";
                    let well_formed = id_ok
                        && kind_ok
                        && object_ok
                        && event["created"].as_i64().is_some()
                        && matches!(event.get("api_version"), None | Some(Value::Null | Value::String(_)))
                        && matches!(event.get("livemode"), None | Some(Value::Bool(_)));
                    prop_assert!(!well_formed, "{} refused", event);
                }
            }
        }

        /// A real event with any one byte changed, removed or added: no panic, and whatever
        /// is still accepted satisfies the invariants.
        #[test]
        fn mutated_events_never_panic(
            tail in id_tail(),
            at in any::<Index>(),
            byte in any::<u8>(),
            how in 0..3_u8,
        ) {
            let event = json!({
                "id": format!("evt_{tail}"), "object": "event", "type": "invoice.paid",
                "created": 1_735_689_600, "api_version": "2025-03-31.basil", "livemode": false,
                "data": { "object": { "id": "in_1", "subscription": "sub_1" } },
            });
            let mut body = serde_json::to_vec(&event).unwrap();
            let at = at.index(body.len());
            match how {
                0 => body[at] = byte,
                1 => { body.remove(at); }
                _ => body.insert(at, byte),
            }
            if let Ok(envelope) = Envelope::parse(&body) {
                check_invariants(&envelope)?;
            }
        }
    }

    /// Deep nesting is refused in the envelope's own fields (serde_json's recursion limit)
    /// and skipped without recursing in unknown ones: never a stack overflow.
    #[test]
    fn deep_nesting_never_overflows_the_stack() {
        for depth in [1, 1_000, 100_000] {
            let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            let unknown = format!(r#"{{"id":"evt_1","type":"x","created":1,"extra":{nested}}}"#);
            assert!(Envelope::parse(unknown.as_bytes()).is_ok(), "{depth}");
            let known = format!(r#"{{"id":"evt_1","type":"x","created":1,"object":{nested}}}"#);
            assert_eq!(
                Envelope::parse(known.as_bytes()).unwrap_err(),
                NotAnEvent::Malformed,
                "{depth}"
            );
        }
    }
}
