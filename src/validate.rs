//! The rules for what mail the queue accepts: address and routing-key syntax
//! and the size limits of one message. Shared by [`crate::Queue::enqueue`] and
//! [`crate::MessageBuilder`], so the two cannot drift. Depends on `error` and `types` only.

use crate::error::{truncated, Error, Result};
use crate::types::{Options, Recipient};
use std::time::Duration;

/// Longest accepted address.
pub const MAX_ADDRESS: usize = 512;
/// Longest accepted domain / routing key.
pub const MAX_DOMAIN: usize = 255;

/// Checks a recipient address and returns its default routing key
/// (the domain, lower-cased, trailing dot removed).
pub fn recipient(addr: &str) -> Result<String> {
    let bad = |reason| Error::InvalidAddress {
        address: truncated(addr),
        reason,
    };
    if addr.is_empty() {
        return Err(bad("empty address"));
    }
    if addr.len() > MAX_ADDRESS {
        return Err(bad("longer than 512 bytes"));
    }
    if addr.bytes().any(|b| b == 0) {
        return Err(bad("contains a NUL byte"));
    }
    if addr.bytes().any(|b| b < 0x20 || b == 0x7f || b == b' ') {
        return Err(bad("contains whitespace or control characters"));
    }
    let at = addr.rfind('@').ok_or_else(|| bad("no '@'"))?;
    if at == 0 {
        return Err(bad("empty local part"));
    }
    let domain = &addr[at + 1..];
    if domain.is_empty() {
        return Err(bad("empty domain"));
    }
    if domain.len() > MAX_DOMAIN {
        return Err(bad("domain longer than 255 bytes"));
    }
    let key = normalize_key(domain).map_err(|_| bad("domain is not a valid routing key"))?;
    Ok(key)
}

/// Checks an envelope sender; the empty (null) sender is allowed.
pub fn sender(addr: &str) -> Result<()> {
    if addr.is_empty() {
        return Ok(());
    }
    recipient(addr).map(|_| ())
}

/// Normalises a routing key: lower-case, trailing dot removed, ≤ 255 bytes, no NUL or space.
pub fn normalize_key(key: &str) -> Result<String> {
    let bad = |reason| Error::InvalidRoutingKey {
        key: truncated(key),
        reason,
    };
    let k = key.strip_suffix('.').unwrap_or(key);
    if k.is_empty() {
        return Err(bad("empty"));
    }
    if k.len() > MAX_DOMAIN {
        return Err(bad("longer than 255 bytes"));
    }
    if k.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(bad("contains NUL or control characters"));
    }
    Ok(k.to_ascii_lowercase())
}

/// Longest metadata blob accepted.
pub const MAX_META: usize = 64 * 1024;

/// The most recipients one message may have under `opts`.
pub fn max_recipients(opts: &Options) -> usize {
    opts.max_recipients.min(u16::MAX as usize)
}

/// Checks that a message may have `n` recipients.
pub fn recipient_count(opts: &Options, n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::NoRecipients);
    }
    limit("recipient list", n, max_recipients(opts))
}

/// Checks a body length against `opts.max_body`.
pub fn body_len(opts: &Options, len: usize) -> Result<()> {
    limit("body", len, opts.max_body)
}

/// Checks a metadata length against [`MAX_META`].
pub fn meta_len(len: usize) -> Result<()> {
    limit("metadata", len, MAX_META)
}

fn limit(what: &'static str, len: usize, limit: usize) -> Result<()> {
    if len > limit {
        return Err(Error::TooLarge { what, len, limit });
    }
    Ok(())
}

/// Checks one recipient and returns its routing key (the route if given,
/// normalised, else the address's domain).
pub fn route(r: &Recipient) -> Result<String> {
    let domain = recipient(&r.address)?;
    match &r.route {
        Some(k) => normalize_key(k),
        None => Ok(domain),
    }
}

/// Checks the options a queue is opened with.
pub fn options(o: &Options) -> Result<()> {
    let bad = |s: &str| Err(Error::InvalidOption(s.to_string()));
    if o.segment_size < 4096 || o.segment_size > (1 << 31) {
        return bad("segment_size must be between 4 KiB and 2 GiB");
    }
    if o.max_body > (1 << 30) {
        return bad("max_body must be at most 1 GiB");
    }
    if o.max_recipients == 0 || o.max_recipients > u16::MAX as usize {
        return bad("max_recipients must be between 1 and 65535");
    }
    if o.batch_recipients == 0 || o.deliveries_per_session == 0 {
        return bad("batch_recipients and deliveries_per_session must be at least 1");
    }
    if o.concurrency.limit == 0 {
        return bad("concurrency.limit must be at least 1");
    }
    if !(0.0..=1.0).contains(&o.compact_below) {
        return bad("compact_below must be within 0..=1");
    }
    if o.checkpoint_bytes < 4096 {
        return bad(
            "checkpoint_bytes must be at least 4096 (u64::MAX disables automatic checkpoints)",
        );
    }
    if o.lease_ttl < Duration::from_secs(1) {
        return bad("lease_ttl must be at least 1 s (a session silent for longer loses its slot)");
    }
    if o.min_backoff < Duration::from_secs(1) {
        return bad("min_backoff must be at least 1 s");
    }
    if o.min_backoff > o.max_backoff {
        return bad("min_backoff must not exceed max_backoff");
    }
    if o.lifetime < Duration::from_secs(1) {
        return bad("lifetime must be at least 1 s (Postfix's default is 5 days)");
    }
    if o.lifetime.as_secs() > u32::MAX as u64 || o.max_backoff.as_secs() > u32::MAX as u64 {
        return bad("lifetime and max_backoff must fit in 32-bit seconds");
    }
    let warn = o.delay_warning.as_secs();
    if !o.delay_warning.is_zero() && (warn == 0 || warn >= o.lifetime.as_secs()) {
        return bad("delay_warning must be at least 1 s and shorter than lifetime (or zero for no warnings)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert_eq!(recipient("Bob@Example.COM.").unwrap(), "example.com");
        assert!(recipient("nobody").is_err());
        assert!(recipient("a\0b@x").is_err());
        let long = format!("a@{}", "x".repeat(4096));
        assert!(recipient(&long).is_err());
        assert!(sender("").is_ok());
    }
}
