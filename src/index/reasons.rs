//! The bounded cache of last-error texts per message shard: interned and
//! refcounted; beyond [`REASON_CACHE_BYTES`] a text is kept in its
//! [`normalize_reason`] form (transaction ids and addresses masked) or not at
//! all ([`REASON_NOT_KEPT`]). The exact text always stays in the log.
//! Depends on the rest of `index`.

use super::*;
use std::hash::BuildHasher;

/// One interned reason text.
pub(super) struct Reason {
    pub(super) text: Box<str>,
    /// Recipients using it (0: free id).
    pub(super) refs: u32,
    /// Low 31 bits of its hash (its home in the table), and [`NORMALISED`].
    pub(super) hash: u32,
}

/// Flag in [`Reason::hash`]: the entry holds a [`normalize_reason`] form,
/// shared by recipients whose exact texts differ. An exact text and an equal
/// normalised one are different entries.
const NORMALISED: u32 = 1 << 31;

/// Heap bytes the allocator really uses for a `len`-byte allocation
/// (glibc malloc: 8 bytes of header, 16-byte granularity, 32 at least).
fn heap_bytes(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        ((len + 8).div_ceil(16) * 16).max(32)
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':')
}

/// Whether a token (punctuation trimmed) looks like a per-transaction value.
fn looks_like_id(tok: &str) -> bool {
    if tok.len() < 8 {
        return false;
    }
    let (mut digit, mut letter, mut run, mut max_run) = (false, false, 0, 0);
    for b in tok.bytes() {
        if b.is_ascii_digit() {
            digit = true;
            run += 1;
            max_run = max_run.max(run);
        } else {
            letter |= b.is_ascii_alphabetic();
            run = 0;
        }
    }
    digit && (letter || max_run >= 8)
}

/// The form in which replies that differ only by per-transaction values share
/// one cache entry: every token — a run of ASCII letters, digits and `._-:`,
/// leading and trailing `._-:` aside — of at least 8 characters that contains
/// a digit and either a letter or a run of 8 digits is replaced by `…`.
/// Queue ids, server names with digits, hex and base-36 ids, timestamps and
/// IPv6 addresses go; reply codes (`4.7.28`, `[TSS04]`, `(S77714)`), IPv4
/// addresses, words and URLs without digits stay. So Gmail's
/// `451-4.7.28 … d2e1a72f3ef5c-6b1f0bcb4fasm2218311a12 - gsmtp` replies of
/// different transactions normalise to the same text.
pub fn normalize_reason(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let s = i;
        if is_token_byte(b[i]) {
            while i < b.len() && is_token_byte(b[i]) {
                i += 1;
            }
            // Token bytes are ASCII, so `s` and `i` are char boundaries.
            let tok = &text[s..i];
            let punct = |c: char| matches!(c, '.' | '_' | '-' | ':');
            let start = tok.trim_start_matches(punct);
            let core = start.trim_end_matches(punct);
            if looks_like_id(core) {
                out.push_str(&tok[..tok.len() - start.len()]);
                out.push('…');
                out.push_str(&start[core.len()..]);
            } else {
                out.push_str(tok);
            }
        } else {
            while i < b.len() && !is_token_byte(b[i]) {
                i += 1;
            }
            out.push_str(&text[s..i]);
        }
    }
    out
}

impl MsgShard {
    /// Sets the last-error text of a recipient (interned, refcounted). Within
    /// [`REASON_CACHE_BYTES`] the text is kept exactly; beyond, in its
    /// [`normalize_reason`] form, or not at all ([`REASON_NOT_KEPT`]).
    pub fn set_reason_text(&mut self, rid: u32, text: &str) {
        let id = self.intern_reason(text);
        self.set_reason(rid, id);
    }

