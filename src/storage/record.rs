//! On-disk record framing and payload encoding.
//! Depends on `error`.
//!
//! Every record is `header (24 bytes) | payload | zero padding to 8 bytes`.
//! The header is little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `0x4D515243` |
//! | 4 | 4 | CRC32 (IEEE), seeded with the queue's salt, of header bytes 8..24 followed by the payload |
//! | 8 | 4 | payload length |
//! | 12 | 1 | record kind |
//! | 13 | 3 | zero |
//! | 16 | 8 | sequence number (strictly increasing across the log) |
//!
//! A reader checks magic, kind and length bounds before touching the payload,
//! then the CRC, then decodes the payload with bounds-checked reads.
//!
//! The CRC of every record except the segment header is seeded with a random
//! per-queue salt (stored in each segment header and in the checkpoint), so a
//! record-shaped byte string inside a message body — which a sender controls —
//! cannot pass for a record when recovery resynchronises after damage.

use crate::error::Result;

/// Record header length.
pub const HEADER_LEN: usize = 24;
/// Record magic.
pub const MAGIC: u32 = 0x4D51_5243;
/// Alignment of records within a segment.
pub const ALIGN: usize = 8;
/// Largest payload the format accepts (a format limit, independent of options,
/// so that lowering `max_body` never makes stored mail unreadable).
pub const MAX_RECORD: usize = (1 << 30) + (128 << 20);

/// Record kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// First record of every segment.
    SegmentHeader = 1,
    /// A message, written once.
    Message = 2,
    /// A change of one recipient's state.
    RcptUpdate = 3,
    /// A live message copied forward by compaction.
    MessageCopy = 4,
    /// The operator settings of one destination (format version 2).
    Destination = 5,
    /// An egress source's warm-up state (format version 3).
    Source = 6,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::SegmentHeader,
            2 => Kind::Message,
            3 => Kind::RcptUpdate,
            4 => Kind::MessageCopy,
            5 => Kind::Destination,
            6 => Kind::Source,
            _ => return None,
        })
    }
}

