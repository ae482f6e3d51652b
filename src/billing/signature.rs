//! The `Stripe-Signature` check of webhook deliveries, with the semantics of Stripe's official
//! libraries (stripe-node, -python, -ruby, -go).
//!
//! The webhook endpoint is public and unauthenticated, so this check is the only thing standing
//! between anyone on the internet and keel's subscription state. It is pure (the caller passes
//! the raw body and the clock) so it is tested against the cases transcribed from the official
//! libraries' own test suites (`tests/fixtures/stripe/signature_cases.json`).
//!
//! A header looks like `t=1735689600,v1=<hex>,v1=<hex>,v0=<hex>`. A delivery is accepted when
//! - every comma-separated element is `key=value`, with exactly one `t` made of ASCII digits;
//! - some `v1` equals the lower-case hex of HMAC-SHA256(secret, `"<t>.<raw body>"`) for some
//!   configured secret. Every `v1` counts, not only the last: while a secret is being rolled
//!   Stripe sends one per active secret (async-stripe 1.0 checks only the last and breaks
//!   rotation). Other schemes (`v0`) and unknown keys are ignored. The secret is the whole
//!   `whsec_…` string used verbatim as key bytes (no trimming, no base64 decoding). Tags are
//!   compared in constant time (`Mac::verify_slice`);
//! - `now - t <= tolerance`. Only too OLD timestamps are refused, as all four libraries do
//!   (`future_timestamp_1h`): the window is against replay of captured deliveries, and a future
//!   `t` carries Stripe's own signature, so it can only mean Stripe's clock is ahead of ours.
//!
//! The signature is checked before the age, as node/python/ruby do, so
//! [`SignatureError::TimestampOutsideTolerance`] always means "a genuine but stale delivery"
//! (a replay, or our clock is off), which is worth alerting on differently from forgeries.
//!
//! Where the official libraries disagree (`implementation_defined` in the cases), keel chooses:
//! - `exactly_300s_old_construct_event`: accepted. All four compare with a strict `>`, and the
//!   clock here is whole seconds as in node, so an age equal to the tolerance passes.
//! - `whitespace_after_comma`: rejected. Only ruby splits on `,\s*`; node/python/go do not, and
//!   Stripe sends no spaces. An element ` v1=…` is an unknown key, so the header has no `v1`.
//! - `uppercase_hex_signature`: rejected. node/python/ruby compare lower-case hex strings, only go
//!   hex-decodes case-insensitively; Stripe sends lower case. A `v1` that is not 64 lower-case hex
//!   digits is never a match.
//! - `negative_tolerance_minus_10`: rejected (python/ruby/go; node silently disables the check).
//!   The tolerance is a `Duration`, so a negative one cannot even be configured.
//! - `zero_tolerance_verify_header`: rejected (ruby/go). A zero tolerance means "no age at all",
//!   never "no check": node and python treat 0 as off, which turns a typo into no replay defence.
//!
//! Choices where no case decides and keel is the strictest of the libraries: an element without
//! `=` (including an empty one) makes the header malformed (as in go); a second `t` is malformed
//! (python keeps the first, node and go the last); `t` must be plain digits (no sign), and is
//! signed exactly as sent (the libraries re-print the parsed number: the same for anything
//! Stripe sends, which has no leading zeros).
//! Empty secrets are dropped by [`Verifier::new`]: an unset variable must not become a key
//! everyone knows. There is no "no age check" mode; tests that need one use `Duration::MAX`.
//!
//! Not checked here: the body being JSON, thin (`v2.core.event`) events and stripe-go's
//! API-version check. Those cases reject in the libraries' `construct_event` *after* a valid
//! signature, and belong to event parsing.

use std::time::Duration;

use hmac::Mac as _;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::Sha256;

type Hmac = hmac::Hmac<Sha256>;

/// How old a delivery may be: the official libraries' default for `construct_event`.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Why a delivery was refused. Every message is safe to log: none contains a secret, the
/// expected signature or any part of the (attacker-controlled) header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no Stripe-Signature header")]
    Missing,
    #[error("malformed Stripe-Signature header: {0}")]
    Malformed(&'static str),
    #[error("Stripe-Signature header has no v1 signature")]
    NoV1,
    #[error("no v1 signature matches the payload")]
    NoMatch,
    #[error("webhook timestamp outside the tolerance zone (replayed delivery or clock skew)")]
    TimestampOutsideTolerance,
}

/// Checks `Stripe-Signature` headers against one or more endpoint secrets (several during a
/// rotation). `Debug` redacts the secrets.
#[derive(Clone, Debug)]
pub struct Verifier {
    secrets: Vec<SecretString>,
    tolerance: Duration,
}

