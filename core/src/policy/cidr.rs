//! Source-address allow-lists: CIDR blocks parsed and matched with `std::net` only.
//!
//! IPv4 blocks also match IPv4-mapped IPv6 addresses (`::ffff:203.0.113.7`): a
//! dual-stack listener reports IPv4 clients that way, and a partner's egress
//! address must not stop matching because of how the socket was opened. The
//! reverse does not hold: an IPv6 block (even `::/0`) never matches a plain IPv4
//! address, so `0.0.0.0/0` and `::/0` are listed separately when both are meant.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A validated CIDR block: the network address has no bits set past the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

/// Why a CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrError {
    /// The part before `/` is not an IPv4 or IPv6 address.
    Address,
    /// The part after `/` is not a decimal number within the family's width.
    PrefixLength { max: u8 },
    /// Bits are set past the prefix: almost always a typo for `network`.
    HostBits { network: String },
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CidrError::Address => f.write_str("is not an IPv4 or IPv6 address or CIDR block"),
            CidrError::PrefixLength { max } => {
                write!(f, "has a prefix length that is not a number from 0 to {max}")
            }
            CidrError::HostBits { network } => {
                write!(f, "has bits set past the prefix length; did you mean {network}?")
            }
        }
    }
}

impl std::error::Error for CidrError {}

