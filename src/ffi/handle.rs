//! Handles: the opaque C types, the objects they stand for, and the table that
//! maps a handle (a token: slot index and generation) to its object. A token
//! is only compared, never dereferenced, so all of this is safe code.
//! Depends on `status` and the library's `Queue`, `MessageBuilder`,
//! `Session`, `DeliveryCore` and `Outcome`.

use super::status::{fail, mailq_status::MAILQ_ERR_INVALID_HANDLE, Fail};
use crate::session::{DeliveryCore, Session};
use crate::types::Outcome;
use crate::{MessageBuilder, Queue};
use parking_lot::Mutex;
use std::ffi::CString;
use std::sync::Arc;

// Handle tokens pack a generation and an index into one pointer-sized value.
#[cfg(not(target_pointer_width = "64"))]
compile_error!("the mailq C ABI needs a 64-bit target (handle tokens are 64-bit)");

/// An open queue. Thread-safe: may be used from several threads at once.
pub struct mailq {
    _opaque: [u8; 0],
}

/// A delivery session (one connection slot of one destination). Use from one thread at a time.
pub struct mailq_session {
    _opaque: [u8; 0],
}

/// A delivery: one message and some of its recipients. Use from one thread at a time.
pub struct mailq_delivery {
    _opaque: [u8; 0],
}

/// A message being received (streaming enqueue). Use from one thread at a time.
pub struct mailq_message {
    _opaque: [u8; 0],
}

/// The admin API server of a queue (`mailq_admin_open`): served from the
/// caller's event loop, or from a thread of its own after
/// `mailq_admin_spawn_thread`.
pub struct mailq_admin {
    _opaque: [u8; 0],
}