impl Verifier {
    /// Secrets are used verbatim (the whole `whsec_…` string); empty ones are ignored, and so
    /// are ones of NUL characters only: HMAC pads a short key with zero bytes, so those are the
    /// empty key, with which anyone can sign. A zero `tolerance` accepts only `t >= now`; it
    /// never disables the age check.
    pub fn new(secrets: impl IntoIterator<Item = impl AsRef<str>>, tolerance: Duration) -> Self {
        let secrets = secrets
            .into_iter()
            .filter(|secret| secret.as_ref().bytes().any(|byte| byte != 0))
            .map(|secret| SecretString::from(secret.as_ref()))
            .collect();
        Self { secrets, tolerance }
    }

    /// `Ok(t)`, the header's timestamp, when some `v1` in `header` is the signature of
    /// `"<t>.<body>"` under any configured secret and `now - t` (unix seconds) is within the
    /// tolerance. `header` is the raw header value; `body` the raw, unparsed request body. With
    /// no secret configured nothing matches.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8], now: i64) -> Result<i64, SignatureError> {
        let header = match header {
            None | Some([]) => return Err(SignatureError::Missing),
            Some(bytes) => std::str::from_utf8(bytes).map_err(|_| SignatureError::Malformed("not UTF-8"))?,
        };
        let parsed = Header::parse(header)?;
        let tags: Vec<[u8; 32]> = parsed.v1.iter().filter_map(|v1| decode_tag(v1)).collect();
        let matches = self.secrets.iter().any(|secret| {
            let mac = mac(
                secret.expose_secret().as_bytes(),
                &[parsed.t.as_bytes(), b".", body],
            );
            tags.iter().any(|tag| mac.clone().verify_slice(tag).is_ok())
        });
        if !matches {
            return Err(SignatureError::NoMatch);
        }
        let age = i128::from(now) - i128::from(parsed.timestamp);
        if age > i128::from(self.tolerance.as_secs()) {
            return Err(SignatureError::TimestampOutsideTolerance);
        }
        Ok(parsed.timestamp)
    }
}

/// The parts of a header that matter: `t` (as sent and parsed) and every `v1`.
#[derive(Debug)]
struct Header<'a> {
    t: &'a str,
    timestamp: i64,
    v1: Vec<&'a str>,
}

impl<'a> Header<'a> {
    fn parse(header: &'a str) -> Result<Self, SignatureError> {
        let mut t = None;
        let mut v1 = Vec::new();
        for element in header.split(',') {
            let (key, value) = element
                .split_once('=')
                .ok_or(SignatureError::Malformed("element without '='"))?;
            match key {
                "t" if t.is_some() => return Err(SignatureError::Malformed("more than one t")),
                "t" => t = Some(value),
                "v1" => v1.push(value),
                _ => {} // v0, and whatever Stripe may add later
            }
        }
        let t = t.ok_or(SignatureError::Malformed("no t"))?;
        let timestamp = Some(t)
            .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or(SignatureError::Malformed("t is not a unix timestamp"))?;
        if v1.is_empty() {
            return Err(SignatureError::NoV1);
        }
        Ok(Self { t, timestamp, v1 })
    }
}

/// A `v1` value as tag bytes: exactly 64 lower-case hex digits, like the libraries that compare
/// hex strings (anything else can never match).
fn decode_tag(v1: &str) -> Option<[u8; 32]> {
    if !v1.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut tag = [0; 32];
    hex::decode_to_slice(v1, &mut tag).ok()?;
    Some(tag)
}