/// Rounds `n` up to the record alignment.
pub fn padded(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// CRC seed of a record kind under `salt`.
pub fn seed(kind: Kind, salt: u32) -> u32 {
    if kind == Kind::SegmentHeader {
        0
    } else {
        salt
    }
}

/// Header field offsets within a record (see the module comment).
const OFF_CRC: usize = 4;
const OFF_LEN: usize = 8;
const OFF_KIND: usize = 12;
const OFF_SEQ: usize = 16;
const _: () = assert!(OFF_SEQ + 8 == HEADER_LEN);

/// Starts a record of `kind` at the end of `out`; its payload is appended next
/// and the record closed with [`end_frame`]. Returns the record's start.
pub fn begin_frame(out: &mut Vec<u8>, kind: Kind) -> usize {
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.resize(start + HEADER_LEN, 0);
    out[start + OFF_KIND] = kind as u8;
    start
}

/// Closes the record begun at `start`: writes its payload length and pads it.
/// Returns the payload length and the payload's CRC for [`stamp`] (0 for a
/// payload of at most `DIRECT_CRC_MAX` bytes, which `stamp` hashes itself).
pub fn end_frame(out: &mut Vec<u8>, start: usize) -> (usize, u32) {
    let len = out.len() - start - HEADER_LEN;
    out[start + OFF_LEN..start + OFF_KIND].copy_from_slice(&(len as u32).to_le_bytes());
    // A short payload is hashed again with its header by `stamp` (cheaper
    // than combining two checksums there).
    let crc = if len > DIRECT_CRC_MAX {
        crc32fast::hash(&out[start + HEADER_LEN..])
    } else {
        0
    };
    out.resize(start + padded(HEADER_LEN + len), 0);
    (len, crc)
}

/// Payloads up to this length are checksummed in one pass with their header
/// when stamped (under the log's lock), not when framed: hashing up to 1 KiB
/// there (6–20 ns) costs less than the combine of two CRCs it replaces,
/// which ran under the lock too (57–84 ns).
const DIRECT_CRC_MAX: usize = 1024;

/// Writes the sequence number and the checksum into a closed record `rec`
/// (payload length `len`, payload CRC `payload_crc` from [`end_frame`]).
pub fn stamp(rec: &mut [u8], kind: Kind, seq: u64, salt: u32, len: usize, payload_crc: u32) {
    rec[OFF_SEQ..HEADER_LEN].copy_from_slice(&seq.to_le_bytes());
    let mut h = crc32fast::Hasher::new_with_initial(seed(kind, salt));
    if len <= DIRECT_CRC_MAX {
        h.update(&rec[OFF_LEN..HEADER_LEN + len]);
    } else {
        h.update(&rec[OFF_LEN..HEADER_LEN]);
        h.combine(&crc32fast::Hasher::new_with_initial_len(
            payload_crc,
            len as u64,
        ));
    }
    let crc = h.finalize();
    rec[OFF_CRC..OFF_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// Appends one framed record to `out` (tests; the log frames through `Batch`).
pub fn frame(out: &mut Vec<u8>, kind: Kind, seq: u64, payload: &[u8], salt: u32) {
    let start = begin_frame(out, kind);
    out.extend_from_slice(payload);
    let (len, crc) = end_frame(out, start);
    stamp(&mut out[start..], kind, seq, salt, len, crc);
}

/// A record decoded from a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Framed<'a> {
    /// Kind.
    pub kind: Kind,
    /// Sequence number.
    pub seq: u64,
    /// Payload bytes.
    pub payload: &'a [u8],
    /// Bytes occupied including padding.
    pub total: usize,
}

/// Why a record could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The header is all zeros: the end of written data.
    Zero,
    /// Fewer bytes remain than the header or the declared length needs.
    Short,
    /// Magic, kind or length field is wrong.
    BadHeader(&'static str),
    /// The checksum does not match.
    BadCrc,
}

/// Header fields read without checking the CRC (for resynchronisation prechecks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Kind.
    pub kind: Kind,
    /// Payload length.
    pub len: usize,
    /// Sequence number.
    pub seq: u64,
    /// Stored CRC.
    pub crc: u32,
}

/// Checks magic, kind, reserved bytes and the length bound of the header at the
/// start of `buf`, without touching the payload.
pub fn header(buf: &[u8]) -> Result<Header, FrameError> {
    if buf.len() < HEADER_LEN {
        if buf.iter().all(|&b| b == 0) {
            return Err(FrameError::Zero);
        }
        return Err(FrameError::Short);
    }
    let h = &buf[..HEADER_LEN];
    if h.iter().all(|&b| b == 0) {
        return Err(FrameError::Zero);
    }
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    if u32_at(0) != MAGIC {
        return Err(FrameError::BadHeader("bad magic"));
    }
    let kind = Kind::from_u8(h[12]).ok_or(FrameError::BadHeader("unknown record kind"))?;
    if h[13..16] != [0, 0, 0] {
        return Err(FrameError::BadHeader("reserved bytes not zero"));
    }
    let len = u32_at(8) as usize;
    if len > MAX_RECORD {
        return Err(FrameError::BadHeader("length over limit"));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&h[16..24]);
    Ok(Header {
        kind,
        len,
        seq: u64::from_le_bytes(seq),
        crc: u32_at(4),
    })
}

/// Parses the record at the start of `buf`, checking bounds (including its
/// padding: a record cut anywhere is `Short`) and the checksum seeded with `salt`.
pub fn parse(buf: &[u8], salt: u32) -> Result<Framed<'_>, FrameError> {
    let h = header(buf)?;
    let total = padded(HEADER_LEN + h.len);
    if buf.len() < total {
        return Err(FrameError::Short);
    }
    let mut hasher = crc32fast::Hasher::new_with_initial(seed(h.kind, salt));
    hasher.update(&buf[8..HEADER_LEN]);
    hasher.update(&buf[HEADER_LEN..HEADER_LEN + h.len]);
    if hasher.finalize() != h.crc {
        return Err(FrameError::BadCrc);
    }
    Ok(Framed {
        kind: h.kind,
        seq: h.seq,
        payload: &buf[HEADER_LEN..HEADER_LEN + h.len],
        total,
    })
}

