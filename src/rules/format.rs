//! Value formats the rules check: iSCSI names (RFC 3720), portals, UUIDs, DNS-1123 names.
//!
//! Hand-written checks rather than regexes: they run on every admission request, they give
//! a precise reason for the user, and they are easy to table-test.

/// RFC 3720 section 3.2.6.1: an iSCSI name is at most 223 bytes.
pub const ISCSI_NAME_MAX_BYTES: usize = 223;
/// Ironic's `volume_id` column is 36 characters.
pub const VOLUME_ID_MAX: usize = 36;
/// DNS-1123 subdomain length limit (Secret names).
pub const DNS1123_SUBDOMAIN_MAX: usize = 253;

/// Checks an iSCSI name (`iqn.`, `eui.` or `naa.` format, RFC 3720 section 3.2.6.3).
///
/// iSCSI names are case-insensitive (RFC 3722 maps them to lower case), so the check runs
/// on the lower-cased name; callers warn about upper case separately. The length limit is
/// the caller's to report (it is a different error type). Returns why the name is invalid.
pub fn iscsi_name(name: &str) -> Result<(), &'static str> {
    // Lower-case names (the usual case) are checked without a copy.
    let lower: std::borrow::Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
        name.to_ascii_lowercase().into()
    } else {
        name.into()
    };
    if let Some(rest) = lower.strip_prefix("iqn.") {
        iqn_body(rest)
    } else if let Some(hex) = lower.strip_prefix("eui.") {
        if hex.len() == 16 && is_hex(hex) {
            Ok(())
        } else {
            Err("eui. names need exactly 16 hex digits")
        }
    } else if let Some(hex) = lower.strip_prefix("naa.") {
        if (hex.len() == 16 || hex.len() == 32) && is_hex(hex) {
            Ok(())
        } else {
            Err("naa. names need 16 or 32 hex digits")
        }
    } else {
        Err("must start with \"iqn.\", \"eui.\" or \"naa.\" (RFC 3720)")
    }
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `yyyy-mm.reversed.domain[:unique]`, already lower case.
fn iqn_body(rest: &str) -> Result<(), &'static str> {
    const DATE: &str = "iqn. names need a yyyy-mm date after \"iqn.\" (e.g. iqn.2004-10.com.example:host-0)";
    let b = rest.as_bytes();
    if b.len() < 8
        || !b[..4].iter().all(u8::is_ascii_digit)
        || b[4] != b'-'
        || !b[5..7].iter().all(u8::is_ascii_digit)
    {
        return Err(DATE);
    }
    let month = (b[5] - b'0') * 10 + (b[6] - b'0');
    if !(1..=12).contains(&month) || &rest[..4] == "0000" {
        return Err(DATE);
    }
    if b[7] != b'.' {
        return Err("iqn. names need a naming authority (reversed domain name) after the date");
    }
    let (authority, unique) = split_at_colon(&rest[8..]);
    if !reversed_domain(authority.as_bytes()) {
        return Err("iqn. naming authority must be a reversed domain name (e.g. com.example)");
    }
    match unique {
        Some("") => Err("iqn. names may not end with \":\""),
        Some(u) if !u.bytes().all(iscsi_char) => {
            Err("iSCSI names may only contain letters, digits, '-', '.' and ':'")
        }
        _ => Ok(()),
    }
}

/// `s` split at its first `:` (a byte search: cheaper than `split_once` for short strings).
fn split_at_colon(s: &str) -> (&str, Option<&str>) {
    match s.bytes().position(|c| c == b':') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

/// Non-empty, dot-separated, non-empty labels of `[a-z0-9-]`, in one pass.
fn reversed_domain(a: &[u8]) -> bool {
    let mut prev = b'.';
    for &c in a {
        if c == b'.' {
            if prev == b'.' {
                return false;
            }
        } else if !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-') {
            return false;
        }
        prev = c;
    }
    prev != b'.'
}

fn iscsi_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'.' | b':')
}

