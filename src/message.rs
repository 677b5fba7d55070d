//! Streaming enqueue: a message built piece by piece as SMTP delivers it
//! (MAIL FROM, RCPT TO, DATA chunks), checked as it grows, and committed with
//! [`crate::Queue::enqueue`]. The C streaming functions wrap this type.
//! Depends on `Queue`, `error`, `types`, `validate`.

use crate::error::Result;
use crate::types::{MessageId, NewMessage, Recipient};
use crate::validate;
use crate::Queue;

/// A message being received. Every piece is checked when it is added (so an
/// SMTP server can answer `RCPT` or `DATA` with the right code), and nothing
/// reaches the disk until [`MessageBuilder::commit`]. Dropping it discards the
/// message.
///
/// ```
/// use mailq::{Queue, Options};
/// use std::io::Write;
/// let dir = std::env::temp_dir().join(format!("mailq-doc-mb-{}", std::process::id()));
/// let q = Queue::open(&dir, Options::default()).unwrap();
/// let mut m = q.message("alice@example.org").unwrap();
/// m.add_recipient("bob@example.com", None).unwrap();
/// m.write_all(b"Subject: hi\r\n\r\n").unwrap();
/// m.append(b"hello\r\n").unwrap();
/// let id = m.commit().unwrap();
/// assert_eq!(q.inspect(id).unwrap().recipients.len(), 1);
/// q.close().unwrap();
/// std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Debug)]
pub struct MessageBuilder {
    q: Queue,
    sender: String,
    rcpts: Vec<Recipient>,
    meta: Vec<u8>,
    body: Vec<u8>,
    /// A DSN: not refused by backpressure.
    dsn: bool,
}

impl Queue {
    /// Starts a streamed message from `sender` (empty for the null sender).
    pub fn message(&self, sender: &str) -> Result<MessageBuilder> {
        validate::sender(sender)?;
        Ok(MessageBuilder {
            q: self.clone(),
            sender: sender.to_string(),
            rcpts: Vec::new(),
            meta: Vec::new(),
            body: Vec::new(),
            dsn: false,
        })
    }

    /// Starts a delivery status notification (null sender) for a bounce. It
    /// is exempt from backpressure ([`crate::Error::TryLater`]): a DSN adds
    /// one recipient, and acknowledging its bounce ends at least one, so
    /// refusing it would keep a full queue full (the disk itself still
    /// refuses what it cannot store).
    pub fn dsn_message(&self) -> Result<MessageBuilder> {
        let mut m = self.message("")?;
        m.dsn = true;
        Ok(m)
    }
}

impl MessageBuilder {
    /// Adds a recipient; `route` overrides the routing key (default: the domain).
    /// Fails, changing nothing, on a bad address or key or one recipient too many.
    pub fn add_recipient(&mut self, address: &str, route: Option<&str>) -> Result<()> {
        let r = Recipient {
            address: address.to_string(),
            route: route.map(str::to_string),
        };
        validate::route(&r)?;
        validate::recipient_count(self.q.options(), self.rcpts.len() + 1)?;
        self.rcpts.push(r);
        Ok(())
    }

    /// Sets the opaque metadata returned at delivery time.
    pub fn set_meta(&mut self, meta: &[u8]) -> Result<()> {
        validate::meta_len(meta.len())?;
        self.meta = meta.to_vec();
        Ok(())
    }

    /// Appends a chunk of the body. Fails, changing nothing, past `max_body`.
    pub fn append(&mut self, chunk: &[u8]) -> Result<()> {
        validate::body_len(
            self.q.options(),
            self.body.len().saturating_add(chunk.len()),
        )?;
        self.body.extend_from_slice(chunk);
        Ok(())
    }

    /// Recipients added so far.
    pub fn recipients(&self) -> &[Recipient] {
        &self.rcpts
    }

    /// The directory of the queue it goes into (for error reports).
    #[cfg(feature = "tokio")]
    pub(crate) fn queue_dir(&self) -> std::path::PathBuf {
        self.q.dir().to_path_buf()
    }

    /// Body bytes received so far.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    /// Makes the message durable (see [`Queue::enqueue`]) and returns its id.
    pub fn commit(self) -> Result<MessageId> {
        let m = NewMessage {
            sender: &self.sender,
            recipients: self.rcpts,
            meta: &self.meta,
            body: &self.body,
        };
        self.q.enqueue_admitted(&m, !self.dsn)
    }
}

impl std::io::Write for MessageBuilder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.append(buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