    /// Interns `text` (one more reference) and returns its id.
    fn intern_reason(&mut self, text: &str) -> u32 {
        if text.is_empty() {
            return 0;
        }
        if text != REASON_NOT_KEPT_TEXT {
            if let Some(id) = self.reason_ref(text, 0, REASON_CACHE_BYTES / 4 * 3) {
                return id;
            }
            let norm = normalize_reason(text);
            if norm != text {
                if let Some(id) = self.reason_ref(&norm, NORMALISED, REASON_CACHE_BYTES) {
                    self.reasons_normalised += 1;
                    return id;
                }
            }
        }
        self.reasons_not_kept += 1;
        REASON_NOT_KEPT
    }

    /// One more reference to the entry of `text` (exact, or with `flag`
    /// [`NORMALISED`]), created when the cache stays within `limit` bytes.
    fn reason_ref(&mut self, text: &str, flag: u32, limit: usize) -> Option<u32> {
        let hash = (self.reason_hasher.hash_one(text) as u32 & !NORMALISED) | flag;
        if let Some(id) = self.find_reason(text, hash) {
            let e = &mut self.reasons[id as usize];
            e.refs = e.refs.checked_add(1)?;
            return Some(id);
        }
        self.insert_reason(text, hash, limit)
    }

    fn find_reason(&self, text: &str, hash: u32) -> Option<u32> {
        if self.reason_table.is_empty() {
            return None;
        }
        let mask = self.reason_table.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let id = self.reason_table[i];
            if id == 0 {
                return None;
            }
            let e = &self.reasons[id as usize];
            if e.hash == hash && *e.text == *text {
                return Some(id);
            }
            i = (i + 1) & mask;
        }
    }

    fn table_put(table: &mut [u32], hash: u32, id: u32) {
        let mask = table.len() - 1;
        let mut i = hash as usize & mask;
        while table[i] != 0 {
            i = (i + 1) & mask;
        }
        table[i] = id;
    }

    /// A new entry with one reference, unless it would take the reason cache
    /// beyond `limit` bytes.
    fn insert_reason(&mut self, text: &str, hash: u32, limit: usize) -> Option<u32> {
        let entry = std::mem::size_of::<Reason>();
        let mut cost = heap_bytes(text.len());
        let grow_ids =
            if self.free_reasons.is_empty() && self.reasons.len() == self.reasons.capacity() {
                let add = (self.reasons.capacity() / 4).max(16);
                let new_cap = self.reasons.capacity() + add;
                cost += add * entry + new_cap.saturating_sub(self.free_reasons.capacity()) * 4;
                Some(add)
            } else {
                None
            };
        let grow_table = (self.reason_live + 1) * 4 > self.reason_table.len() * 3;
        let table_len = if grow_table {
            (self.reason_table.len() * 2).max(16)
        } else {
            self.reason_table.len()
        };
        cost += (table_len - self.reason_table.len()) * 4;
        if self.reason_memory() + cost > limit {
            return None;
        }
        let id = match self.free_reasons.pop() {
            Some(id) => id,
            None => {
                if self.reasons.len() + 1 >= REASON_NOT_KEPT as usize {
                    return None;
                }
                if let Some(add) = grow_ids {
                    self.reasons.reserve_exact(add);
                    let cap = self.reasons.capacity();
                    self.free_reasons
                        .reserve_exact(cap - self.free_reasons.len());
                }
                if self.reasons.is_empty() {
                    self.reasons.push(Reason {
                        text: "".into(),
                        refs: 0,
                        hash: 0,
                    });
                }
                self.reasons.push(Reason {
                    text: "".into(),
                    refs: 0,
                    hash: 0,
                });
                (self.reasons.len() - 1) as u32
            }
        };
        self.reasons[id as usize] = Reason {
            text: text.into(),
            refs: 1,
            hash,
        };
        self.reason_text_bytes += heap_bytes(text.len());
        self.reason_live += 1;
        if grow_table {
            let mut table = vec![0u32; table_len];
            for (i, e) in self.reasons.iter().enumerate().skip(1) {
                if e.refs > 0 {
                    Self::table_put(&mut table, e.hash, i as u32);
                }
            }
            self.reason_table = table;
        } else {
            Self::table_put(&mut self.reason_table, hash, id);
        }
        Some(id)
    }

    /// Removes `id` from the hash table (backward-shift deletion).
    fn table_remove(&mut self, id: u32) {
        let mask = self.reason_table.len() - 1;
        let mut i = self.reasons[id as usize].hash as usize & mask;
        while self.reason_table[i] != id {
            i = (i + 1) & mask;
        }
        self.reason_table[i] = 0;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let other = self.reason_table[j];
            if other == 0 {
                return;
            }
            let home = self.reasons[other as usize].hash as usize & mask;
            // `other` stays when its home lies cyclically in (i, j].
            let stays = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if !stays {
                self.reason_table[i] = other;
                self.reason_table[j] = 0;
                i = j;
            }
        }
    }

    pub(super) fn set_reason(&mut self, rid: u32, id: u32) {
        let old = self.rcpts[rid as usize].reason();
        self.rcpts[rid as usize].set_reason_id(id);
        if old != 0 {
            self.release_reason(old);
        }
    }

    pub(super) fn release_reason(&mut self, id: u32) {
        let Some(e) = self.reasons.get_mut(id as usize) else {
            return; // REASON_NOT_KEPT
        };
        if e.refs == 0 {
            return;
        }
        e.refs -= 1;
        if e.refs == 0 {
            self.table_remove(id);
            let e = &mut self.reasons[id as usize];
            self.reason_text_bytes -= heap_bytes(e.text.len());
            e.text = "".into();
            self.reason_live -= 1;
            self.free_reasons.push(id);
        }
    }

    /// Text of an interned reason: exact, normalised ([`normalize_reason`]), or
    /// [`REASON_NOT_KEPT_TEXT`] for [`REASON_NOT_KEPT`].
    pub fn reason(&self, id: u32) -> &str {
        if id == 0 {
            return "";
        }
        if id == REASON_NOT_KEPT {
            return REASON_NOT_KEPT_TEXT;
        }
        self.reasons
            .get(id as usize)
            .map(|r| &*r.text)
            .unwrap_or("")
    }

    /// Whether reason `id` is a recipient's exact last-error text: false for
    /// [`REASON_NOT_KEPT`] and for a [`normalize_reason`] form. A caller that
    /// writes the in-memory text to disk (an update record without a new
    /// reason, a checkpoint) should not replace an exact text on disk by an
    /// inexact one.
    #[cfg(test)]
    pub fn reason_is_exact(&self, id: u32) -> bool {
        id == 0
            || self
                .reasons
                .get(id as usize)
                .is_some_and(|r| r.refs > 0 && r.hash & NORMALISED == 0)
    }

    /// Times a recipient got [`REASON_NOT_KEPT`] because the reason cache was
    /// over budget (cumulative).
    pub fn reasons_not_kept(&self) -> u64 {
        self.reasons_not_kept
    }

    /// Times a recipient got the normalised form of its text because the exact
    /// one did not fit the reason cache (cumulative).
    pub fn reasons_normalised(&self) -> u64 {
        self.reasons_normalised
    }

    /// Bytes held by the reason cache (at most [`REASON_CACHE_BYTES`]).
    pub fn reason_memory(&self) -> usize {
        self.reasons.capacity() * std::mem::size_of::<Reason>()
            + self.free_reasons.capacity() * 4
            + self.reason_table.capacity() * 4
            + self.reason_text_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::shard::tests::shard_with;

    const GMAIL: &str = "451-4.7.28 [192.0.2.1] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited. For more information, go to https://support.google.com/mail/?p=UnsolicitedRateLimitError to review our Bulk Email Senders Guidelines. d2e1a72f3ef5c-6b1f0bcb4fasm2218311a12 - gsmtp";
    const MICROSOFT: &str = "451 4.7.500 Server busy. Please try again later from [2a01:111:f400::1]. (S77714) [AM0PR02MB1234.eurprd02.prod.outlook.com 2024-01-01T00:00:00.000Z 08DC1234567890AB]";
    const YAHOO: &str = "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes";

    /// A Gmail reply of transaction `i`, as Gmail varies it.
    fn gmail(i: u64) -> String {
        let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        GMAIL.replace(
            "d2e1a72f3ef5c-6b1f0bcb4fasm2218311a12",
            &format!("{:013x}-{:010x}fasm{}a12", x >> 12, x & 0xff_ffff_ffff, i),
        )
    }

    #[test]
    fn normalize_real_replies() {
        let g = normalize_reason(GMAIL);
        assert_eq!(
            g,
            GMAIL.replace("d2e1a72f3ef5c-6b1f0bcb4fasm2218311a12", "…"),
            "only the transaction id goes"
        );
        assert_eq!(normalize_reason(&gmail(1)), g);
        assert_eq!(normalize_reason(&gmail(123_456_789)), g);
        assert_eq!(
            normalize_reason(MICROSOFT),
            "451 4.7.500 Server busy. Please try again later from […]. (S77714) [… … …]"
        );
        let other = MICROSOFT
            .replace("AM0PR02MB1234", "DB9PR10MB5678")
            .replace("00:00.000Z", "31:07.914Z")
            .replace("08DC1234567890AB", "08DC99AA11BB22CC");
        assert_eq!(normalize_reason(&other), normalize_reason(MICROSOFT));
        assert_eq!(normalize_reason(YAHOO), YAHOO, "nothing per-transaction");
        // Sentence punctuation stays; short codes, words and IPv4 stay.
        assert_eq!(
            normalize_reason("550 5.1.1 <a@b.example>: queued as 4Bq2vX0s7Mz8k."),
            "550 5.1.1 <a@b.example>: queued as …."
        );
        assert_eq!(normalize_reason("id 1234567890"), "id …");
        assert_eq!(
            normalize_reason("see RFC5321 and RFC 5322"),
            "see RFC5321 and RFC 5322"
        );
        assert_eq!(normalize_reason("überfüllt 12345678ab ✓"), "überfüllt … ✓");
        assert_eq!(normalize_reason(""), "");
    }

    #[test]
    fn unique_gmail_replies_stay_within_budget() {
        let n = 100_000;
        let (mut s, rids) = shard_with(n);
        let norm = normalize_reason(GMAIL);
        let mut exact = 0;
        for (i, &rid) in rids.iter().enumerate() {
            let text = gmail(i as u64);
            s.set_reason_text(rid, &text);
            let got = s.reason(s.rcpts[rid as usize].reason());
            let id = s.rcpts[rid as usize].reason();
            if got == text {
                assert_eq!(exact, i, "exact texts first, while under budget");
                assert!(s.reason_is_exact(id));
                exact += 1;
            } else {
                assert_eq!(got, norm, "recipient {i} beyond the budget");
                assert!(!s.reason_is_exact(id));
            }
            assert!(s.reason_memory() <= REASON_CACHE_BYTES);
        }
        // Three quarters of the budget, at the text's allocation plus 24 to 64
        // bytes of vector, free list and table per entry.
        let text = heap_bytes(gmail(0).len());
        let share = REASON_CACHE_BYTES / 4 * 3;
        assert!(
            exact >= share / (text + 64) && exact <= share / (text + 24),
            "exact texts kept: {exact}"
        );
        assert_eq!(s.reasons_normalised(), (n as usize - exact) as u64);
        assert_eq!(s.reasons_not_kept(), 0);
        // Every exact text is still found; the rest share one entry.
        for (i, &rid) in rids.iter().enumerate().take(exact) {
            assert_eq!(s.reason(s.rcpts[rid as usize].reason()), gmail(i as u64));
        }
        assert_eq!(s.reason_live, exact + 1);
        let shared = s.rcpts[rids[n as usize - 1] as usize].reason();
        assert_eq!(s.reasons[shared as usize].refs, n - exact as u32);
        // A reply whose exact text equals the normalised form is not given the
        // shared (inexact) entry.
        s.set_reason_text(rids[0], &norm);
        let id = s.rcpts[rids[0] as usize].reason();
        assert_ne!(id, shared);
        assert_eq!(id, REASON_NOT_KEPT, "no room for new exact texts");
        // Recipients finish: every reference and text is released.
        for &rid in &rids {
            assert!(s.finish_rcpt(rid));
        }
        assert_eq!(s.reason_live, 0);
        assert_eq!(s.reason_text_bytes, 0);
        assert!(s.reason_table.iter().all(|&id| id == 0));
        assert!(s.reasons.iter().all(|r| r.refs == 0));
        // The space is reusable: exact texts again.
        let m = s.alloc_msg();
        s.insert(m, 7, (1, 24, 100), 0, &[1]);
        let rid = s.rcpt_index(m, 0).expect("recipient");
        s.set_reason_text(rid, &gmail(999_999));
        assert_eq!(s.reason(s.rcpts[rid as usize].reason()), gmail(999_999));
    }

    #[test]
    fn reasons_not_kept_beyond_budget() {
        // Texts that stay distinct after normalisation.
        let word = |mut i: u32| {
            let mut w = String::new();
            loop {
                w.push((b'a' + (i % 26) as u8) as char);
                i /= 26;
                if i == 0 {
                    break w;
                }
            }
        };
        let n = 20_000;
        let (mut s, rids) = shard_with(n);
        for &rid in &rids {
            s.set_reason_text(rid, "451 try later");
        }
        let mut kept = 0;
        for (i, &rid) in rids.iter().enumerate() {
            let text = format!("450 mailbox {} busy, try again later", word(i as u32));
            s.set_reason_text(rid, &text);
            let id = s.rcpts[rid as usize].reason();
            if id == REASON_NOT_KEPT {
                assert_eq!(s.reason(id), REASON_NOT_KEPT_TEXT);
                assert!(!s.reason_is_exact(id));
            } else {
                assert!(s.reason_is_exact(id));
                assert_eq!(s.reason(id), text, "never the previous text");
                kept += 1;
            }
            assert!(s.reason_memory() <= REASON_CACHE_BYTES);
        }
        assert!(kept > 1000 && kept < n as usize, "kept {kept}");
        assert_eq!(s.reasons_not_kept(), (n as usize - kept) as u64);
        assert_eq!(s.reason_live, kept, "the old shared text was released");
        // A checkpointed not-kept text maps back to the sentinel.
        s.set_reason_text(rids[0], REASON_NOT_KEPT_TEXT);
        assert_eq!(s.rcpts[rids[0] as usize].reason(), REASON_NOT_KEPT);
        for &rid in &rids {
            s.finish_rcpt(rid);
        }
        assert_eq!((s.reason_live, s.reason_text_bytes), (0, 0));
    }

    #[test]
    fn reason_table_survives_churn() {
        // Random sets and finishes against a model of the texts.
        let (mut s, rids) = shard_with(3000);
        let mut x: u64 = 7;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut model: Vec<String> = vec![String::new(); rids.len()];
        for _ in 0..100_000 {
            let k = rnd(rids.len() as u64) as usize;
            let text = format!("451 4.3.0 t{}", rnd(500));
            s.set_reason_text(rids[k], &text);
            model[k] = text;
        }
        for (k, &rid) in rids.iter().enumerate() {
            assert_eq!(s.reason(s.rcpts[rid as usize].reason()), model[k]);
        }
        let distinct: std::collections::HashSet<&String> =
            model.iter().filter(|t| !t.is_empty()).collect();
        assert_eq!(s.reason_live, distinct.len(), "interned once each");
        let refs: u32 = s.reasons.iter().map(|r| r.refs).sum();
        assert_eq!(
            refs as usize,
            model.iter().filter(|t| !t.is_empty()).count()
        );
        for &rid in &rids {
            s.finish_rcpt(rid);
        }
        assert_eq!(s.reason_live, 0);
    }
}