/// A bounds-checked little-endian reader; every read fails cleanly past the end.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    /// Current position.
    pub fn pos(&self) -> usize {
        self.pos
    }
    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// Takes `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    /// u8.
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }
    /// u16.
    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.bytes(2)?.try_into().ok()?))
    }
    /// u32.
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }
    /// u64.
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }
    /// u16-length-prefixed bytes.
    pub fn short_bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        self.bytes(n)
    }
    /// u16-length-prefixed UTF-8.
    pub fn short_str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.short_bytes()?).ok()
    }
    /// u32-length-prefixed bytes.
    pub fn long_bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }
}

/// Little-endian writer helpers.
pub trait Put {
    /// Appends a u16-length-prefixed byte string (caller guarantees ≤ 65535).
    fn put_short(&mut self, b: &[u8]);
    /// Appends a u32-length-prefixed byte string.
    fn put_long(&mut self, b: &[u8]);
}

impl Put for Vec<u8> {
    fn put_short(&mut self, b: &[u8]) {
        let n = b.len().min(u16::MAX as usize);
        self.extend_from_slice(&(n as u16).to_le_bytes());
        self.extend_from_slice(&b[..n]);
    }
    fn put_long(&mut self, b: &[u8]) {
        self.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.extend_from_slice(b);
    }
}

/// Magic at the start of a segment header payload.
pub const SEGMENT_MAGIC: &[u8; 8] = b"MAILQSEG";
/// On-disk format version written by this build: 2 added `Destination`
/// records and the update record's flags byte, 3 `Source` records and the
/// destinations' per-source limits, 4 path suspensions after a
/// `Destination` record's settings (a format-3 build would refuse such a
/// record rather than skip it), 5 segments that may end in zeros (files
/// made ahead), which a format-4 build would report as damage.
pub const FORMAT_VERSION: u32 = 5;
/// Oldest format version this build reads (version 1 segments never hold
/// what version 2 added, and their flags byte is zero).
pub const MIN_FORMAT_VERSION: u32 = 1;

/// Whether this build reads segments of format `v`.
pub fn format_supported(v: u32) -> bool {
    (MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&v)
}

/// Payload of the segment header record.
pub fn segment_header(segment: u32, salt: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(20);
    p.extend_from_slice(SEGMENT_MAGIC);
    p.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    p.extend_from_slice(&segment.to_le_bytes());
    p.extend_from_slice(&salt.to_le_bytes());
    p
}

/// Parses a segment header payload into (version, segment number, salt).
pub fn parse_segment_header(p: &[u8]) -> Option<(u32, u32, u32)> {
    let mut r = Reader::new(p);
    if r.bytes(8)? != SEGMENT_MAGIC {
        return None;
    }
    Some((r.u32()?, r.u32()?, r.u32()?))
}

/// A message as stored in a `Message` record.
#[derive(Debug, Clone)]
pub struct MessageRecord<'a> {
    /// Message id.
    pub id: u64,
    /// Unix seconds when accepted.
    pub received: u64,
    /// Envelope sender (may be empty for the null sender).
    pub sender: &'a str,
    /// Opaque MTA metadata.
    pub meta: &'a [u8],
    /// (address, routing key) per recipient.
    pub rcpts: Vec<(&'a str, &'a str)>,
    /// Offset of the body within the payload.
    pub body_off: usize,
    /// Body length.
    pub body_len: usize,
}

