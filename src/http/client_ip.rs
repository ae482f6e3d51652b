//! Who the client is, for rate limiting and logs.
//!
//! The TCP peer, unless the peer is one of our `TRUSTED_PROXIES`: then the right-most address
//! of `X-Forwarded-For` that is not itself a trusted proxy. Each proxy appends the address it
//! saw, so everything left of the last untrusted hop was written by the client and may be
//! forged; the right-most untrusted entry is the first one a trusted proxy vouches for.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, request::Parts},
};
use ipnet::IpNet;

use super::AppState;
use crate::error::AppError;

/// The client of a request, for handlers: `ClientIp(client_ip(…))` of its peer and headers.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// Its rate-limit bucket (see [`bucket`]): what throttles count by.
    pub fn bucket(self) -> IpAddr {
        bucket(self.0)
    }
}

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .ok_or_else(|| AppError::Internal(anyhow::anyhow!("no peer address: serve with ConnectInfo")))?
            .0
            .ip();
        Ok(Self(client_ip(
            peer,
            &parts.headers,
            &state.config.trusted_proxies,
        )))
    }
}

/// The client address for a request from `peer` carrying `headers`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut nearest = canonical(peer);
    if !is_trusted(&nearest) {
        return nearest;
    }
    // Several X-Forwarded-For headers are one list, in order (RFC 9110 §5.3). Split as bytes:
    // a non-UTF-8 entry is malformed on its own, without hiding the entries right of it.
    let entries: Vec<Option<&str>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(|entry| std::str::from_utf8(entry).ok())
        .collect();
    for entry in entries.iter().rev() {
        match entry.and_then(parse_entry) {
            Some(ip) if !is_trusted(&ip) => return ip,
            Some(ip) => nearest = ip,
            // A trusted proxy would not write garbage: it came from further left, so the
            // nearest trusted hop is the best we know.
            None => return nearest,
        }
    }
    nearest
}

/// The rate-limit bucket for a client: one per IPv4 address, one per IPv6 /64 (a single
/// subscriber usually holds a whole /64, so per-address buckets would be free to multiply).
pub fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            IpAddr::V6(Ipv6Addr::new(
                segments[0],
                segments[1],
                segments[2],
                segments[3],
                0,
                0,
                0,
                0,
            ))
        }
    }
}

/// One `X-Forwarded-For` element: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:443`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))?;
    Some(canonical(ip))
}

