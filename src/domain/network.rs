//! Networks: which carrier egress an address AWS reports belongs to (issue 9 item 8).
//!
//! LTE screens reach AWS IoT Core through their carrier's NAT, so the `ipAddress` of a
//! `connected` presence event is the carrier's egress, not the device. A *network* is what
//! several such addresses have in common:
//!
//! - a **named network** from `[networks.<name>] prefixes = ["203.0.113.0/24", "2001:db8::/32"]`;
//!   an address matches the named network with the **longest** matching prefix;
//! - otherwise the **default network** of the address: the /16 of an IPv4 address (named
//!   `203.0/16`) or the /32 of an IPv6 address (named `2001:db8::/32`). A carrier's NAT pool
//!   is usually a handful of addresses within one /16 (or one /32 allocation), so these
//!   defaults group one carrier's egress without any configuration.
//!
//! Contract (unit and property tests below):
//! - [`Networks::new`] refuses, naming the key (`networks.carrier-a.prefixes[1]`): a prefix
//!   that is not `address/length`, a length beyond the family's, host bits set
//!   (`203.0.113.5/24` is a typo for something), an empty or over-long name, the same prefix
//!   twice (in one network or two: which network it is would be a coin toss), and a prefix
//!   nested in another of the *same* network (redundant, almost always a typo). A prefix of
//!   one network nested in another network's is allowed: the longest match wins, which is how
//!   a carrier's special APN inside its larger block is described.
//! - [`parse_address`] takes what AWS sends deliberately: a plain IPv4 or IPv6 address; an
//!   address with a port (`203.0.113.5:4321`, `[2001:db8::1]:443`) loses the port; an
//!   IPv4-mapped IPv6 address (`::ffff:203.0.113.5`) is the IPv4 address it maps (the same
//!   carrier NAT may be reported in either form). Anything else (empty, whitespace, zone ids,
//!   control characters, hostnames, over-long text) is [`BadAddress`], never a panic: the
//!   caller counts and skips it.
//! - Every address in a named prefix maps to that network unless a longer prefix of another
//!   network contains it; every address outside all named prefixes maps to its default
//!   network; the mapping is a pure function of the configuration and the address.
//!
//! This module is reusable on purpose: a later issue groups carrier outages by these networks.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Longest network name accepted (a config key; stored in `device_networks.network`).
pub const MAX_NAME: usize = 64;

/// Longest address text looked at: AWS's are at most 47 characters (`[v6]:port`); anything far
/// longer is hostile or broken and is refused before parsing.
const MAX_ADDRESS: usize = 64;

/// An address prefix (CIDR), host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// The prefix of `addr` with `len` bits (host bits cleared). `None` if `len` is beyond the
    /// address family's width.
    pub fn of(addr: IpAddr, len: u8) -> Option<Prefix> {
        match addr {
            IpAddr::V4(a) if len <= 32 => Some(Prefix {
                addr: IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask4(len))),
                len,
            }),
            IpAddr::V6(a) if len <= 128 => Some(Prefix {
                addr: IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask6(len))),
                len,
            }),
            _ => None,
        }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `addr` is inside this prefix (never across address families).
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.addr, addr) {
            (IpAddr::V4(p), IpAddr::V4(a)) => u32::from(a) & mask4(self.len) == u32::from(p),
            (IpAddr::V6(p), IpAddr::V6(a)) => u128::from(a) & mask6(self.len) == u128::from(p),
            _ => false,
        }
    }

    /// Whether `other` lies wholly inside this prefix (or is equal to it).
    pub fn covers(&self, other: &Prefix) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }
}