/// Encodes a message payload.
pub fn encode_message(
    out: &mut Vec<u8>,
    id: u64,
    received: u64,
    sender: &str,
    meta: &[u8],
    rcpts: &[(&str, &str)],
    body: &[u8],
) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&received.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.put_short(sender.as_bytes());
    out.put_long(meta);
    out.extend_from_slice(&(rcpts.len() as u32).to_le_bytes());
    for (a, k) in rcpts {
        out.put_short(a.as_bytes());
        out.put_short(k.as_bytes());
    }
    out.put_long(body);
}

/// Decodes a message payload.
pub fn decode_message(p: &[u8]) -> Option<MessageRecord<'_>> {
    let mut rcpts = Vec::new();
    let head = walk_message(p, |i, n, a, k| {
        if i == 0 {
            rcpts.reserve_exact(n);
        }
        rcpts.push((std::str::from_utf8(a).ok()?, std::str::from_utf8(k).ok()?));
        Some(())
    })?;
    Some(MessageRecord {
        id: head.id,
        received: head.received,
        sender: head.sender,
        meta: head.meta,
        rcpts,
        body_off: head.body_off,
        body_len: head.body_len,
    })
}

/// A message record without its recipients (see [`decode_envelope`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Message id.
    pub id: u64,
    /// Unix seconds when accepted.
    pub received: u64,
    /// Envelope sender.
    pub sender: &'a str,
    /// Opaque MTA metadata.
    pub meta: &'a [u8],
    /// Offset of the body within the payload.
    pub body_off: usize,
    /// Body length.
    pub body_len: usize,
}

/// Decodes a message payload as a delivery needs it: the whole frame is
/// checked as [`decode_message`] does, but only the addresses of recipients
/// `want` (indices, ascending) are turned into text, into `addrs` in that
/// order (an index past the last recipient gives an empty address).
pub fn decode_envelope<'a>(
    p: &'a [u8],
    want: &[u32],
    addrs: &mut Vec<String>,
) -> Option<Envelope<'a>> {
    addrs.clear();
    addrs.resize(want.len(), String::new());
    walk_message(p, |i, _, a, _| {
        if let Ok(k) = want.binary_search(&(i as u32)) {
            addrs[k] = std::str::from_utf8(a).ok()?.to_string();
        }
        Some(())
    })
}

/// Walks a message payload: checks its frame, hands `rcpt` each recipient's
/// index, the number of recipients, and its address and routing key as
/// bytes, and returns the rest.
fn walk_message<'a>(
    p: &'a [u8],
    mut rcpt: impl FnMut(usize, usize, &'a [u8], &'a [u8]) -> Option<()>,
) -> Option<Envelope<'a>> {
    let mut r = Reader::new(p);
    let id = r.u64()?;
    let received = r.u64()?;
    let _flags = r.u32()?;
    let sender = r.short_str()?;
    let meta = r.long_bytes()?;
    let n = r.u32()? as usize;
    if n == 0 || n > u16::MAX as usize || n > r.remaining() / 4 {
        return None;
    }
    for i in 0..n {
        let a = r.short_bytes()?;
        let k = r.short_bytes()?;
        rcpt(i, n, a, k)?;
    }
    let body_len = r.u32()? as usize;
    let body_off = r.pos();
    r.bytes(body_len)?;
    if r.remaining() != 0 {
        return None;
    }
    Some(Envelope {
        id,
        received,
        sender,
        meta,
        body_off,
        body_len,
    })
}

/// A recipient state change as stored in a `RcptUpdate` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateRecord<'a> {
    /// Message id.
    pub id: u64,
    /// Recipient index within the message.
    pub idx: u32,
    /// New persisted state.
    pub state: u8,
    /// Flags kept with the recipient ([`UPDATE_WARNED`]); absolute, like the
    /// other fields (format version 1 wrote zero here, which reads as none).
    pub flags: u8,
    /// Attempts so far.
    pub attempts: u16,
    /// Next attempt (unix seconds), for deferred recipients.
    pub next: u32,
    /// Last error text.
    pub reason: &'a str,
    /// New routing key, empty when unchanged.
    pub route: &'a str,
}

