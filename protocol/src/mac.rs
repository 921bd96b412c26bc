//! MAC addresses as the protocol writes them ([`crate::GuestInterface::mac`]): six hex bytes
//! separated by `:` (`-` also accepted when parsing), lower case when formatted.

/// Parses `aa:bb:cc:dd:ee:ff` (hex digits, either case; `-` also accepted as separator).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly_and_format_lowercase() {
        let mac = parse_mac("02:AB:cd:00:11:ff").expect("valid");
        assert_eq!(mac, [0x02, 0xab, 0xcd, 0x00, 0x11, 0xff]);
        assert_eq!(format_mac(&mac), "02:ab:cd:00:11:ff");
        assert_eq!(parse_mac("02-ab-cd-00-11-ff"), Some(mac));
        for bad in [
            "",
            "02:ab:cd:00:11",
            "02:ab:cd:00:11:ff:00",
            "2:ab:cd:00:11:ff",
            "+2:ab:cd:00:11:ff",
            "zz:ab:cd:00:11:ff",
            "02:ab:cd:00:11:+f",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
