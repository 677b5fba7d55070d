//! `mailq-relay`: a durable SMTP relay (a smarthost) on tokio, built on the
//! mailq queue. It accepts mail from allowed clients or for allowed domains,
//! answers `250` only once the message is on disk, and delivers each
//! destination's mail over one SMTP connection per mailq session to a
//! configured next hop. Failed and expired recipients get an RFC 3464 DSN.
//!
//! The binary (`src/main.rs`) is flags and signals around [`Relay`]; tests
//! start a `Relay` in-process.

pub mod client;
pub mod config;
mod conn;
mod deliver;
pub mod dsn;
mod headers;
mod pool;
mod server;
pub mod tls;

pub use config::{Args, Config, ConfigError};

use mailq::{AsyncQueue, Options, Queue};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

/// Why the relay could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The queue could not be opened or closed.
    #[error("queue: {0}")]
    Queue(#[from] mailq::Error),
    /// STARTTLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}; is another server on that port?")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The relay needs the multi-threaded runtime (it moves disk work off the
    /// worker threads with `block_in_place`).
    #[error("mailq-relay needs tokio's multi-threaded runtime (#[tokio::main] or flavor = \"multi_thread\")")]
    Runtime,
}

/// What every task of the relay shares.
pub(crate) struct Shared {
    pub(crate) cfg: config::Config,
    pub(crate) q: AsyncQueue,
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    /// Set when the queue became read-only: new mail is refused with 421.
    pub(crate) refusing: AtomicBool,
    /// A delivery produced a permanent failure: look for bounces now.
    pub(crate) bounce_ready: Notify,
    /// Messages answered `250` since start.
    pub(crate) accepted: AtomicU64,
    /// Idle outbound connections for the next session to the same hop.
    pub(crate) pool: pool::Pool,
}

/// A running relay.
pub struct Relay {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Relay {
    /// Opens the queue, binds the listener and starts accepting and delivering.
    /// Must run inside a multi-threaded tokio runtime.
    pub async fn start(cfg: Config) -> Result<Relay, RelayError> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        if Handle::current().runtime_flavor() != RuntimeFlavor::MultiThread {
            return Err(RelayError::Runtime);
        }
        cfg.check()?;
        let tls = match &cfg.tls {
            Some((cert, key)) => Some(tls::acceptor(cert, key)?),
            None => None,
        };
        let opts = Options {
            // Room for the Received header the relay adds.
            max_body: cfg.max_size + 4096,
            max_recipients: cfg.max_recipients,
            min_backoff: cfg.min_backoff,
            max_backoff: cfg.max_backoff.max(cfg.min_backoff),
            lifetime: cfg.lifetime,
            delay_warning: cfg.delay_warning,
            lease_ttl: cfg.lease_ttl(),
            max_queued_recipients: cfg.max_queued_recipients,
            max_queued_bytes: cfg.max_queued_bytes,
            min_free_disk: cfg.min_free_disk,
            ..Options::default()
        };
        let opts = match &cfg.vfs {
            Some(vfs) => Options {
                vfs: vfs.clone(),
                ..opts
            },
            None => opts,
        };
        let dir = cfg.queue_dir.clone();
        let queue = tokio::task::spawn_blocking(move || Queue::open(dir, opts))
            .await
            .map_err(|e| {
                mailq::Error::InvalidOption(format!("opening the queue panicked: {e}"))
            })??;
        if !cfg.sources.is_empty() {
            // Sources are configuration: the default pool, set at each start.
            let names: Vec<&str> = cfg.sources.iter().map(|(n, _)| n.as_str()).collect();
            queue.set_sources(None, &names)?;
        }
        let report = queue.recovery_report();
        let q = AsyncQueue::new(queue)?;
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| RelayError::Listen {
                    addr: cfg.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| RelayError::Listen {
            addr: cfg.listen,
            source,
        })?;
        tracing::info!(
            listen = %addr,
            queue = %cfg.queue_dir.display(),
            relay_to = cfg.routes.default.as_deref().unwrap_or("-"),
            starttls = tls.is_some(),
            messages = report.messages,
            recipients = report.recipients,
            damaged = report.damaged.len(),
            recovery_ms = report.duration.as_millis() as u64,
            "mailq-relay started"
        );
        let shared = Arc::new(Shared {
            cfg,
            q,
            tls,
            refusing: AtomicBool::new(false),
            bounce_ready: Notify::new(),
            accepted: AtomicU64::new(0),
            pool: pool::Pool::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(shared.clone(), listener, stopped.clone()));
        tasks.spawn(deliver::dispatch(shared.clone(), stopped.clone()));
        tasks.spawn(deliver::reap_idle(shared.clone(), stopped.clone()));
        if let Some(opts) = &shared.cfg.admin {
            let admin = mailq::Admin::open(shared.q.queue(), opts.clone())?;
            tracing::info!(socket = %admin.socket_path().display(), tcp = ?admin.tcp_addr(), "admin API for mailqctl");
            let mut stop = stopped.clone();
            tasks.spawn(async move {
                tokio::select! {
                    r = admin.serve_tokio() => if let Err(e) = r {
                        tracing::error!("admin API stopped: {e}");
                    },
                    _ = stop.wait_for(|s| *s) => {}
                }
            });
        }
        tasks.spawn(dsn::bounce_loop(shared.clone(), stopped));
        // The first round of bounces (left from before a restart).
        shared.bounce_ready.notify_one();
        Ok(Relay {
            shared,
            addr,
            stop,
            tasks,
        })
    }

    /// The address the SMTP listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The queue (stats, operator actions).
    pub fn queue(&self) -> &Queue {
        self.shared.q.queue()
    }

    /// Messages answered `250` since start.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Stops accepting, cancels client connections and deliveries in flight
    /// (nothing unanswered was acknowledged; interrupted deliveries are retried
    /// at the next start), and closes the queue with a checkpoint.
    pub async fn shutdown(mut self) -> Result<(), RelayError> {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        let q = self.shared.q.queue().clone();
        drop(self.shared);
        tokio::task::spawn_blocking(move || q.close())
            .await
            .map_err(|e| {
                mailq::Error::InvalidOption(format!("closing the queue panicked: {e}"))
            })??;
        tracing::info!("mailq-relay stopped");
        Ok(())
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(shared.cfg.max_connections));
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        while conns.try_join_next().is_some() {}
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: wait a little instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let shared = shared.clone();
                conns.spawn(async move {
                    server::serve(shared, tcp, peer).await;
                    drop(slot);
                });
            }
            Err(_) => {
                let host = shared.cfg.hostname.clone();
                conns.spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let mut tcp = tcp;
                    let line = format!(
                        "421 4.7.0 {host} Error: too many connections, try again later\r\n"
                    );
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        tcp.write_all(line.as_bytes()),
                    )
                    .await;
                });
            }
        }
    }
    conns.shutdown().await;
}