fn mask4(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = String;

    /// `address/length` with the host bits zero; the error says what was wrong.
    fn from_str(s: &str) -> Result<Prefix, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("expected a prefix like 203.0.113.0/24, got {s:?}"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("expected a prefix like 203.0.113.0/24, got {s:?}"))?;
        // `u8::from_str` accepts a leading '+'; a prefix length never has one.
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) || len.len() > 3 {
            return Err(format!("expected a prefix length after '/', got {s:?}"));
        }
        let len: u8 = len
            .parse()
            .map_err(|_| format!("expected a prefix length after '/', got {s:?}"))?;
        let p = Prefix::of(addr, len)
            .ok_or_else(|| format!("prefix length {len} is too long for {addr} in {s:?}"))?;
        if p.addr != addr {
            return Err(format!("{s:?} has host bits set (did you mean {p}?)"));
        }
        Ok(p)
    }
}

impl<'de> serde::Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The network an address belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Network {
    /// The configured name, or the default network's (`203.0/16`, `2001:db8::/32`).
    pub name: String,
    /// Whether it is a configured network (`false`: a default /16 or /32).
    pub named: bool,
}

/// An address AWS sent that is not one (the caller counts it and skips the event's network).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadAddress {
    Empty,
    TooLong(usize),
    /// Not an IPv4 or IPv6 address, with or without a port. Holds a printable, shortened copy
    /// for the log (control characters escaped).
    NotAnAddress(String),
}

impl fmt::Display for BadAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadAddress::Empty => write!(f, "empty address"),
            BadAddress::TooLong(n) => write!(f, "address of {n} bytes"),
            BadAddress::NotAnAddress(s) => write!(f, "not an IP address: {s}"),
        }
    }
}

/// Parse an `ipAddress` as AWS sends it (see the module contract).
pub fn parse_address(raw: &str) -> Result<IpAddr, BadAddress> {
    if raw.is_empty() {
        return Err(BadAddress::Empty);
    }
    if raw.len() > MAX_ADDRESS {
        return Err(BadAddress::TooLong(raw.len()));
    }
    let bad = || {
        let shown: String = raw.chars().take(48).collect();
        BadAddress::NotAnAddress(shown.escape_debug().to_string())
    };
    let addr = if let Ok(a) = raw.parse::<IpAddr>() {
        a
    } else if let Ok(sa) = raw.parse::<std::net::SocketAddr>() {
        // `203.0.113.5:4321` or `[2001:db8::1]:443`; a scope id (`%eth0`) is refused by the
        // parse of the bare form, so refuse it here too for one behaviour.
        if raw.contains('%') {
            return Err(bad());
        }
        sa.ip()
    } else {
        return Err(bad());
    };
    Ok(match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    })
}

/// The default network of an address: its /16 (IPv4) or /32 (IPv6).
pub fn default_network(addr: IpAddr) -> Network {
    let name = match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}/16", o[0], o[1])
        }
        IpAddr::V6(_) => Prefix::of(addr, 32)
            .expect("32 fits an IPv6 address")
            .to_string(),
    };
    Network { name, named: false }
}

/// The configured networks, checked, ready to classify addresses.
#[derive(Debug, Clone, Default)]
pub struct Networks {
    /// (prefix, network name), longest prefix first so the first match is the longest.
    prefixes: Vec<(Prefix, String)>,
}