/// Checks an iSCSI portal: `host` or `host:port`, host an IPv4 address or a DNS name.
///
/// IPv6 literals are rejected: Ironic's iPXE formatter splits the portal on `:`.
pub fn portal(portal: &str) -> Result<(), &'static str> {
    let (host, port) = split_at_colon(portal);
    if portal.bytes().any(|c| c == b'[') || port.is_some_and(|p| p.bytes().any(|c| c == b':')) {
        return Err("IPv6 literals are not supported (Ironic's iPXE template splits the portal on ':')");
    }
    if let Some(p) = port
        && !(1..=5).contains(&p.len())
            | !p.bytes().all(|c| c.is_ascii_digit())
            | !matches!(p.parse::<u32>(), Ok(1..=65535))
    {
        return Err("port must be a number between 1 and 65535");
    }
    if host.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        return host
            .parse::<std::net::Ipv4Addr>()
            .map(|_| ())
            .map_err(|_| "host must be an IPv4 address or a DNS name");
    }
    if dns_name(&host.to_ascii_lowercase()) {
        Ok(())
    } else {
        Err("host must be an IPv4 address or a DNS name")
    }
}

/// A DNS-1123 subdomain: lower-case labels of `[a-z0-9-]`, alphanumeric at both ends, dot
/// separated, at most 253 characters in all and 63 per label.
pub fn dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= DNS1123_SUBDOMAIN_MAX
        && name.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// A UUID in its canonical 8-4-4-4-12 hex form (Cinder volume ids).
pub fn uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iscsi_names() {
        let ok = [
            "iqn.2004-10.com.example:host-0",
            "iqn.2010-10.openstack.org.nodeid",
            "iqn.2001-04.com.example",
            "IQN.2004-10.COM.EXAMPLE:HOST",
            "iqn.1992-01.com.example:storage:diskarrays-sn-a8675309",
            "eui.02004567A425678D",
            "naa.52004567BA64678D",
            "naa.62004567BA64678D0123456789ABCDEF",
        ];
        for n in ok {
            assert_eq!(iscsi_name(n), Ok(()), "{n}");
        }
        let bad = [
            "",
            "host-0",
            "iqn.",
            "iqn.2004.com.example",
            "iqn.2004-13.com.example",
            "iqn.2004-00.com.example",
            "iqn.0000-01.com.example",
            "iqn.20a4-10.com.example",
            "iqn.2004-10",
            "iqn.2004-10.",
            "iqn.2004-10.com..example",
            "iqn.2004-10.com.example:",
            "iqn.2004-10.com.example:a b",
            "iqn.2004-10.com_example:x",
            "eui.0200",
            "eui.02004567A425678G",
            "naa.52004567BA64678D00",
            "naa.",
        ];
        for n in bad {
            assert!(iscsi_name(n).is_err(), "{n} should be invalid");
        }
    }

    #[test]
    fn portals() {
        for p in [
            "192.0.2.10",
            "192.0.2.10:3260",
            "san.example.com",
            "SAN.example.com:1",
            "a:65535",
        ] {
            assert_eq!(portal(p), Ok(()), "{p}");
        }
        for p in [
            "",
            "[fd00::1]:3260",
            "fd00::1",
            "192.0.2.10:0",
            "192.0.2.10:65536",
            "192.0.2.10:",
            "192.0.2.10:x",
            "256.0.0.1",
            "1.2.3",
            "host name",
            "-bad.example.com",
        ] {
            assert!(portal(p).is_err(), "{p} should be invalid");
        }
    }

    #[test]
    fn uuids_and_dns_names() {
        assert!(uuid("0b3f0c53-5c36-4b43-9d0d-6c3b8d1f1e2a"));
        assert!(uuid("0B3F0C53-5C36-4B43-9D0D-6C3B8D1F1E2A"));
        assert!(!uuid("0b3f0c53-5c36-4b43-9d0d-6c3b8d1f1e2"));
        assert!(!uuid("0b3f0c535c364b439d0d6c3b8d1f1e2a0000"));
        assert!(dns_name("host-0-chap"));
        assert!(dns_name("a.b-c.d"));
        for bad in ["", "Host", "-a", "a-", "a..b", "a_b", &"a".repeat(254)] {
            assert!(!dns_name(bad), "{bad}");
        }
    }
}
