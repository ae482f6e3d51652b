//! Who the client is, for rate limiting and logs.
//!
//! The TCP peer, unless the peer is one of our `TRUSTED_PROXIES`: then the right-most address
//! of `X-Forwarded-For` that is not itself a trusted proxy. Each proxy appends the address it
//! saw, so everything left of the last untrusted hop was written by the client and may be
//! forged; the right-most untrusted entry is the first one a trusted proxy vouches for.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

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
