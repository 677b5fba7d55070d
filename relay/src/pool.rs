//! Idle outbound connections kept for a moment after a session ends, for the
//! next session to the same next hop (Postfix's connection cache). Under load
//! a destination's session often ends because its ready work ran out a
//! moment before the next message arrived; without the cache every such
//! session pays a connect, greeting, EHLO and QUIT on both ends.

use crate::client::Client;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an idle connection is kept (Postfix's `smtp_connection_cache_time_limit`).
pub(crate) const IDLE: Duration = Duration::from_secs(2);
/// Idle connections kept per next hop.
const PER_HOP: usize = 32;

/// Idle connections by next hop, newest last.
#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<String, Vec<(Client, Instant)>>>,
}

impl Pool {
    /// The newest idle connection to `hop` that is young enough, if any.
    pub(crate) fn take(&self, hop: &str) -> Option<Client> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(hop)?;
        while let Some((c, since)) = list.pop() {
            if since.elapsed() < IDLE {
                return Some(c);
            }
        }
        None
    }

    /// Keeps `c` for the next session to `hop`; closes it when the hop has enough.
    pub(crate) async fn put(&self, hop: &str, c: Client) {
        let extra = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let list = idle.entry(hop.to_string()).or_default();
            if list.len() < PER_HOP {
                list.push((c, Instant::now()));
                None
            } else {
                Some(c)
            }
        };
        if let Some(c) = extra {
            c.quit().await;
        }
    }

    /// Says QUIT on connections idle for longer than [`IDLE`].
    pub(crate) async fn reap(&self) {
        let stale: Vec<Client> = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let mut stale = Vec::new();
            for list in idle.values_mut() {
                let (old, young): (Vec<_>, Vec<_>) = list
                    .drain(..)
                    .partition(|(_, since)| since.elapsed() >= IDLE);
                *list = young;
                stale.extend(old.into_iter().map(|(c, _)| c));
            }
            idle.retain(|_, l| !l.is_empty());
            stale
        };
        for c in stale {
            c.quit().await;
        }
    }
}