/// What a `mailq_admin` stands for: the server, until it moves to its thread.
#[cfg(feature = "admin")]
pub(super) enum AdminObj {
    /// Served by `mailq_admin_serve_ready`; the fd is kept for `mailq_admin_fd`.
    Loop(Box<crate::Admin>),
    /// Served by its own thread (held: dropping it stops the thread).
    Thread(#[allow(dead_code)] crate::AdminThread),
    /// Moving to its thread failed: nothing serves it any more.
    Stopped,
}

/// What a `mailq_session` stands for. The session is taken out when it ends;
/// `key` is what `mailq_session_routing_key` points into.
pub(super) struct SessionObj {
    pub(super) session: Option<Session>,
    pub(super) key: CString,
    /// Its egress source's name, if it has one.
    pub(super) source: Option<CString>,
    /// The token of the session's open delivery, if any.
    pub(super) delivery: Option<usize>,
}

/// What a `mailq_delivery` stands for: the core (taken out when the delivery
/// ends), the C strings its accessors point into, and the outcomes set so far.
pub(super) struct DeliveryObj {
    pub(super) core: Option<DeliveryCore>,
    /// The token of the session it belongs to.
    pub(super) session: usize,
    pub(super) sender: CString,
    pub(super) rcpts: Vec<CString>,
    pub(super) outcomes: Vec<Option<Outcome>>,
}

/// What a `mailq_message` stands for: a [`MessageBuilder`] (taken out on commit).
pub(super) struct MessageObj(pub(super) Option<MessageBuilder>);

#[derive(Clone)]
pub(super) enum Obj {
    Queue(Queue),
    Session(Arc<Mutex<SessionObj>>),
    Delivery(Arc<Mutex<DeliveryObj>>),
    Message(Arc<Mutex<MessageObj>>),
    #[cfg(feature = "admin")]
    Admin(Arc<Mutex<AdminObj>>),
}

/// The handle table. A handle is a slot index and the slot's generation at the
/// time of insertion; it is valid while the slot holds an object of that
/// generation.
///
/// Generations never wrap: every insertion into a slot increments its
/// generation, and a slot whose generation reached `u32::MAX` is retired when
/// its object is removed (never put back on the free list). So within a slot
/// every handle ever issued has a distinct generation, and a stale handle can
/// never match a later object. A retired slot costs one `(u32, None)` entry per
/// 2^32 - 1 handles issued from it.
struct Registry {
    slots: Vec<(u32, Option<Obj>)>,
    free: Vec<usize>,
}

static REGISTRY: Mutex<Registry> = parking_lot::const_mutex(Registry::new());

impl Registry {
    const fn new() -> Self {
        Registry {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    fn insert(&mut self, o: Obj) -> usize {
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push((0, None));
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[i];
        // Free slots are below u32::MAX (see `remove`): no wrap-around.
        slot.0 += 1;
        slot.1 = Some(o);
        // The token: generation in the high half, index + 1 in the low half.
        ((slot.0 as usize) << 32) | (i + 1)
    }

    fn lookup(&self, h: usize) -> Option<Obj> {
        let (i, gen) = decode(h)?;
        match self.slots.get(i) {
            Some((g, Some(o))) if *g == gen => Some(o.clone()),
            _ => None,
        }
    }

    fn remove(&mut self, h: usize) -> Option<Obj> {
        let (i, gen) = decode(h)?;
        let out = match self.slots.get_mut(i) {
            Some((g, o @ Some(_))) if *g == gen => o.take(),
            _ => None,
        };
        // A slot at the last generation is retired: reusing it would wrap.
        if out.is_some() && gen != u32::MAX {
            self.free.push(i);
        }
        out
    }
}

fn decode(h: usize) -> Option<(usize, u32)> {
    let i = (h & 0xffff_ffff).checked_sub(1)?;
    Some((i, (h >> 32) as u32))
}

/// Adds `o` to the table; the token is its handle.
pub(super) fn insert(o: Obj) -> usize {
    REGISTRY.lock().insert(o)
}

/// The object of token `h`, if it is live.
pub(super) fn lookup(h: usize) -> Option<Obj> {
    REGISTRY.lock().lookup(h)
}

/// Takes the object of token `h` out of the table: the token is invalid from now on.
pub(super) fn remove(h: usize) -> Option<Obj> {
    REGISTRY.lock().remove(h)
}

/// For each handle type: `$get` looks a handle up as that type, `$take` also
/// removes it from the table, `$new` adds an object and gives its handle. Any
/// other token (NULL, freed, made up, of another type) is
/// `MAILQ_ERR_INVALID_HANDLE` with `$what` in the detail.
macro_rules! typed {
    ($($get:ident, $take:ident, $new:ident: $handle:ident => $variant:ident($obj:ty), $what:literal;)*) => {$(
        #[doc = concat!("The object of a live `", stringify!($handle), "` handle.")]
        pub(super) fn $get(h: *const $handle) -> Result<$obj, Fail> {
            match lookup(h as usize) {
                Some(Obj::$variant(o)) => Ok(o),
                _ => fail(
                    MAILQ_ERR_INVALID_HANDLE,
                    concat!("not an open ", stringify!($handle), " handle (", $what, ")"),
                ),
            }
        }

        #[doc = concat!("Like `", stringify!($get), "`, and removes the handle from the table.")]
        pub(super) fn $take(h: *const $handle) -> Result<$obj, Fail> {
            let o = $get(h)?;
            remove(h as usize);
            Ok(o)
        }

        #[doc = concat!("Adds `o` to the table: a new `", stringify!($handle), "` handle.")]
        pub(super) fn $new(o: $obj) -> *mut $handle {
            insert(Obj::$variant(o)) as *mut $handle
        }
    )*};
}

typed! {
    queue, take_queue, new_queue: mailq => Queue(Queue), "NULL, freed, or another type";
    session_obj, take_session, new_session: mailq_session => Session(Arc<Mutex<SessionObj>>),
        "NULL, freed, or another type";
    delivery_obj, take_delivery, new_delivery: mailq_delivery => Delivery(Arc<Mutex<DeliveryObj>>),
        "NULL, freed, completed, or another type";
    message_obj, take_message, new_message: mailq_message => Message(Arc<Mutex<MessageObj>>),
        "NULL, freed, committed, or another type";
}

#[cfg(feature = "admin")]
typed! {
    admin_obj, take_admin, new_admin: mailq_admin => Admin(Arc<Mutex<AdminObj>>),
        "NULL, freed, or another type";
}

#[cfg(test)]
mod tests {
    use super::super::events::mailq_ack_poll;
    use super::super::status::mailq_status::MAILQ_ERR_INVALID_HANDLE;
    use super::*;
    use crate::types::Options;

    #[test]
    fn freed_handles_are_rejected_not_dereferenced() {
        let d = std::env::temp_dir().join(format!("mailq-ffi-unit-{}", std::process::id()));
        let q = Queue::open(&d, Options::default()).unwrap();
        let m = MessageObj(Some(q.message("").unwrap()));
        let h = insert(Obj::Message(Arc::new(Mutex::new(m))));
        assert!(lookup(h).is_some());
        assert!(remove(h).is_some());
        assert!(lookup(h).is_none());
        assert!(remove(h).is_none());
        assert_eq!(mailq_ack_poll(h as *mut mailq), MAILQ_ERR_INVALID_HANDLE);
        assert_eq!(
            mailq_ack_poll(std::ptr::null_mut()),
            MAILQ_ERR_INVALID_HANDLE
        );
        let _ = std::fs::remove_dir_all(
            std::env::temp_dir().join(format!("mailq-ffi-unit-{}", std::process::id())),
        );
    }

    fn session_obj_for_test(key: &str) -> Obj {
        Obj::Session(Arc::new(Mutex::new(SessionObj {
            session: None,
            key: super::super::ptr::cstring(key),
            source: None,
            delivery: None,
        })))
    }

    fn key_of(o: Option<Obj>) -> Option<String> {
        match o {
            Some(Obj::Session(s)) => Some(s.lock().key.to_string_lossy().into_owned()),
            _ => None,
        }
    }

    /// A slot whose generation reaches u32::MAX is retired, so its generation
    /// never wraps and no stale handle can validate against a newer object.
    /// With the old code the slot went back on the free list and the next
    /// insertion wrapped to generation 1: the handle issued at generation 1
    /// long before resolved to the new object.
    #[test]
    fn handle_generations_never_wrap() {
        let mut r = Registry::new();
        let first = r.insert(session_obj_for_test("first"));
        let (slot, gen) = decode(first).expect("valid token");
        assert_eq!(gen, 1);
        assert!(r.remove(first).is_some());
        // As if the slot had been used 2^32 - 2 times.
        r.slots[slot].0 = u32::MAX - 1;
        let last = r.insert(session_obj_for_test("last"));
        assert_eq!(decode(last), Some((slot, u32::MAX)));
        assert_eq!(key_of(r.lookup(last)).as_deref(), Some("last"));
        assert!(r.remove(last).is_some());

        let next = r.insert(session_obj_for_test("next"));
        for stale in [first, last] {
            assert!(
                r.lookup(stale).is_none(),
                "stale handle {stale:#x} resolved"
            );
            assert!(r.remove(stale).is_none(), "stale handle {stale:#x} removed");
        }
        assert_eq!(key_of(r.lookup(next)).as_deref(), Some("next"));
        let (next_slot, _) = decode(next).expect("valid token");
        assert_ne!(next_slot, slot, "the retired slot was reused");
        assert!(
            !r.free.contains(&slot),
            "the retired slot is on the free list"
        );
        // Every generation the retired slot ever had is rejected.
        for g in [0, 1, 2, u32::MAX - 1, u32::MAX] {
            let token = ((g as usize) << 32) | (slot + 1);
            assert!(r.lookup(token).is_none(), "generation {g} resolved");
        }
        assert_eq!(key_of(r.lookup(next)).as_deref(), Some("next"));
    }
}