/// HMAC-SHA256 of the concatenated `parts`.
fn mac(key: &[u8], parts: &[&[u8]]) -> Hmac {
    let mut mac = <Hmac as hmac::KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    for part in parts {
        mac.update(part);
    }
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const CASES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/stripe/signature_cases.json"
    );
    const NOW: i64 = 1_735_689_600;

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Outcome {
        Accept,
        Reject,
    }

    /// keel's answer where the official libraries disagree (why: the module docs).
    const PINNED: &[(&str, Outcome)] = &[
        ("exactly_300s_old_construct_event", Outcome::Accept),
        ("whitespace_after_comma", Outcome::Reject),
        ("uppercase_hex_signature", Outcome::Reject),
        ("negative_tolerance_minus_10", Outcome::Reject),
        ("zero_tolerance_verify_header", Outcome::Reject),
    ];

    /// Why a case the libraries' `construct_event` rejects after a VALID signature is rejected.
    #[derive(Clone, Copy, Debug)]
    enum AfterSignature {
        /// The body is not JSON: event parsing fails.
        NotJson,
        /// A thin `v2.core.event` given to the snapshot-event parser.
        ThinEvent,
        /// stripe-go's API-version check; node/python/ruby accept, and keel reads old and new
        /// event shapes instead of refusing them.
        GoApiVersion,
    }

    const AFTER_SIGNATURE: &[(&str, AfterSignature)] = &[
        ("invalid_json_payload_valid_signature", AfterSignature::NotJson),
        (
            "thin_event_v2_payload_to_construct_event",
            AfterSignature::ThinEvent,
        ),
        ("go_api_version_legacy_mismatch", AfterSignature::GoApiVersion),
        (
            "go_api_version_release_train_mismatch",
            AfterSignature::GoApiVersion,
        ),
    ];

    fn sign(secret: &str, t: &str, body: &[u8]) -> String {
        hex::encode(
            mac(secret.as_bytes(), &[t.as_bytes(), b".", body])
                .finalize()
                .into_bytes(),
        )
    }

    fn str_of<'a>(case: &'a Value, key: &str) -> &'a str {
        case[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing in {case}"))
    }

    /// The header as `tests/fixtures/stripe/README.md` describes it; `None` when absent.
    fn build_header(case: &Value, name: &str, now: i64, payload: &str) -> Option<String> {
        let header = &case["header"];
        if header["absent"] == true {
            return None;
        }
        if let Some(literal) = header["literal"].as_str() {
            return Some(literal.to_owned());
        }
        let recipe = header["recipe"]
            .as_object()
            .unwrap_or_else(|| panic!("{name}: no recipe"));
        for key in recipe.keys() {
            let known = [
                "timestamp_offset",
                "timestamp_absolute",
                "timestamp_literal",
                "omit_t",
                "separator",
                "schemes",
            ];
            assert!(known.contains(&key.as_str()), "{name}: unknown recipe key {key}");
        }
        let t = match (
            recipe.get("timestamp_offset").and_then(Value::as_i64),
            recipe.get("timestamp_absolute").and_then(Value::as_i64),
            recipe.get("timestamp_literal").and_then(Value::as_str),
        ) {
            (Some(offset), None, None) => (now + offset).to_string(),
            (None, Some(absolute), None) => absolute.to_string(),
            (None, None, Some(literal)) => literal.to_owned(),
            other => panic!("{name}: timestamp recipe {other:?}"),
        };
        let secret = str_of(case, "secret");
        let mut elements = Vec::new();
        if recipe.get("omit_t") != Some(&Value::Bool(true)) {
            elements.push(format!("t={t}"));
        }
        for scheme in recipe["schemes"].as_array().into_iter().flatten() {
            let scheme = scheme
                .as_str()
                .unwrap_or_else(|| panic!("{name}: scheme {scheme}"));
            let (key, kind) = scheme
                .split_once(':')
                .unwrap_or_else(|| panic!("{name}: {scheme}"));
            let value = match kind.split_once('=') {
                None if kind == "valid" => sign(secret, &t, payload.as_bytes()),
                None if kind == "valid_upper" => sign(secret, &t, payload.as_bytes()).to_uppercase(),
                Some(("valid_secret", other)) => sign(other, &t, payload.as_bytes()),
                Some(("literal", text)) => text.to_owned(),
                Some(("hex_of_ascii", text)) => hex::encode(text),
                _ => panic!("{name}: unknown scheme kind {kind}"),
            };
            elements.push(format!("{key}={value}"));
        }
        let separator = recipe.get("separator").and_then(Value::as_str).unwrap_or(",");
        Some(elements.join(separator))
    }

    /// `None`: the tolerance cannot be configured (negative). `null` in the file means the
    /// library was told not to check the age; keel has no such mode, `Duration::MAX` is the same.
    fn tolerance(case: &Value, name: &str) -> Option<Duration> {
        match &case["tolerance"] {
            Value::String(s) if s == "default" => Some(DEFAULT_TOLERANCE),
            Value::Null => Some(Duration::MAX),
            Value::Number(n) => {
                let secs = n.as_i64().unwrap_or_else(|| panic!("{name}: tolerance {n}"));
                u64::try_from(secs).ok().map(Duration::from_secs)
            }
            other => panic!("{name}: tolerance {other}"),
        }
    }

    fn kind(error: SignatureError) -> &'static str {
        match error {
            SignatureError::Missing => "missing",
            SignatureError::Malformed(_) => "malformed",
            SignatureError::NoV1 => "no v1",
            SignatureError::NoMatch => "no match",
            SignatureError::TimestampOutsideTolerance => "tolerance",
        }
    }

    /// The error kind named by a case's `expected_error`, when it names one.
    fn expected_kind(expected_error: &str) -> Option<&'static str> {
        [
            ("Timestamp outside the tolerance zone", "tolerance"),
            ("ErrTooOld", "tolerance"),
            ("No signatures found matching", "no match"),
            ("ErrNoValidSignature", "no match"),
            ("No signatures found with expected scheme", "no v1"),
            ("No stripe-signature header value", "missing"),
            ("Unable to extract", "malformed"),
            ("ErrInvalidHeader", "malformed"),
        ]
        .into_iter()
        .find(|(prefix, _)| expected_error.starts_with(prefix))
        .map(|(_, kind)| kind)
    }

    /// Runs one accept/reject/implementation_defined case; returns what keel answered.
    fn run_case(case: &Value, name: &str) -> Outcome {
        let now = case["now_timestamp"]
            .as_i64()
            .unwrap_or_else(|| panic!("{name}: now"));
        let payload = str_of(case, "payload");
        let header = build_header(case, name, now, payload);
        if let (Some(built), Some(recorded)) = (&header, case["header_at_now_timestamp"].as_str()) {
            assert_eq!(
                built, recorded,
                "{name}: header built differently from the file's"
            );
        }
        let body = match case["verify_payload_transform"].as_str() {
            None => payload.to_owned(),
            Some("append_space") => format!("{payload} "),
            Some(other) => panic!("{name}: unknown payload transform {other}"),
        };
        if let Some(presented) = case["payload_presented_to_verifier"].as_str() {
            assert_eq!(body, presented, "{name}");
        }
        let Some(tolerance) = tolerance(case, name) else {
            return Outcome::Reject; // a negative Duration does not exist: refused at configuration
        };
        let secret = case["verify_secret"]
            .as_str()
            .unwrap_or_else(|| str_of(case, "secret"));
        let verifier = Verifier::new([secret], tolerance);
        match verifier.verify(header.as_deref().map(str::as_bytes), body.as_bytes(), now) {
            Ok(timestamp) => {
                let header = header.unwrap_or_default();
                let t = header.split(',').find_map(|e| e.strip_prefix("t="));
                assert_eq!(
                    t,
                    Some(timestamp.to_string().as_str()),
                    "{name}: returned timestamp"
                );
                Outcome::Accept
            }
            Err(error) => {
                if let Some(expected) = case["expected_error"].as_str().and_then(expected_kind) {
                    assert_eq!(kind(error), expected, "{name}: {error}");
                }
                Outcome::Reject
            }
        }
    }

    #[test]
    fn official_library_cases() {
        let text = std::fs::read_to_string(CASES).unwrap_or_else(|e| panic!("{CASES}: {e}"));
        let cases: Vec<Value> = serde_json::from_str(&text).expect("cases are JSON");
        let (mut verified, mut pinned, mut after_signature, mut hmac_vectors, mut parsed) = (0, 0, 0, 0, 0);
        for case in &cases {
            let name = str_of(case, "name");
            match str_of(case, "expected") {
                "match" => {
                    assert_eq!(str_of(case, "kind"), "hmac_primitive_known_answer", "{name}");
                    let tag = mac(
                        str_of(case, "hmac_key").as_bytes(),
                        &[str_of(case, "message").as_bytes()],
                    );
                    assert_eq!(
                        hex::encode(tag.finalize().into_bytes()),
                        str_of(case, "expected_hex"),
                        "{name}"
                    );
                    hmac_vectors += 1;
                }
                "parse" => {
                    let header = str_of(&case["header"], "literal");
                    let expected = &case["expected_parse"];
                    let v1: Vec<&str> = expected["v1"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    let parsed_header = Header::parse(header).expect("parses");
                    assert_eq!(Some(parsed_header.timestamp), expected["t"].as_i64(), "{name}");
                    assert_eq!(parsed_header.v1, v1, "{name}");
                    parsed += 1;
                }
                "implementation_defined" => {
                    let choice = PINNED
                        .iter()
                        .find(|(id, _)| *id == name)
                        .map(|(_, choice)| *choice);
                    let choice =
                        choice.unwrap_or_else(|| panic!("{name}: implementation_defined, not pinned"));
                    assert_eq!(run_case(case, name), choice, "{name}: pinned choice");
                    pinned += 1;
                }
                expected @ ("accept" | "reject") => {
                    let outcome = run_case(case, name);
                    match AFTER_SIGNATURE.iter().find(|(id, _)| *id == name) {
                        Some((_, stage)) => {
                            assert_eq!(expected, "reject", "{name}");
                            assert_eq!(outcome, Outcome::Accept, "{name}: the signature itself is valid");
                            let payload = str_of(case, "payload");
                            match stage {
                                AfterSignature::NotJson => {
                                    assert!(serde_json::from_str::<Value>(payload).is_err(), "{name}")
                                }
                                AfterSignature::ThinEvent => {
                                    let event: Value = serde_json::from_str(payload).expect("JSON");
                                    assert_eq!(event["object"], "v2.core.event", "{name}");
                                }
                                AfterSignature::GoApiVersion => {
                                    for library in ["node", "python", "ruby"] {
                                        assert_eq!(case["expected_by_library"][library], "accept", "{name}");
                                    }
                                }
                            }
                            after_signature += 1;
                        }
                        None => {
                            let expected = if expected == "accept" {
                                Outcome::Accept
                            } else {
                                Outcome::Reject
                            };
                            assert_eq!(outcome, expected, "{name}");
                            verified += 1;
                        }
                    }
                }
                other => panic!("{name}: unhandled expected value {other}"),
            }
        }
        assert_eq!(pinned, PINNED.len(), "a pinned case disappeared from the file");
        assert_eq!(
            after_signature,
            AFTER_SIGNATURE.len(),
            "an after-signature case disappeared"
        );
        assert_eq!(
            (verified, pinned, after_signature, hmac_vectors, parsed),
            (42, 5, 4, 3, 1)
        );
        assert_eq!(
            verified + pinned + after_signature + hmac_vectors + parsed,
            cases.len()
        );
        assert_eq!(cases.len(), 55);
    }

    #[test]
    fn rotation_accepts_any_configured_secret_and_any_v1() {
        let (old, new, other) = ("whsec_old", "whsec_new", "whsec_other");
        let t = NOW.to_string();
        let body = br#"{"id":"evt_1","object":"event"}"#;
        let header = |secrets: &[&str]| {
            let v1: Vec<String> = secrets
                .iter()
                .map(|s| format!("v1={}", sign(s, &t, body)))
                .collect();
            format!("t={t},{}", v1.join(","))
        };
        let both = Verifier::new([old, new], DEFAULT_TOLERANCE);
        for secrets in [&[old][..], &[new], &[old, new], &[new, old]] {
            assert_eq!(
                both.verify(Some(header(secrets).as_bytes()), body, NOW),
                Ok(NOW),
                "{secrets:?}"
            );
        }
        assert_eq!(
            both.verify(Some(header(&[other]).as_bytes()), body, NOW),
            Err(SignatureError::NoMatch)
        );
        // Stripe rolling a secret sends old then new: a verifier still on the old one accepts.
        let only_old = Verifier::new([old], DEFAULT_TOLERANCE);
        assert_eq!(
            only_old.verify(Some(header(&[old, new]).as_bytes()), body, NOW),
            Ok(NOW)
        );
    }

    /// A secret of NULs is the empty key to HMAC (keys are padded with zero bytes): it too is
    /// ignored, or anyone could sign with the empty key.
    #[test]
    fn empty_secrets_are_ignored() {
        let verifier = Verifier::new(["", "\0", "\0\0\0", "whsec_x"], DEFAULT_TOLERANCE);
        let header = format!("t={NOW},v1={}", sign("", &NOW.to_string(), b"{}"));
        assert_eq!(
            verifier.verify(Some(header.as_bytes()), b"{}", NOW),
            Err(SignatureError::NoMatch)
        );
        let nothing = Verifier::new(Vec::<String>::new(), DEFAULT_TOLERANCE);
        assert_eq!(
            nothing.verify(Some(header.as_bytes()), b"{}", NOW),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn body_that_is_not_utf8_verifies_on_its_raw_bytes() {
        let body = [0xff, 0xfe, 0x00, b'{', 0xc3];
        let header = format!("t={NOW},v1={}", sign("whsec_x", &NOW.to_string(), &body));
        let verifier = Verifier::new(["whsec_x"], DEFAULT_TOLERANCE);
        assert_eq!(verifier.verify(Some(header.as_bytes()), &body, NOW), Ok(NOW));
        assert_eq!(
            verifier.verify(Some(header.as_bytes()), &body[..4], NOW),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn nasty_headers_are_rejected_without_panicking() {
        let verifier = Verifier::new(["whsec_x"], DEFAULT_TOLERANCE);
        let valid = sign("whsec_x", &NOW.to_string(), b"{}");
        let huge = format!("t={NOW}{}", ",v1=00".repeat(20_000));
        let many_then_valid = format!("t=1{},v1={}", ",v1=zz".repeat(20_000), "0".repeat(64));
        let nasty: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"t=".to_vec(),
            b"t=abc,v1=".to_vec(),
            b"=".to_vec(),
            b",,,".to_vec(),
            huge.clone().into_bytes(),
            many_then_valid.into_bytes(),
            "t=١٧٣٥٦٨٩٦٠٠,v1=é".as_bytes().to_vec(),
            format!("t=\0{NOW},v1={valid}\0").into_bytes(),
            b"t=1,v1=zz".to_vec(),
            b"t=99999999999999999999999,v1=00".to_vec(),
            format!("t=-{NOW},v1={valid}").into_bytes(),
            format!("t=+{NOW},v1={valid}").into_bytes(),
            format!("t={NOW},t={NOW},v1={valid}").into_bytes(),
            format!("t={NOW},v1={valid},").into_bytes(),
            format!(" t={NOW},v1={valid}").into_bytes(),
            vec![0xff, 0xfe, b't', b'=', b'1'],
        ];
        assert!(huge.len() > 100_000);
        for header in &nasty {
            let result = verifier.verify(Some(header), b"{}", NOW);
            assert!(result.is_err(), "{:?} accepted", String::from_utf8_lossy(header));
        }
        assert_eq!(
            verifier.verify(Some(&[0xff]), b"{}", NOW),
            Err(SignatureError::Malformed("not UTF-8"))
        );
        assert_eq!(
            verifier.verify(Some(b""), b"{}", NOW),
            Err(SignatureError::Missing)
        );
        assert_eq!(verifier.verify(None, b"{}", NOW), Err(SignatureError::Missing));
    }

    #[test]
    fn every_truncation_and_every_altered_digit_is_rejected() {
        let verifier = Verifier::new(["whsec_x"], DEFAULT_TOLERANCE);
        let body = b"{}";
        let header = format!("t={NOW},v1={}", sign("whsec_x", &NOW.to_string(), body));
        assert_eq!(verifier.verify(Some(header.as_bytes()), body, NOW), Ok(NOW));
        for end in 0..header.len() {
            assert!(
                verifier
                    .verify(Some(&header.as_bytes()[..end]), body, NOW)
                    .is_err(),
                "{end}"
            );
        }
        for at in 0..header.len() {
            let mut altered = header.clone().into_bytes();
            altered[at] = if altered[at] == b'1' { b'2' } else { b'1' };
            assert!(verifier.verify(Some(&altered), body, NOW).is_err(), "{at}");
        }
    }

    #[test]
    fn errors_never_echo_the_header() {
        let secret = "whsec_leak";
        let signature = sign(secret, "1", b"{}");
        let header = format!("t=1,v1={signature}");
        let verifier = Verifier::new([secret], DEFAULT_TOLERANCE);
        let error = verifier.verify(Some(header.as_bytes()), b"{}", NOW);
        assert_eq!(error, Err(SignatureError::TimestampOutsideTolerance));
        let message = error.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            !message.contains(secret) && !message.contains(&signature),
            "{message}"
        );
        assert!(!format!("{:?}", Verifier::new([secret], DEFAULT_TOLERANCE)).contains(secret));
    }
}

/// Properties over hostile input: whatever the header and body, `verify` answers without
/// panicking, and only the real recipe (with any junk around it) is accepted.
#[cfg(test)]
mod properties {
    use proptest::{collection::vec, prelude::*, sample::Index};

    use super::*;

    const SECRET: &str = "whsec_properties";
    const NOW: i64 = 1_735_689_600;

    fn sign(secret: &str, t: &str, body: &[u8]) -> String {
        hex::encode(
            mac(secret.as_bytes(), &[t.as_bytes(), b".", body])
                .finalize()
                .into_bytes(),
        )
    }

    fn verifier() -> Verifier {
        Verifier::new([SECRET], DEFAULT_TOLERANCE)
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        vec(any::<u8>(), 0..200)
    }

    fn lower_hex(len: usize) -> impl Strategy<Value = String> {
        vec(0..16_u32, len).prop_map(|digits| {
            digits
                .into_iter()
                .filter_map(|d| char::from_digit(d, 16))
                .collect()
        })
    }

    /// Text without `,` (an element's value), from a small alphabet and any character.
    fn value_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("=".to_owned()),
            Just(" ".to_owned()),
            Just("t".to_owned()),
            Just("v1".to_owned()),
            Just(NOW.to_string()),
            lower_hex(64),
            any::<char>().prop_map(String::from),
        ];
        vec(piece, 0..4).prop_map(|pieces| pieces.concat().replace(',', ""))
    }

    /// An element that must not change the outcome of a valid header: other schemes, unknown
    /// keys (including near misses of `t` and `v1`), and wrong `v1` values.
    fn junk_element(t: i64, body: &[u8]) -> impl Strategy<Value = String> + use<> {
        let right = sign(SECRET, &t.to_string(), body);
        let near_keys = [
            "", "v0", "v2", "V1", " v1", "v1 ", "T", " t", "t ", "\tt", "tt", "v", "1", "v1\u{0}",
        ];
        prop_oneof![
            lower_hex(64).prop_map(|hex| format!("v0={hex}")),
            lower_hex(64).prop_map(|hex| format!("v1={hex}")),
            Just(format!("v1={}", right.to_uppercase())),
            Just(format!("v1={}", &right[..63])),
            Just(format!("v1={right}0")),
            Just(format!("v1= {right}")),
            Just(format!("v1={}", sign("whsec_other", &t.to_string(), body))),
            Just(format!("v1={}", sign(SECRET, &(t + 1).to_string(), body))),
            Just("v1=".to_owned()),
            (prop::sample::select(near_keys.to_vec()), value_text())
                .prop_map(|(key, value)| format!("{key}={value}")),
        ]
    }

    /// `t=<t>,v1=<right>` in any order, with junk elements before, between and after.
    fn valid_header(t: i64, body: &[u8]) -> impl Strategy<Value = String> + use<> {
        let right = format!("v1={}", sign(SECRET, &t.to_string(), body));
        let stamp = format!("t={t}");
        (vec(junk_element(t, body), 0..6), any::<Index>(), any::<Index>()).prop_map(
            move |(mut elements, at_t, at_v1)| {
                elements.insert(at_t.index(elements.len() + 1), stamp.clone());
                elements.insert(at_v1.index(elements.len() + 1), right.clone());
                elements.join(",")
            },
        )
    }

    /// Header bytes glued from the pieces a header is made of, a few non-UTF-8 bytes, and
    /// the one valid signature (of `NOW` and `{}`): the fuzzer's dictionary.
    fn dictionary_header() -> impl Strategy<Value = Vec<u8>> {
        let valid = sign(SECRET, &NOW.to_string(), b"{}");
        let piece = prop_oneof![
            Just(b"t=".to_vec()),
            Just(b"v1=".to_vec()),
            Just(b"v0=".to_vec()),
            Just(b",".to_vec()),
            Just(b"=".to_vec()),
            Just(b" ".to_vec()),
            Just(b"-".to_vec()),
            Just(NOW.to_string().into_bytes()),
            Just(valid.into_bytes()),
            Just(b"99999999999999999999".to_vec()),
            (0..10_u8).prop_map(|d| vec![b'0' + d]),
            Just(vec![0xff]),
            Just(vec![0xc3]),
            Just("é".as_bytes().to_vec()),
            any::<u8>().prop_map(|b| vec![b]),
        ];
        vec(piece, 0..16).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(crate::proptest_config(1024))]

        /// Any header bytes, body, clock and tolerance: an answer, never a panic.
        #[test]
        fn arbitrary_input_never_panics(
            header in prop_oneof![vec(any::<u8>(), 0..300), dictionary_header()],
            body in body(),
            now in any::<i64>(),
            tolerance in any::<u64>(),
        ) {
            let verifier = Verifier::new([SECRET], Duration::from_secs(tolerance));
            let _ = verifier.verify(Some(&header), &body, now);
        }

        /// The dictionary holds one valid signature, of `NOW` and `{}`: whatever is glued
        /// around it, an accepted header carries exactly that timestamp.
        #[test]
        fn only_the_signed_timestamp_is_ever_accepted(header in dictionary_header()) {
            let verifier = Verifier::new([SECRET], Duration::MAX);
            if let Ok(t) = verifier.verify(Some(&header), b"{}", NOW) {
                prop_assert_eq!(t, NOW);
                let text = std::str::from_utf8(&header).unwrap();
                prop_assert!(text.split(',').any(|e| e == format!("t={NOW}")), "{}", text);
            }
        }
    }

    proptest! {
        #![proptest_config(crate::proptest_config(256))]

        /// The real recipe verifies whatever junk surrounds it, for a timestamp anywhere from
        /// the tolerance's edge into the future (Stripe's clock ahead of ours).
        #[test]
        fn the_real_recipe_verifies_among_junk(
            (t, body, header) in (NOW - 300..NOW + 3_600, body())
                .prop_flat_map(|(t, body)| (Just(t), valid_header(t, &body), Just(body)))
                .prop_map(|(t, header, body)| (t, body, header)),
            rotation in any::<bool>(),
        ) {
            let verifier = if rotation {
                Verifier::new(["whsec_next", SECRET], DEFAULT_TOLERANCE)
            } else {
                verifier()
            };
            prop_assert_eq!(verifier.verify(Some(header.as_bytes()), &body, NOW), Ok(t), "{}", header);
        }

        /// Changing, removing or adding any one byte of the body breaks the signature.
        #[test]
        fn an_altered_body_fails(
            body in vec(any::<u8>(), 1..200),
            at in any::<Index>(),
            change in 1..=255_u8,
            how in 0..3_u8,
        ) {
            let header = format!("t={NOW},v1={}", sign(SECRET, &NOW.to_string(), &body));
            let mut altered = body.clone();
            let at = at.index(body.len());
            match how {
                0 => altered[at] ^= change,
                1 => { altered.remove(at); }
                _ => altered.insert(at, change),
            }
            prop_assert_eq!(
                verifier().verify(Some(header.as_bytes()), &altered, NOW),
                Err(SignatureError::NoMatch)
            );
        }

        /// Replacing any one byte of a valid header, with anything, is refused; within the
        /// signature, another hex digit or the same digit in upper case is a plain mismatch.
        #[test]
        fn an_altered_header_fails(
            body in body(),
            at in any::<Index>(),
            replacement in any::<u8>(),
            digit in any::<Index>(),
            shift in 1..16_usize,
            upper in any::<bool>(),
        ) {
            let signature = sign(SECRET, &NOW.to_string(), &body);
            let header = format!("t={NOW},v1={signature}");
            let mut altered = header.clone().into_bytes();
            let at = at.index(altered.len());
            prop_assume!(altered[at] != replacement);
            altered[at] = replacement;
            prop_assert!(verifier().verify(Some(&altered), &body, NOW).is_err());

            let mut digits = signature.into_bytes();
            let at = digit.index(digits.len());
            let hex = b"0123456789abcdef";
            let was = hex.iter().position(|h| *h == digits[at]).unwrap();
            digits[at] = if upper && digits[at].is_ascii_lowercase() {
                digits[at].to_ascii_uppercase()
            } else {
                hex[(was + shift) % 16]
            };
            let header = format!("t={NOW},v1={}", String::from_utf8(digits).unwrap());
            prop_assert_eq!(
                verifier().verify(Some(header.as_bytes()), &body, NOW),
                Err(SignatureError::NoMatch)
            );
        }

        /// Past the signature only the age decides: older than the tolerance is refused,
        /// anything newer (the future included) accepted; no overflow at the extremes.
        #[test]
        fn the_age_alone_decides_past_the_signature(
            (t, now, tolerance) in prop_oneof![
                (0..=i64::MAX, any::<i64>(), any::<u64>()),
                (0..=1_000_000_u32, -3..=3_i64)
                    .prop_map(|(tolerance, delta)| {
                        (NOW - i64::from(tolerance) - delta, NOW, u64::from(tolerance))
                    }),
            ],
            body in body(),
        ) {
            let header = format!("t={t},v1={}", sign(SECRET, &t.to_string(), &body));
            let verifier = Verifier::new([SECRET], Duration::from_secs(tolerance));
            let expected = if i128::from(now) - i128::from(t) > i128::from(tolerance) {
                Err(SignatureError::TimestampOutsideTolerance)
            } else {
                Ok(t)
            };
            prop_assert_eq!(verifier.verify(Some(header.as_bytes()), &body, now), expected);
        }

        /// A header signed with any other secret is a mismatch, however the verifier's
        /// secrets are rotated; an empty secret is never a key.
        #[test]
        fn other_secrets_never_verify(
            signer in vec(any::<char>(), 0..40).prop_map(String::from_iter),
            configured in vec(vec(any::<char>(), 0..40).prop_map(String::from_iter), 0..4),
            body in body(),
        ) {
            // Keys HMAC cannot tell apart are one key: up to its block size (64 bytes) a key is
            // padded with zero bytes, so "k" and "k\0" sign alike (found by a long run).
            let same_key = |a: &str, b: &str| {
                a == b || (a.len() <= 64 && b.len() <= 64 && a.trim_end_matches('\0') == b.trim_end_matches('\0'))
            };
            prop_assume!(!configured.iter().any(|secret| same_key(secret, &signer)));
            let header = format!("t={NOW},v1={}", sign(&signer, &NOW.to_string(), &body));
            let verifier = Verifier::new(&configured, DEFAULT_TOLERANCE);
            prop_assert_eq!(
                verifier.verify(Some(header.as_bytes()), &body, NOW),
                Err(SignatureError::NoMatch)
            );
            let with_empty = Verifier::new(["", "\0\0", SECRET], DEFAULT_TOLERANCE);
            let unkeyed = format!("t={NOW},v1={}", sign("", &NOW.to_string(), &body));
            prop_assert_eq!(
                with_empty.verify(Some(unkeyed.as_bytes()), &body, NOW),
                Err(SignatureError::NoMatch)
            );
        }
    }
}
