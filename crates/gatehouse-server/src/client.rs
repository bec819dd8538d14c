//! Who the client is, by address: the connection's peer, unless that peer is one of
//! `server.trusted_proxies`; then the nearest address in `X-Forwarded-For` that is not a trusted
//! proxy itself. From anyone else the header is ignored: a client cannot choose its own address
//! for the login limiter, the endpoint limits or the audit trail.

use std::net::IpAddr;

use axum::http::{Extensions, HeaderMap};
use gatehouse_config::Cidr;

use crate::guard::RemotePeer;

/// The address as text; `loopback` for a connection from this machine (unless a trusted proxy
/// on this machine names another).
pub fn ip(trusted: &[Cidr], ext: &Extensions, headers: &HeaderMap) -> String {
    let peer = ext.get::<RemotePeer>().map(|p| p.0.ip());
    if !trusted.is_empty() {
        // A loopback peer is not marked (`listen.rs`); it is 127.0.0.1 for trust.
        let as_seen = peer.unwrap_or(IpAddr::from([127, 0, 0, 1]));
        if trusted.iter().any(|c| c.contains(as_seen))
            && let Some(client) = forwarded(trusted, headers)
        {
            return client.to_string();
        }
    }
    peer.map_or_else(|| "loopback".to_owned(), |ip| ip.to_string())
}

/// Whether the client reached the gateway over HTTPS: TLS here, or a trusted proxy saying so
/// with `X-Forwarded-Proto: https` (then the login cookies are `Secure`).
pub fn https(trusted: &[Cidr], tls: bool, ext: &Extensions, headers: &HeaderMap) -> bool {
    if tls {
        return true;
    }
    let peer = ext
        .get::<RemotePeer>()
        .map_or(IpAddr::from([127, 0, 0, 1]), |p| p.0.ip());
    trusted.iter().any(|c| c.contains(peer))
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// The rightmost `X-Forwarded-For` address that is not a trusted proxy (each proxy appends the
/// address it saw, so everything left of the first untrusted one is the client's own say).
fn forwarded(trusted: &[Cidr], headers: &HeaderMap) -> Option<IpAddr> {
    let mut hops: Vec<IpAddr> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        for part in v.to_str().ok()?.split(',') {
            hops.push(part.trim().parse().ok()?);
        }
    }
    let first = hops.first().copied();
    hops.iter()
        .rev()
        .find(|ip| !trusted.iter().any(|c| c.contains(**ip)))
        .copied()
        .or(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    fn remote(ip: [u8; 4]) -> Extensions {
        let mut e = Extensions::new();
        e.insert(RemotePeer(std::net::SocketAddr::from((ip, 4000))));
        e
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_proxy() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let h = headers("6.6.6.6, 203.0.113.9, 10.0.0.3");
        // Through two trusted hops: the address the first proxy saw.
        assert_eq!(ip(&trusted, &remote([10, 0, 0, 2]), &h), "203.0.113.9");
        // From a client that is not a proxy: the header is its own claim, ignored.
        assert_eq!(ip(&trusted, &remote([198, 51, 100, 7]), &h), "198.51.100.7");
        // No trusted proxies configured: never believed.
        assert_eq!(ip(&[], &remote([10, 0, 0, 2]), &h), "10.0.0.2");
        // A proxy on this machine.
        let local = [Cidr::parse("127.0.0.1").unwrap()];
        assert_eq!(
            ip(&local, &Extensions::new(), &headers("192.0.2.1")),
            "192.0.2.1"
        );
        assert_eq!(
            ip(&local, &Extensions::new(), &HeaderMap::new()),
            "loopback"
        );
        // A garbled header: the peer.
        assert_eq!(
            ip(&trusted, &remote([10, 0, 0, 2]), &headers("not an ip")),
            "10.0.0.2"
        );
    }

    #[test]
    fn cidr_ranges_match_their_bits() {
        let c = Cidr::parse("192.168.1.0/24").unwrap();
        assert!(c.contains("192.168.1.77".parse().unwrap()));
        assert!(!c.contains("192.168.2.1".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_none() && Cidr::parse("nope").is_none());
    }
}
