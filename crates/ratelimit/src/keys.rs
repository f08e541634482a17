//! Helpers that turn what callers know into limit keys. Keys are otherwise opaque strings.

use std::net::{IpAddr, Ipv6Addr};

/// The key part for a client address: an IPv4 address as is (`203.0.113.7`), an IPv6
/// address by its /64 network (`2001:db8:1:2::/64`), because one subscriber usually holds a
/// whole /64 and rotating addresses inside it must not buy fresh limits. An IPv4-mapped IPv6
/// address (`::ffff:203.0.113.7`, what a dual-stack socket reports) is its IPv4 address.
///
/// The same canonical form names an IP in a block target.
pub fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let network = u128::from(v6) & !(u128::from(u64::MAX));
                format!("{}/64", Ipv6Addr::from(network))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        let ip: IpAddr = input.parse().expect("test address");
        assert_eq!(ip_key(ip), expected, "{input}");
    }

    #[test]
    fn ipv4_is_kept_and_ipv6_is_grouped_by_64() {
        check("203.0.113.7", "203.0.113.7");
        check("0.0.0.0", "0.0.0.0");
        check("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64");
        check("2001:db8:1:2::1", "2001:db8:1:2::/64");
        check("2001:db8:1:3::1", "2001:db8:1:3::/64");
        check("2001:db8::1", "2001:db8::/64");
        check("fe80::1", "fe80::/64");
        check("::1", "::/64");
        check("::ffff:203.0.113.7", "203.0.113.7");
        // Only the mapped form (::ffff:0:0/96) is IPv4; the deprecated compatible form is not.
        check("::203.0.113.7", "::/64");
    }

    #[test]
    fn addresses_in_one_64_share_a_key() {
        let a: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff"
            .parse()
            .expect("test address");
        let b: IpAddr = "2001:db8:1:2::".parse().expect("test address");
        assert_eq!(ip_key(a), ip_key(b));
    }
}