/// [`UpdateRecord::flags`]: the recipient's delay warning was acknowledged.
pub const UPDATE_WARNED: u8 = 1;

/// The operator's settings of one destination, as the log (`Destination`
/// records, absolute values) and the checkpoint keep them. Encoded as tagged
/// values, so a later setting is a new tag; unknown tags are skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DestSettings {
    /// Suspended by the operator.
    pub suspended: bool,
    /// End of a timed suspension (unix seconds of the queue's clock); 0 for
    /// one that lasts until resumed.
    pub resume_at: u32,
    /// Length of a timed suspension, seconds.
    pub suspend_secs: u32,
    /// Concurrency limit set by the operator; 0 for the queue's default.
    pub limit: u16,
    /// Message-rate limits per second, minute, hour and day (0: none).
    pub rate: [u32; 4],
    /// A reply rule's throttle in force: when it ends (0: none) …
    pub throttle_until: u32,
    /// … its length (s) …
    pub throttle_secs: u32,
    /// … the rule's concurrency limit (0: none) …
    pub throttle_window: u16,
    /// … and rates (per second, minute, hour, day); …
    pub throttle_rate: [u32; 4],
    /// … the destination's own limit (0: the default) and rates come back
    /// when it ends (`limit` and `rate` hold the lowered ones).
    pub own_limit: u16,
    /// The destination's own rates.
    pub own_rate: [u32; 4],
    /// Concurrency limit per egress source (0: none) …
    pub path_limit: u16,
    /// … and message-rate limits per egress source.
    pub path_rate: [u32; 4],
}

/// Tags of [`DestSettings`] values.
const TAG_SUSPENDED: u8 = 1;
const TAG_RESUME_AT: u8 = 2;
const TAG_SUSPEND_SECS: u8 = 3;
const TAG_LIMIT: u8 = 4;
const TAG_RATE: u8 = 5; // 5..=8: per second, minute, hour, day
const TAG_THROTTLE_UNTIL: u8 = 9;
const TAG_THROTTLE_SECS: u8 = 10;
const TAG_THROTTLE_WINDOW: u8 = 11;
const TAG_THROTTLE_RATE: u8 = 12; // 12..=15
const TAG_OWN_LIMIT: u8 = 16;
const TAG_OWN_RATE: u8 = 17; // 17..=20
const TAG_PATH_LIMIT: u8 = 21;
const TAG_PATH_RATE: u8 = 22; // 22..=25

impl DestSettings {
    /// True when nothing differs from the defaults.
    pub fn is_default(&self) -> bool {
        *self == DestSettings::default()
    }