impl Cidr {
    /// Parses `ADDRESS/LENGTH`, or a bare address as a single-host block
    /// (`/32` or `/128`).
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let (address, length) = match s.split_once('/') {
            Some((address, length)) => (address, Some(length)),
            None => (s, None),
        };
        let network: IpAddr = address.parse().map_err(|_| CidrError::Address)?;
        let max = match network {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix_len = match length {
            None => max,
            Some(length) => {
                // `u8::from_str` accepts a leading '+'; a CIDR length is digits only.
                if length.is_empty() || length.len() > 3 || !length.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CidrError::PrefixLength { max });
                }
                match length.parse::<u8>() {
                    Ok(n) if n <= max => n,
                    _ => return Err(CidrError::PrefixLength { max }),
                }
            }
        };
        let cidr = Cidr { network, prefix_len };
        let masked = cidr.mask(network);
        if masked != network {
            return Err(CidrError::HostBits { network: Cidr { network: masked, prefix_len }.to_string() });
        }
        Ok(cidr)
    }

    /// Whether `addr` lies in this block (see the module docs for mapped addresses).
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => mask_v4(a, self.prefix_len) == net,
            (IpAddr::V6(net), IpAddr::V6(a)) => mask_v6(a, self.prefix_len) == net,
            (IpAddr::V4(net), IpAddr::V6(a)) => {
                a.to_ipv4_mapped().is_some_and(|a| mask_v4(a, self.prefix_len) == net)
            }
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }

    fn mask(&self, addr: IpAddr) -> IpAddr {
        match addr {
            IpAddr::V4(a) => IpAddr::V4(mask_v4(a, self.prefix_len)),
            IpAddr::V6(a) => IpAddr::V6(mask_v6(a, self.prefix_len)),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

fn mask_v4(addr: Ipv4Addr, prefix_len: u8) -> Ipv4Addr {
    // A shift by the full width is `None` (it would overflow): that is the /0 mask.
    let mask = u32::MAX.checked_shl(32_u32.saturating_sub(u32::from(prefix_len))).unwrap_or(0);
    Ipv4Addr::from(u32::from(addr) & mask)
}

fn mask_v6(addr: Ipv6Addr, prefix_len: u8) -> Ipv6Addr {
    let mask = u128::MAX.checked_shl(128_u32.saturating_sub(u32::from(prefix_len))).unwrap_or(0);
    Ipv6Addr::from(u128::from(addr) & mask)
}

/// Whether `source` lies in any of `blocks`. An unknown source matches nothing:
/// a request whose origin cannot be established never passes an allow-list.
pub fn any_contains(blocks: &[Cidr], source: Option<IpAddr>) -> bool {
    source.is_some_and(|addr| blocks.iter().any(|b| b.contains(addr)))
}

/// The IP of a connection address as Envoy reports it in the `source.address`
/// property: `203.0.113.7:54321`, `[2001:db8::7]:54321`, or an address without a
/// port. Anything else (a Unix socket path, an empty string) is `None`.
pub fn parse_source_address(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(socket) = s.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    s.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    #[test]
    fn ipv4_blocks() {
        let block = cidr("203.0.113.0/24");
        assert!(block.contains(ip("203.0.113.0")));
        assert!(block.contains(ip("203.0.113.255")));
        assert!(!block.contains(ip("203.0.114.0")));
        assert!(!block.contains(ip("203.0.112.255")));
        let odd = cidr("10.0.0.0/9");
        assert!(odd.contains(ip("10.127.255.255")));
        assert!(!odd.contains(ip("10.128.0.0")));
    }

    #[test]
    fn ipv4_edge_prefixes() {
        let all = cidr("0.0.0.0/0");
        assert!(all.contains(ip("0.0.0.0")));
        assert!(all.contains(ip("255.255.255.255")));
        assert!(!all.contains(ip("::1")), "an IPv4 block never matches plain IPv6");
        let host = cidr("192.0.2.7/32");
        assert!(host.contains(ip("192.0.2.7")));
        assert!(!host.contains(ip("192.0.2.6")));
        assert!(!host.contains(ip("192.0.2.8")));
        assert_eq!(cidr("192.0.2.7"), host, "a bare address is a /32");
    }

    #[test]
    fn ipv6_blocks_and_edges() {
        let block = cidr("2001:db8::/32");
        assert!(block.contains(ip("2001:db8::1")));
        assert!(block.contains(ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!block.contains(ip("2001:db9::")));
        let all = cidr("::/0");
        assert!(all.contains(ip("::")));
        assert!(all.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!all.contains(ip("192.0.2.1")), "::/0 does not match IPv4");
        let host = cidr("2001:db8::7/128");
        assert!(host.contains(ip("2001:db8::7")));
        assert!(!host.contains(ip("2001:db8::6")));
        assert!(!host.contains(ip("2001:db8::8")));
        assert_eq!(cidr("2001:db8::7"), host, "a bare address is a /128");
        let odd = cidr("2001:db8:8000::/33");
        assert!(odd.contains(ip("2001:db8:ffff::1")));
        assert!(!odd.contains(ip("2001:db8:7fff::1")));
    }

    #[test]
    fn ipv4_mapped_ipv6_matches_ipv4_blocks() {
        let block = cidr("203.0.113.0/24");
        assert!(block.contains(ip("::ffff:203.0.113.9")));
        assert!(!block.contains(ip("::ffff:203.0.114.9")));
        // IPv4-compatible (deprecated, not mapped) addresses are plain IPv6.
        assert!(!block.contains(ip("::203.0.113.9")));
        // A mapped address still matches IPv6 blocks written in mapped form.
        assert!(cidr("::ffff:0:0/96").contains(ip("::ffff:203.0.113.9")));
    }

    #[test]
    fn malformed_blocks_are_refused() {
        for bad in [
            "",
            "/24",
            "203.0.113.0/",
            "203.0.113.0/33",
            "203.0.113.0/+24",
            "203.0.113.0/-1",
            "203.0.113.0/2 4",
            "203.0.113.0/0024",
            "203.0.113/24",
            "203.0.113.0.1/24",
            "203.0.113.256/32",
            "010.0.0.0/8",
            "2001:db8::/129",
            "2001:db8:::/32",
            "[2001:db8::]/32",
            "example.com/24",
            " 203.0.113.0/24",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn host_bits_past_the_prefix_are_refused_with_a_hint() {
        assert_eq!(
            Cidr::parse("203.0.113.7/24"),
            Err(CidrError::HostBits { network: "203.0.113.0/24".into() })
        );
        assert_eq!(
            Cidr::parse("2001:db8::1/32"),
            Err(CidrError::HostBits { network: "2001:db8::/32".into() })
        );
        assert!(Cidr::parse("0.0.0.1/0").is_err());
    }

    #[test]
    fn source_addresses_as_envoy_reports_them() {
        assert_eq!(parse_source_address("127.0.0.1:54321"), Some(ip("127.0.0.1")));
        assert_eq!(parse_source_address("[::1]:54321"), Some(ip("::1")));
        assert_eq!(parse_source_address("[::ffff:203.0.113.9]:80"), Some(ip("::ffff:203.0.113.9")));
        assert_eq!(parse_source_address("192.0.2.1"), Some(ip("192.0.2.1")));
        assert_eq!(parse_source_address("2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(parse_source_address("[2001:db8::1]"), Some(ip("2001:db8::1")));
    }

    #[test]
    fn malformed_source_addresses_are_unknown() {
        for bad in [
            "",
            "/var/run/envoy.sock",
            "localhost:80",
            "127.0.0.1:",
            "127.0.0.1:99999",
            "::1:54321:",
            "[::1",
            "[127.0.0.1]:80",
            "256.0.0.1:80",
        ] {
            assert_eq!(parse_source_address(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn unknown_source_matches_no_allow_list() {
        let blocks = [cidr("0.0.0.0/0"), cidr("::/0")];
        assert!(!any_contains(&blocks, None));
        assert!(any_contains(&blocks, Some(ip("192.0.2.1"))));
        assert!(any_contains(&blocks, Some(ip("2001:db8::1"))));
        assert!(!any_contains(&[], Some(ip("192.0.2.1"))));
    }
}