impl Networks {
    /// Check and index `[networks]` (name → prefixes). Errors name the key.
    pub fn new<'a>(
        networks: impl IntoIterator<Item = (&'a str, &'a [Prefix])>,
    ) -> Result<Networks, String> {
        let mut all: Vec<(Prefix, String, usize)> = Vec::new();
        for (name, prefixes) in networks {
            if name.is_empty()
                || name.len() > MAX_NAME
                || name.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(format!(
                    "networks.{name}: expected a name of 1 to {MAX_NAME} characters without spaces or control characters"
                ));
            }
            if prefixes.is_empty() {
                return Err(format!(
                    "networks.{name}.prefixes: expected at least one prefix"
                ));
            }
            for (i, p) in prefixes.iter().enumerate() {
                for (q, other, j) in &all {
                    if q == p {
                        return Err(format!(
                            "networks.{name}.prefixes[{i}]: {p} is also networks.{other}.prefixes[{j}]"
                        ));
                    }
                    if other == name && (q.covers(p) || p.covers(q)) {
                        return Err(format!(
                            "networks.{name}.prefixes[{i}]: {p} overlaps {q} (prefixes[{j}]) of the same network"
                        ));
                    }
                }
                all.push((*p, name.to_string(), i));
            }
        }
        let mut prefixes: Vec<(Prefix, String)> =
            all.into_iter().map(|(p, name, _)| (p, name)).collect();
        prefixes.sort_by(|a, b| b.0.len.cmp(&a.0.len).then(a.0.cmp(&b.0)));
        Ok(Networks { prefixes })
    }

    /// The network of a parsed address: the named network of its longest matching prefix, else
    /// its default network.
    pub fn of(&self, addr: IpAddr) -> Network {
        self.prefixes
            .iter()
            .find(|(p, _)| p.contains(addr))
            .map(|(_, name)| Network {
                name: name.clone(),
                named: true,
            })
            .unwrap_or_else(|| default_network(addr))
    }

    /// The network of an address as AWS sent it.
    pub fn classify(&self, raw: &str) -> Result<(IpAddr, Network), BadAddress> {
        let addr = parse_address(raw)?;
        Ok((addr, self.of(addr)))
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }

    /// The prefixes a network name stands for: a named network's configured prefixes, or the
    /// one prefix of a default network (`203.0/16` is `203.0.0.0/16`); empty for a name that
    /// is neither (a network renamed in the configuration since it was recorded).
    pub fn prefixes_of(&self, name: &str) -> Vec<String> {
        let named: Vec<String> = self
            .prefixes
            .iter()
            .filter(|(_, n)| n == name)
            .map(|(p, _)| p.to_string())
            .collect();
        if !named.is_empty() {
            return named;
        }
        let v4 = name
            .strip_suffix("/16")
            .map(|ab| format!("{ab}.0.0/16"))
            .filter(|p| p.parse::<Prefix>().is_ok_and(|p| p.addr.is_ipv4()));
        match v4 {
            Some(p) => vec![p],
            None => name
                .parse::<Prefix>()
                .ok()
                .filter(|p| p.addr.is_ipv6() && p.len == 32)
                .map(|p| vec![p.to_string()])
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_prefixes_a_network_name_stands_for() {
        let a: Vec<Prefix> = vec![
            "198.51.100.0/24".parse().unwrap(),
            "2001:db8:1::/48".parse().unwrap(),
        ];
        let nets = Networks::new([("carrier-a", a.as_slice())]).unwrap();
        assert_eq!(
            nets.prefixes_of("carrier-a"),
            ["2001:db8:1::/48", "198.51.100.0/24"]
        );
        let addr: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(nets.prefixes_of(&nets.of(addr).name), ["203.0.0.0/16"]);
        let addr: IpAddr = "2001:db9::1".parse().unwrap();
        assert_eq!(nets.prefixes_of(&nets.of(addr).name), ["2001:db9::/32"]);
        assert!(nets.prefixes_of("carrier-gone").is_empty());
        assert!(nets.prefixes_of("999.1/16").is_empty());
        assert!(nets.prefixes_of("10.0.0.0/8").is_empty());
    }

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn nets(spec: &[(&str, &[&str])]) -> Result<Networks, String> {
        let owned: Vec<(String, Vec<Prefix>)> = spec
            .iter()
            .map(|(n, ps)| (n.to_string(), ps.iter().map(|s| p(s)).collect()))
            .collect();
        Networks::new(owned.iter().map(|(n, ps)| (n.as_str(), ps.as_slice())))
    }

    #[test]
    fn prefixes_parse_strictly() {
        assert_eq!(p("203.0.113.0/24").to_string(), "203.0.113.0/24");
        assert_eq!(p("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(p("0.0.0.0/0").prefix_len(), 0);
        for bad in [
            "203.0.113.0",
            "203.0.113.0/",
            "203.0.113.0/33",
            "2001:db8::/129",
            "203.0.113.5/24",
            "203.0.113.0/+24",
            "203.0.113.0/ 24",
            "carrier/24",
            "",
            "/",
            "203.0.113.0/0024",
        ] {
            assert!(bad.parse::<Prefix>().is_err(), "{bad:?} parsed");
        }
        assert!("203.0.113.5/24"
            .parse::<Prefix>()
            .unwrap_err()
            .contains("did you mean 203.0.113.0/24"));
    }

    #[test]
    fn addresses_as_aws_sends_them() {
        let v4: IpAddr = "203.0.113.5".parse().unwrap();
        assert_eq!(parse_address("203.0.113.5"), Ok(v4));
        assert_eq!(parse_address("203.0.113.5:4321"), Ok(v4));
        assert_eq!(parse_address("::ffff:203.0.113.5"), Ok(v4));
        assert_eq!(parse_address("[::ffff:203.0.113.5]:443"), Ok(v4));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(parse_address("2001:db8::1"), Ok(v6));
        assert_eq!(parse_address("[2001:db8::1]:443"), Ok(v6));
        assert_eq!(parse_address(""), Err(BadAddress::Empty));
        assert!(matches!(
            parse_address(&"1".repeat(5000)),
            Err(BadAddress::TooLong(5000))
        ));
        for bad in [
            " 203.0.113.5",
            "203.0.113.5 ",
            "203.0.113.5\n",
            "203.0.113.256",
            "fe80::1%eth0",
            "[fe80::1%eth0]:443",
            "example.com",
            "203.0.113.5:99999",
            "2001:db8::1:443x",
            "\u{1b}[31m203.0.113.5",
            "１２３.0.0.1",
        ] {
            assert!(parse_address(bad).is_err(), "{bad:?} parsed");
        }
        // the log gets a printable copy
        let e = parse_address("bad\u{7}\r\n").unwrap_err().to_string();
        assert!(!e.chars().any(char::is_control), "{e:?}");
    }

    #[test]
    fn default_networks_are_the_16_and_the_32() {
        let n = Networks::default();
        assert_eq!(n.classify("203.0.113.5").unwrap().1.name, "203.0/16");
        assert_eq!(n.classify("203.0.7.1:80").unwrap().1.name, "203.0/16");
        assert_eq!(n.classify("::ffff:203.0.9.9").unwrap().1.name, "203.0/16");
        assert_eq!(n.classify("203.1.0.1").unwrap().1.name, "203.1/16");
        assert_eq!(
            n.classify("2001:db8:ffff::1").unwrap().1.name,
            "2001:db8::/32"
        );
        assert_eq!(n.classify("2001:db9::1").unwrap().1.name, "2001:db9::/32");
        assert!(!n.classify("10.0.0.1").unwrap().1.named);
    }

    #[test]
    fn named_networks_group_prefixes_and_the_longest_wins() {
        let n = nets(&[
            (
                "carrier-a",
                &["203.0.113.0/24", "198.51.100.0/24", "2001:db8::/32"],
            ),
            ("carrier-a-m2m", &["203.0.113.128/25"]),
        ])
        .unwrap();
        let name = |a: &str| n.classify(a).unwrap().1.name;
        assert_eq!(name("203.0.113.5"), "carrier-a");
        assert_eq!(name("198.51.100.77"), "carrier-a");
        assert_eq!(name("2001:db8:1::5"), "carrier-a");
        assert_eq!(name("203.0.113.200"), "carrier-a-m2m");
        assert_eq!(name("203.0.114.1"), "203.0/16");
        assert!(n.classify("203.0.113.5").unwrap().1.named);
    }

    #[test]
    fn bad_configurations_name_the_key() {
        let e = nets(&[("a", &["203.0.113.0/24"]), ("b", &["203.0.113.0/24"])]).unwrap_err();
        assert!(
            e.contains("networks.b.prefixes[0]") && e.contains("networks.a.prefixes[0]"),
            "{e}"
        );
        let e = nets(&[("a", &["203.0.113.0/24", "203.0.113.0/25"])]).unwrap_err();
        assert!(e.starts_with("networks.a.prefixes[1]"), "{e}");
        let e = nets(&[("a", &["203.0.113.0/25", "203.0.113.0/24"])]).unwrap_err();
        assert!(e.starts_with("networks.a.prefixes[1]"), "{e}");
        let e = nets(&[("a", &[])]).unwrap_err();
        assert!(e.starts_with("networks.a.prefixes"), "{e}");
        let e = nets(&[("a b", &["203.0.113.0/24"])]).unwrap_err();
        assert!(e.starts_with("networks.a b"), "{e}");
        // v4 and v6 never overlap, nested across networks is allowed
        nets(&[("a", &["0.0.0.0/0", "::/0"]), ("b", &["10.0.0.0/8"])]).unwrap();
    }

    fn any_v4() -> impl Strategy<Value = Ipv4Addr> {
        any::<u32>().prop_map(Ipv4Addr::from)
    }

    proptest! {
        /// Every address inside a named prefix maps to that network (no longer prefix exists).
        #[test]
        fn every_address_in_a_prefix_maps_to_its_network(
            base in any_v4(), len in 8u8..=32, host in any::<u32>(), other in any_v4(),
        ) {
            let prefix = Prefix::of(IpAddr::V4(base), len).unwrap();
            let n = Networks::new([("carrier-a", std::slice::from_ref(&prefix))]).unwrap();
            let inside = u32::from(base) & mask4(len) | (host & !mask4(len));
            let inside = IpAddr::V4(Ipv4Addr::from(inside));
            prop_assert!(prefix.contains(inside));
            prop_assert_eq!(n.of(inside).name, "carrier-a");
            // the same address written with a port or IPv4-mapped lands on the same network
            prop_assert_eq!(n.classify(&format!("{inside}:443")).unwrap().1.name, "carrier-a");
            prop_assert_eq!(n.classify(&format!("::ffff:{inside}")).unwrap().1.name, "carrier-a");
            let outside = IpAddr::V4(other);
            if !prefix.contains(outside) {
                prop_assert_eq!(n.of(outside), default_network(outside));
            }
        }

        /// The default network is the /16: two addresses share it exactly when their first two
        /// octets agree.
        #[test]
        fn default_is_the_16(a in any_v4(), b in any_v4()) {
            let n = Networks::default();
            let same = a.octets()[..2] == b.octets()[..2];
            prop_assert_eq!(n.of(IpAddr::V4(a)) == n.of(IpAddr::V4(b)), same);
        }

        /// IPv6: the /32 is the default, and any address inside a named v6 prefix maps to it.
        #[test]
        fn v6_default_and_named(a in any::<u128>(), b in any::<u128>(), len in 16u8..=64) {
            let (x, y) = (IpAddr::V6(Ipv6Addr::from(a)), IpAddr::V6(Ipv6Addr::from(b)));
            // skip the IPv4-mapped block: those are IPv4 addresses
            prop_assume!(Ipv6Addr::from(a).to_ipv4_mapped().is_none());
            prop_assume!(Ipv6Addr::from(b).to_ipv4_mapped().is_none());
            let n = Networks::default();
            prop_assert_eq!(n.of(x) == n.of(y), a >> 96 == b >> 96);
            let prefix = Prefix::of(x, len).unwrap();
            let named = Networks::new([("v6", std::slice::from_ref(&prefix))]).unwrap();
            prop_assert_eq!(named.of(x).name, "v6");
            prop_assert_eq!(named.classify(&format!("[{x}]:8883")).unwrap().1.name, "v6");
        }

        /// Whatever text arrives, classification returns (never panics).
        #[test]
        fn any_text_is_handled(s in ".{0,80}") {
            let _ = Networks::default().classify(&s);
        }
    }
}