    /// Appends the tagged encoding: a count, then (tag u8, value u64) pairs.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut pairs: Vec<(u8, u64)> = Vec::with_capacity(8);
        if self.suspended {
            pairs.push((TAG_SUSPENDED, 1));
            pairs.push((TAG_RESUME_AT, self.resume_at as u64));
            pairs.push((TAG_SUSPEND_SECS, self.suspend_secs as u64));
        }
        if self.limit != 0 {
            pairs.push((TAG_LIMIT, self.limit as u64));
        }
        let rates = |pairs: &mut Vec<(u8, u64)>, tag: u8, rate: &[u32; 4]| {
            for (i, &r) in rate.iter().enumerate() {
                if r != 0 {
                    pairs.push((tag + i as u8, r as u64));
                }
            }
        };
        rates(&mut pairs, TAG_RATE, &self.rate);
        if self.throttle_until != 0 {
            pairs.push((TAG_THROTTLE_UNTIL, self.throttle_until as u64));
            pairs.push((TAG_THROTTLE_SECS, self.throttle_secs as u64));
            pairs.push((TAG_THROTTLE_WINDOW, self.throttle_window as u64));
            rates(&mut pairs, TAG_THROTTLE_RATE, &self.throttle_rate);
            pairs.push((TAG_OWN_LIMIT, self.own_limit as u64));
            rates(&mut pairs, TAG_OWN_RATE, &self.own_rate);
        }
        if self.path_limit != 0 {
            pairs.push((TAG_PATH_LIMIT, self.path_limit as u64));
        }
        rates(&mut pairs, TAG_PATH_RATE, &self.path_rate);
        out.push(pairs.len() as u8);
        for (t, v) in pairs {
            out.push(t);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// Reads the tagged encoding; values out of their field's range are
    /// malformed (`None`).
    pub fn decode(r: &mut Reader<'_>) -> Option<DestSettings> {
        let mut d = DestSettings::default();
        for _ in 0..r.u8()? {
            let (t, v) = (r.u8()?, r.u64()?);
            let v32 = u32::try_from(v).ok();
            match t {
                TAG_SUSPENDED => d.suspended = v != 0,
                TAG_RESUME_AT => d.resume_at = v32?,
                TAG_SUSPEND_SECS => d.suspend_secs = v32?,
                TAG_LIMIT => d.limit = u16::try_from(v).ok()?,
                t if (TAG_RATE..TAG_RATE + 4).contains(&t) => {
                    d.rate[(t - TAG_RATE) as usize] = v32?
                }
                TAG_THROTTLE_UNTIL => d.throttle_until = v32?,
                TAG_THROTTLE_SECS => d.throttle_secs = v32?,
                TAG_THROTTLE_WINDOW => d.throttle_window = u16::try_from(v).ok()?,
                t if (TAG_THROTTLE_RATE..TAG_THROTTLE_RATE + 4).contains(&t) => {
                    d.throttle_rate[(t - TAG_THROTTLE_RATE) as usize] = v32?
                }
                TAG_OWN_LIMIT => d.own_limit = u16::try_from(v).ok()?,
                t if (TAG_OWN_RATE..TAG_OWN_RATE + 4).contains(&t) => {
                    d.own_rate[(t - TAG_OWN_RATE) as usize] = v32?
                }
                TAG_PATH_LIMIT => d.path_limit = u16::try_from(v).ok()?,
                t if (TAG_PATH_RATE..TAG_PATH_RATE + 4).contains(&t) => {
                    d.path_rate[(t - TAG_PATH_RATE) as usize] = v32?
                }
                _ => {}
            }
        }
        Some(d)
    }
}

/// A reply rule's suspension of one egress path of a destination (its
/// source's name, when it ends, its length), kept with the destination's
/// settings (format 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathSuspension {
    /// The source's name.
    pub source: String,
    /// When it ends (unix seconds).
    pub until: u32,
    /// Its length, seconds.
    pub secs: u32,
}

/// Most path suspensions kept per destination.
pub const MAX_PATH_SUSPENSIONS: usize = 255;

/// Appends a list of path suspensions: a count u8, then per entry the name
/// (u16+bytes), end u32, length u32.
pub fn encode_path_suspensions(out: &mut Vec<u8>, list: &[PathSuspension]) {
    let list = &list[..list.len().min(MAX_PATH_SUSPENSIONS)];
    out.push(list.len() as u8);
    for p in list {
        out.put_short(p.source.as_bytes());
        out.extend_from_slice(&p.until.to_le_bytes());
        out.extend_from_slice(&p.secs.to_le_bytes());
    }
}

/// Reads what [`encode_path_suspensions`] wrote.
pub fn decode_path_suspensions(r: &mut Reader<'_>) -> Option<Vec<PathSuspension>> {
    let n = r.u8()?;
    let mut list = Vec::with_capacity(n as usize);
    for _ in 0..n {
        list.push(PathSuspension {
            source: r.short_str()?.to_string(),
            until: r.u32()?,
            secs: r.u32()?,
        });
    }
    Some(list)
}

/// Encodes a `Destination` payload: the routing key, its settings, then (if
/// any, format 4) its path suspensions.
pub fn encode_destination(
    out: &mut Vec<u8>,
    key: &str,
    d: &DestSettings,
    paths: &[PathSuspension],
) {
    out.put_short(key.as_bytes());
    d.encode(out);
    if !paths.is_empty() {
        encode_path_suspensions(out, paths);
    }
}