/// `::ffff:1.2.3.4` (an IPv4 client on a dual-stack socket) is `1.2.3.4`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn xff(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_bytes(value).unwrap());
        }
        headers
    }

    const PROXY: &str = "172.18.0.2";

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted = nets(&["172.18.0.0/16"]);
        let forged = xff(&[b"9.9.9.9, 8.8.8.8"]);
        assert_eq!(client_ip(ip("203.0.113.7"), &forged, &trusted), ip("203.0.113.7"));
        assert_eq!(client_ip(ip("203.0.113.7"), &forged, &[]), ip("203.0.113.7"));
    }

    #[test]
    fn behind_a_trusted_proxy_the_right_most_untrusted_entry_wins() {
        let trusted = nets(&["172.18.0.0/16"]);
        // The client forged "1.1.1.1"; nginx appended the address it really saw.
        let headers = xff(&[b"1.1.1.1, 198.51.100.4"]);
        assert_eq!(client_ip(ip(PROXY), &headers, &trusted), ip("198.51.100.4"));
    }

    #[test]
    fn chains_of_trusted_proxies_are_skipped() {
        let trusted = nets(&["172.18.0.0/16", "10.0.0.0/8"]);
        let headers = xff(&[b"5.5.5.5, 198.51.100.4, 10.1.2.3"]);
        assert_eq!(client_ip(ip(PROXY), &headers, &trusted), ip("198.51.100.4"));
        // The same list split over two headers.
        let split = xff(&[b"5.5.5.5", b"198.51.100.4 , 10.1.2.3"]);
        assert_eq!(client_ip(ip(PROXY), &split, &trusted), ip("198.51.100.4"));
    }

    #[test]
    fn a_trusted_peer_without_the_header_is_the_client() {
        let trusted = nets(&["172.18.0.0/16"]);
        assert_eq!(client_ip(ip(PROXY), &HeaderMap::new(), &trusted), ip(PROXY));
    }

    #[test]
    fn only_trusted_entries_means_the_left_most_one() {
        let trusted = nets(&["172.18.0.0/16", "10.0.0.0/8"]);
        let headers = xff(&[b"10.0.0.9, 10.0.0.8"]);
        assert_eq!(client_ip(ip(PROXY), &headers, &trusted), ip("10.0.0.9"));
    }

    #[test]
    fn malformed_entries_stop_the_walk_at_the_nearest_trusted_hop() {
        let trusted = nets(&["172.18.0.0/16", "10.0.0.0/8"]);
        for garbage in [
            &b"unknown"[..],
            b"",
            b"1.2.3.4.5",
            b"<script>",
            b"999.1.1.1",
            b"\xff\xfe",
        ] {
            let mut value = garbage.to_vec();
            value.extend_from_slice(b", 10.0.0.7");
            let headers = xff(&[&value]);
            assert_eq!(
                client_ip(ip(PROXY), &headers, &trusted),
                ip("10.0.0.7"),
                "{garbage:?}"
            );
        }
        let only_garbage = xff(&[b"not-an-ip"]);
        assert_eq!(client_ip(ip(PROXY), &only_garbage, &trusted), ip(PROXY));
    }

    #[test]
    fn ports_brackets_and_mapped_addresses_are_understood() {
        let trusted = nets(&["172.18.0.0/16"]);
        for (entry, expected) in [
            (&b"198.51.100.4:51234"[..], "198.51.100.4"),
            (b"[2001:db8::1]:443", "2001:db8::1"),
            (b" 2001:db8::2 ", "2001:db8::2"),
            (b"::ffff:198.51.100.9", "198.51.100.9"),
        ] {
            assert_eq!(client_ip(ip(PROXY), &xff(&[entry]), &trusted), ip(expected));
        }
        // A dual-stack listener sees IPv4 proxies as mapped addresses.
        assert_eq!(
            client_ip(ip("::ffff:172.18.0.2"), &xff(&[b"198.51.100.4"]), &trusted),
            ip("198.51.100.4")
        );
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        assert_eq!(
            bucket(ip("2001:db8:1:2:aaaa::1")),
            bucket(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(bucket(ip("2001:db8:1:2::1")), bucket(ip("2001:db8:1:3::1")));
        assert_eq!(bucket(ip("198.51.100.4")), ip("198.51.100.4"));
    }
}

/// Properties of `client_ip` over hostile `X-Forwarded-For` headers: whatever a client writes,
/// the answer is the peer or an address listed, and only what trusted proxies vouch for.
#[cfg(test)]
mod properties {
    use std::net::Ipv4Addr;

    use axum::http::HeaderValue;
    use ipnet::{Ipv4Net, Ipv6Net};
    use proptest::{collection::vec, prelude::*, sample::Index};

    use super::*;

    /// The proxies' networks: fixed ones the addresses below fall into, and arbitrary ones.
    fn trusted() -> impl Strategy<Value = Vec<IpNet>> {
        let fixed: Vec<IpNet> = ["172.18.0.0/16", "10.0.0.0/8", "fd00::/8", "127.0.0.1/32"]
            .iter()
            .map(|net| net.parse().unwrap())
            .collect();
        let arbitrary = prop_oneof![
            (any::<[u8; 4]>(), 0..=32_u8)
                .prop_map(|(ip, len)| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(ip), len).unwrap())),
            (any::<[u16; 8]>(), 0..=128_u8)
                .prop_map(|(ip, len)| IpNet::V6(Ipv6Net::new(Ipv6Addr::from(ip), len).unwrap())),
        ];
        (prop::sample::subsequence(fixed, 0..=4), vec(arbitrary, 0..2)).prop_map(|(mut fixed, arbitrary)| {
            fixed.extend(arbitrary);
            fixed
        })
    }

    /// An address: anywhere, or in one of the fixed trusted networks, in either family.
    fn address() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u16; 8]>().prop_map(IpAddr::from),
            any::<[u8; 2]>().prop_map(|[a, b]| IpAddr::from([172, 18, a, b])),
            any::<[u8; 3]>().prop_map(|[a, b, c]| IpAddr::from([10, a, b, c])),
            any::<[u16; 7]>().prop_map(|[a, b, c, d, e, f, g]| {
                IpAddr::from([0xfd00 | (a & 0xff), b, c, d, e, f, g, 1])
            }),
            Just(IpAddr::from([127, 0, 0, 1])),
        ]
    }

    /// How an address may be written in the header, with or without a port, mapped or not.
    fn written(ip: IpAddr, form: u8, port: u16) -> String {
        match (ip, form % 4) {
            (IpAddr::V4(v4), 1) => format!("{v4}:{port}"),
            (IpAddr::V4(v4), 2) => v4.to_ipv6_mapped().to_string(),
            (IpAddr::V4(v4), 3) => format!("[{}]:{port}", v4.to_ipv6_mapped()),
            (IpAddr::V6(v6), 1 | 3) => format!("[{v6}]:{port}"),
            _ => ip.to_string(),
        }
    }

    /// Bytes a header value may hold (no control characters but tab), for the garbage entries.
    fn header_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        vec(any::<u8>(), 0..max).prop_map(|bytes| {
            bytes
                .into_iter()
                .filter(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t')
                .collect()
        })
    }

    /// One comma-free entry: an address as a proxy writes it, padded, or garbage.
    fn entry() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => (address(), any::<u8>(), any::<u16>())
                .prop_map(|(ip, form, port)| written(ip, form, port).into_bytes()),
            1 => (address(), prop::sample::select(vec![" ", "\t", "  ", ""]))
                .prop_map(|(ip, pad)| format!("{pad}{ip}{pad}").into_bytes()),
            1 => prop_oneof![
                Just(b"unknown".to_vec()),
                Just(b"".to_vec()),
                Just(b"[::1]".to_vec()),
                Just(b"1.2.3.4:99999".to_vec()),
                Just(b"\xff\xfe".to_vec()),
                Just(b"::ffff:999.1.1.1".to_vec()),
                Just(b"1.2.3.4 5.6.7.8".to_vec()),
                header_bytes(24),
            ]
            .prop_map(|bytes| bytes.into_iter().filter(|&b| b != b',').collect::<Vec<u8>>()),
        ]
    }

    /// The list of `entries` joined by `separator`, split into several headers before the
    /// entries at `cuts`.
    fn headers_of(entries: &[Vec<u8>], cuts: &[Index], separator: &[u8]) -> HeaderMap {
        let cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(entries.len().max(1))).collect();
        let mut values: Vec<Vec<u8>> = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            match values.last_mut() {
                Some(value) if !cuts.contains(&i) => value.extend_from_slice(separator),
                _ => values.push(Vec::new()),
            }
            values.last_mut().unwrap().extend_from_slice(entry);
        }
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_bytes(&value).unwrap());
        }
        headers
    }

    /// Every address written anywhere in the headers, parsed independently of `parse_entry`.
    fn listed(headers: &HeaderMap) -> Vec<IpAddr> {
        let mut found = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            for entry in value.as_bytes().split(|b| *b == b',') {
                let Ok(entry) = std::str::from_utf8(entry) else {
                    continue;
                };
                let entry = entry.trim();
                let ip = entry
                    .parse::<IpAddr>()
                    .ok()
                    .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()));
                if let Some(ip) = ip {
                    found.push(ip);
                    if let IpAddr::V6(v6) = ip
                        && let Some(v4) = v6.to_ipv4_mapped()
                    {
                        found.push(IpAddr::V4(v4));
                    }
                }
            }
        }
        found
    }

    /// The module's rule, stated over the whole list rather than walked: behind a trusted
    /// peer, the right-most entry that is malformed or untrusted decides. Untrusted: it is the
    /// client. Malformed: the trusted hop right of it is (or the peer). None: the left-most.
    fn documented_rule(peer: IpAddr, entries: &[Vec<u8>], trusted: &[IpNet]) -> IpAddr {
        let unmap = |ip: IpAddr| match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(&ip));
        let peer = unmap(peer);
        if !is_trusted(peer) {
            return peer;
        }
        let parsed: Vec<Option<IpAddr>> = entries
            .iter()
            .map(|entry| {
                let entry = std::str::from_utf8(entry).ok()?.trim();
                let ip = entry
                    .parse::<IpAddr>()
                    .ok()
                    .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()));
                ip.map(unmap)
            })
            .collect();
        let decisive = parsed.iter().rposition(|ip| ip.is_none_or(|ip| !is_trusted(ip)));
        match decisive {
            Some(at) => parsed[at].unwrap_or_else(|| parsed.get(at + 1).map_or(peer, |ip| ip.unwrap())),
            None => parsed.first().map_or(peer, |ip| ip.unwrap()),
        }
    }

    fn mapped(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            IpAddr::V6(_) => ip,
        }
    }

    proptest! {
        #![proptest_config(crate::proptest_config(512))]

        /// Arbitrary header bytes, any number of headers: never a panic, and the answer is
        /// the peer or one of the addresses listed.
        #[test]
        fn the_answer_is_the_peer_or_a_listed_address(
            peer in address(),
            values in vec(header_bytes(80), 0..4),
            trusted in trusted(),
        ) {
            let mut headers = HeaderMap::new();
            for value in &values {
                headers.append("x-forwarded-for", HeaderValue::from_bytes(value).unwrap());
            }
            headers.append("x-real-ip", HeaderValue::from_static("6.6.6.6"));
            let ip = client_ip(peer, &headers, &trusted);
            prop_assert!(ip == canonical(peer) || listed(&headers).contains(&ip), "{}", ip);
        }

        /// Lists of well-formed, padded and garbage entries over several headers: the answer
        /// is the peer or a listed address, never an IPv4-mapped one; a peer that is not
        /// trusted is the client whatever the headers say.
        #[test]
        fn only_trusted_peers_are_believed(
            peer in address(),
            entries in vec(entry(), 0..8),
            cuts in vec(any::<Index>(), 0..3),
            trusted in trusted(),
        ) {
            let headers = headers_of(&entries, &cuts, b", ");
            let ip = client_ip(peer, &headers, &trusted);
            prop_assert!(ip == canonical(peer) || listed(&headers).contains(&ip), "{}", ip);
            prop_assert!(!matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()), "{}", ip);
            if !trusted.iter().any(|net| net.contains(&canonical(peer))) {
                prop_assert_eq!(ip, canonical(peer));
            }
        }

        /// The answer is the one the documented rule gives, for any list over any headers.
        #[test]
        fn the_documented_rule_decides(
            peer in address(),
            entries in vec(entry(), 0..8),
            cuts in vec(any::<Index>(), 0..3),
            trusted in trusted(),
        ) {
            let headers = headers_of(&entries, &cuts, b", ");
            prop_assert_eq!(client_ip(peer, &headers, &trusted), documented_rule(peer, &entries, &trusted));
        }

        /// Once a trusted proxy vouches for an untrusted address, nothing the client writes
        /// to the left of it (in the same header or in earlier ones) changes the answer.
        #[test]
        fn entries_left_of_the_client_cannot_change_the_answer(
            peer in address(),
            (spoofed, entries) in (vec(entry(), 1..6), vec(entry(), 0..6)),
            (cuts, in_own_header) in (vec(any::<Index>(), 0..3), any::<bool>()),
            trusted in trusted(),
        ) {
            let honest = headers_of(&entries, &cuts, b",");
            let ip = client_ip(peer, &honest, &trusted);
            prop_assume!(!trusted.iter().any(|net| net.contains(&ip)));
            let forged = if in_own_header {
                let mut forged = headers_of(&spoofed, &[], b",");
                for value in honest.get_all("x-forwarded-for") {
                    forged.append("x-forwarded-for", value.clone());
                }
                forged
            } else {
                let all: Vec<Vec<u8>> = spoofed.iter().chain(&entries).cloned().collect();
                headers_of(&all, &cuts, b",")
            };
            prop_assert_eq!(client_ip(peer, &forged, &trusted), ip);
        }

        /// Several headers are one list: splitting it differently, or spacing it, changes
        /// nothing; nor does the peer being seen as an IPv4-mapped address.
        #[test]
        fn headers_are_one_list_and_mapped_peers_are_the_same_peer(
            peer in address(),
            entries in vec(entry(), 0..8),
            (cuts, other_cuts) in (vec(any::<Index>(), 0..3), vec(any::<Index>(), 0..3)),
            trusted in trusted(),
        ) {
            let one = client_ip(peer, &headers_of(&entries, &[], b","), &trusted);
            prop_assert_eq!(client_ip(peer, &headers_of(&entries, &cuts, b", "), &trusted), one);
            prop_assert_eq!(client_ip(peer, &headers_of(&entries, &other_cuts, b" ,\t"), &trusted), one);
            prop_assert_eq!(client_ip(mapped(peer), &headers_of(&entries, &cuts, b","), &trusted), one);
        }
    }
}
