//! The few header operations a relay needs: its own `Received:` line and the
//! hop count of a message (loop detection).

use std::net::IpAddr;

/// The `Received:` header this relay prepends (RFC 5321 §4.4), with the
/// protocol as RFC 3848 names it.
pub(crate) fn received(helo: &str, ip: IpAddr, me: &str, esmtp: bool, tls: bool) -> String {
    let proto = match (esmtp, tls) {
        (true, true) => "ESMTPS",
        (true, false) => "ESMTP",
        (false, _) => "SMTP",
    };
    let helo: String = helo
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    format!(
        "Received: from {helo} ([{ip}])\r\n\tby {me} (mailq-relay) with {proto};\r\n\t{}\r\n",
        rfc5322_now()
    )
}

/// Now, as an RFC 5322 date.
pub(crate) fn rfc5322_now() -> String {
    chrono::Utc::now().to_rfc2822()
}

/// How many `Received:` fields the header section of `msg` has.
pub(crate) fn count_received(msg: &[u8]) -> usize {
    let mut n = 0;
    for line in msg.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:") {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_received_in_the_header_only() {
        let m = b"Received: a\r\nreceived: b\r\n\tcont\r\nSubject: x\r\n\r\nReceived: body\r\n";
        assert_eq!(count_received(m), 2);
        assert_eq!(count_received(b""), 0);
    }

    #[test]
    fn received_line_is_folded_and_clean() {
        let r = received(
            "cli\r\nent",
            "192.0.2.1".parse().unwrap(),
            "mx.example",
            true,
            false,
        );
        assert!(r.starts_with("Received: from cli??ent ([192.0.2.1])\r\n\tby mx.example (mailq-relay) with ESMTP;\r\n\t"));
        assert!(r.ends_with("\r\n"));
        assert_eq!(r.matches("\r\n").count(), 3);
    }
}