/// Decodes a `Destination` payload.
pub fn decode_destination(p: &[u8]) -> Option<(&str, DestSettings, Vec<PathSuspension>)> {
    let mut r = Reader::new(p);
    let key = r.short_str()?;
    let d = DestSettings::decode(&mut r)?;
    let paths = if r.remaining() > 0 {
        decode_path_suspensions(&mut r)?
    } else {
        Vec::new()
    };
    (r.remaining() == 0).then_some((key, d, paths))
}

/// An egress source's warm-up state, as the log (`Source` records) and the
/// checkpoint keep it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceSaved {
    /// Which day of its warm-up the source is on (1-based).
    pub day: u32,
    /// When that day began (unix seconds of the queue's clock).
    pub window_start: u32,
    /// Messages sent from the source that day.
    pub used: u32,
}

impl SourceSaved {
    /// Appends: day, day start, used (u32 each).
    pub fn encode(&self, out: &mut Vec<u8>) {
        for v in [self.day, self.window_start, self.used] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// Reads what [`SourceSaved::encode`] wrote.
    pub fn decode(r: &mut Reader<'_>) -> Option<SourceSaved> {
        Some(SourceSaved {
            day: r.u32()?,
            window_start: r.u32()?,
            used: r.u32()?,
        })
    }
}

/// Encodes a `Source` payload: the source's name, then its state.
pub fn encode_source(out: &mut Vec<u8>, name: &str, s: &SourceSaved) {
    out.put_short(name.as_bytes());
    s.encode(out);
}

/// Decodes a `Source` payload.
pub fn decode_source(p: &[u8]) -> Option<(&str, SourceSaved)> {
    let mut r = Reader::new(p);
    let name = r.short_str()?;
    let s = SourceSaved::decode(&mut r)?;
    (r.remaining() == 0 && !name.is_empty()).then_some((name, s))
}

/// Encodes an update payload.
pub fn encode_update(out: &mut Vec<u8>, u: &UpdateRecord<'_>) {
    out.extend_from_slice(&u.id.to_le_bytes());
    out.extend_from_slice(&u.idx.to_le_bytes());
    out.push(u.state);
    out.push(u.flags);
    out.extend_from_slice(&u.attempts.to_le_bytes());
    out.extend_from_slice(&u.next.to_le_bytes());
    out.put_short(u.reason.as_bytes());
    out.put_short(u.route.as_bytes());
}

/// Decodes an update payload.
pub fn decode_update(p: &[u8]) -> Option<UpdateRecord<'_>> {
    let mut r = Reader::new(p);
    let u = UpdateRecord {
        id: r.u64()?,
        idx: r.u32()?,
        state: r.u8()?,
        flags: r.u8()?,
        attempts: r.u16()?,
        next: r.u32()?,
        reason: r.short_str()?,
        route: r.short_str()?,
    };
    if r.remaining() != 0 {
        return None;
    }
    Some(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_roundtrip_and_damage() {
        let mut buf = Vec::new();
        frame(&mut buf, Kind::RcptUpdate, 7, b"hello", 99);
        assert_eq!(buf.len() % ALIGN, 0);
        let f = parse(&buf, 99).unwrap();
        assert_eq!(
            (f.kind, f.seq, f.payload),
            (Kind::RcptUpdate, 7, &b"hello"[..])
        );
        for i in 0..HEADER_LEN + 5 {
            let mut b = buf.clone();
            b[i] ^= 0x10;
            assert!(parse(&b, 99).is_err(), "flip at {i} undetected");
        }
        assert_eq!(parse(&buf[..10], 99).unwrap_err(), FrameError::Short);
        assert_eq!(
            parse(&buf[..buf.len() - 1], 99).unwrap_err(),
            FrameError::Short,
            "cut padding"
        );
        assert_eq!(parse(&[0u8; 40], 99).unwrap_err(), FrameError::Zero);
        assert_eq!(
            parse(&buf, 98).unwrap_err(),
            FrameError::BadCrc,
            "another queue's salt"
        );
    }

    #[test]
    fn short_and_long_payloads_get_the_same_checksum_both_ways() {
        // Up to DIRECT_CRC_MAX the header and payload are hashed in one
        // pass, above it two CRCs are combined: either way the checksum is
        // the CRC of the header tail and the payload, seeded by kind and salt.
        for len in [
            0,
            1,
            DIRECT_CRC_MAX - 1,
            DIRECT_CRC_MAX,
            DIRECT_CRC_MAX + 1,
            5000,
        ] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut buf = Vec::new();
            frame(&mut buf, Kind::Message, 3, &payload, 42);
            let mut h = crc32fast::Hasher::new_with_initial(seed(Kind::Message, 42));
            h.update(&buf[OFF_LEN..HEADER_LEN + len]);
            let crc = u32::from_le_bytes(buf[OFF_CRC..OFF_LEN].try_into().unwrap());
            assert_eq!(crc, h.finalize(), "payload of {len} bytes");
            assert_eq!(parse(&buf, 42).unwrap().payload, &payload[..]);
            let last = HEADER_LEN + len - 1;
            buf[last] ^= 1;
            assert!(parse(&buf, 42).is_err(), "flip in {len} bytes undetected");
        }
    }

