//! Where a webhook may be sent: `http(s)` URLs only, and, unless `--webhook-allow-private`,
//! only to public addresses, checked when the endpoint is registered and again at every
//! delivery on the addresses the name resolves to then (the delivery connects to the address
//! checked, so a name that resolves elsewhere the second time reaches nothing private).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest endpoint URL.
const MAX_URL_BYTES: usize = 2048;

/// Checks an endpoint URL as registered.
///
/// # Errors
/// Not an `http(s)` URL with a host, holding credentials, too long, or (unless
/// `allow_private`) naming a private address.
pub fn check_url(raw: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    if raw.len() > MAX_URL_BYTES {
        return Err(format!("the URL is longer than {MAX_URL_BYTES} bytes"));
    }
    let url = reqwest::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("only http and https URLs are delivered to".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL are not kept: put them in its path or query".into());
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err("the URL has no host".into());
    };
    if !allow_private {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let ip = match bare.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) if bare.eq_ignore_ascii_case("localhost") => {
                Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
            }
            Err(_) => None,
        };
        if ip.is_some_and(|ip| !is_public(ip)) {
            return Err(
                "private, loopback and link-local addresses are refused (--webhook-allow-private)"
                    .into(),
            );
        }
    }
    Ok(url)
}

/// The address a delivery to `url` connects to: its name resolved now, every address it
/// resolves to public unless `allow_private`.
///
/// # Errors
/// The name does not resolve, or resolves to an address that is not allowed.
pub async fn resolve(url: &reqwest::Url, allow_private: bool) -> Result<SocketAddr, String> {
    let host = url.host_str().ok_or("the URL has no host")?;
    let port = url.port_or_known_default().ok_or("the URL has no port")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("{host} does not resolve: {e}"))?
        .collect();
    if !allow_private && addrs.iter().any(|a| !is_public(a.ip())) {
        return Err(format!(
            "{host} resolves to a private address; refused (--webhook-allow-private)"
        ));
    }
    addrs
        .into_iter()
        .next()
        .ok_or_else(|| format!("{host} resolves to no address"))
}

/// Whether `ip` is on the public internet: not loopback, private, link-local, shared
/// (CGNAT), unspecified, multicast, broadcast, documentation or unique-local.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || first == 0x2001 && ip.segments()[1] == 0x0db8
        // 6to4 and NAT64 carry an IPv4 address: whatever it is, refused.
        || first == 0x2002
        || (first == 0x0064 && ip.segments()[1] == 0xff9b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_http_targets_pass_unless_private_ones_are_allowed() {
        for good in [
            "https://hooks.example.com/tandem",
            "http://93.184.216.34:8080/x",
        ] {
            assert!(check_url(good, false).is_ok(), "{good}");
        }
        for bad in [
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "http://127.0.0.1:9000/",
            "http://localhost/",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://100.64.0.1/",
            "http://198.18.0.1/",
            "http://[64:ff9b::7f00:1]/",
            "http://[2002:7f00:1::]/",
            "not a url",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
        }
        assert!(check_url("http://127.0.0.1:9000/", true).is_ok());
        assert!(!is_public("::ffff:127.0.0.1".parse().unwrap()));
        assert!(is_public("2606:4700::1".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_name_is_checked_on_what_it_resolves_to() {
        let url = reqwest::Url::parse("http://localhost:9/").unwrap();
        assert!(resolve(&url, false).await.is_err());
        assert!(resolve(&url, true).await.is_ok());
    }
}