    #[test]
    fn message_roundtrip() {
        let mut p = Vec::new();
        encode_message(
            &mut p,
            9,
            100,
            "a@b",
            b"m",
            &[("x@y.com", "y.com")],
            b"BODY",
        );
        let m = decode_message(&p).unwrap();
        assert_eq!(m.id, 9);
        assert_eq!(m.rcpts, vec![("x@y.com", "y.com")]);
        assert_eq!(&p[m.body_off..m.body_off + m.body_len], b"BODY");
        for cut in 0..p.len() {
            assert!(decode_message(&p[..cut]).is_none());
        }
        // A recipient count over 65535 is rejected, whatever the payload holds.
        let mut q = Vec::new();
        q.extend_from_slice(&[0u8; 20]);
        q.put_short(b"");
        q.put_long(b"");
        q.extend_from_slice(&65536u32.to_le_bytes());
        q.extend_from_slice(&vec![0u8; 65536 * 4 + 4]);
        assert!(decode_message(&q).is_none());
    }

    #[test]
    fn an_envelope_holds_only_the_wanted_addresses_and_checks_the_whole_frame() {
        let mut p = Vec::new();
        let rcpts = [
            ("a@x.com", "x.com"),
            ("b@y.com", "y.com"),
            ("c@x.com", "x.com"),
        ];
        encode_message(&mut p, 7, 100, "s@q", b"meta", &rcpts, b"BODY");
        let mut addrs = vec!["stale".to_string()];
        let e = decode_envelope(&p, &[0, 2, 5], &mut addrs).unwrap();
        assert_eq!(
            (e.id, e.received, e.sender, e.meta),
            (7, 100, "s@q", &b"meta"[..])
        );
        assert_eq!(&p[e.body_off..e.body_off + e.body_len], b"BODY");
        assert_eq!(addrs, ["a@x.com", "c@x.com", ""]);
        let m = decode_message(&p).unwrap();
        assert_eq!((m.body_off, m.body_len), (e.body_off, e.body_len));
        for cut in 0..p.len() {
            assert!(decode_envelope(&p[..cut], &[1], &mut addrs).is_none());
        }
        // A wanted address that is not UTF-8 is refused.
        let at = p.windows(7).position(|w| w == b"b@y.com").unwrap();
        p[at] = 0xff;
        assert!(decode_envelope(&p, &[1], &mut addrs).is_none());
        assert!(decode_envelope(&p, &[0], &mut addrs).is_some());
    }
}
