//! The relay's configuration: command-line flags (clap), an optional TOML file
//! whose values the flags override, and the routes file. Everything is checked
//! here, before a socket is opened or the queue is touched, so a typo is one
//! clear error at start-up instead of mail going astray.

use clap::Parser;
use ipnet::IpNet;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem, reported before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML file does not parse or has unknown keys.
    #[error("{path}: {source}; fix the file (every key is listed in `mailq-relay --help`)")]
    Toml {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A value is malformed.
    #[error("{what}: {value:?} {why}")]
    Value {
        /// Which setting.
        what: &'static str,
        /// The value given.
        value: String,
        /// What is wrong and what is expected.
        why: &'static str,
    },
    /// A required setting is missing.
    #[error("{0}")]
    Missing(&'static str),
}

/// Command-line flags. Each may also be set in the TOML file given by
/// `--config` (same names with underscores); a flag wins over the file.
#[derive(Debug, Default, Parser)]
#[command(
    name = "mailq-relay",
    version,
    about = "A durable SMTP relay (smarthost) on the mailq queue"
)]
pub struct Args {
    /// TOML file with any of the settings below.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Queue directory (created if missing; locked while the relay runs).
    #[arg(long, value_name = "DIR")]
    pub queue: Option<PathBuf>,
    /// Address to accept SMTP on [default: 127.0.0.1:2525].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Default next hop for every destination without a route.
    #[arg(long, value_name = "HOST:PORT")]
    pub relay_to: Option<String>,
    /// Routes file: lines of `DOMAIN-OR-KEY HOST:PORT` (`.example.com` matches subdomains; `#` comments).
    #[arg(long, value_name = "FILE")]
    pub routes: Option<PathBuf>,
    /// Client network allowed to relay to any domain (repeatable). Without this
    /// flag and without --allow-domain, only loopback clients may relay.
    #[arg(long = "allow-network", value_name = "CIDR")]
    pub allow_network: Vec<String>,
    /// Recipient domain any client may send to (repeatable; subdomains not included).
    #[arg(long = "allow-domain", value_name = "DOMAIN")]
    pub allow_domain: Vec<String>,
    /// PEM certificate chain; with --tls-key, STARTTLS is offered.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Largest message accepted, in bytes [default: 10240000, Postfix's message_size_limit].
    #[arg(long, value_name = "BYTES")]
    pub max_size: Option<usize>,
    /// Most recipients per message [default: 1000, Postfix's smtpd_recipient_limit].
    #[arg(long, value_name = "N")]
    pub max_recipients: Option<usize>,
    /// Most simultaneous inbound connections [default: 1000].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most simultaneous outbound connections, all destinations together [default: 500].
    #[arg(long, value_name = "N")]
    pub max_outbound: Option<usize>,
    /// Name in the greeting, EHLO and Received headers [default: the host name].
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Seconds to wait for a command from a client [default: 300].
    #[arg(long, value_name = "SECS")]
    pub command_timeout: Option<u64>,
    /// Seconds to wait for each read during DATA [default: 180].
    #[arg(long, value_name = "SECS")]
    pub data_timeout: Option<u64>,
    /// Seconds to connect to a next hop [default: 30].
    #[arg(long, value_name = "SECS")]
    pub connect_timeout: Option<u64>,
    /// Seconds to wait for each reply from a next hop [default: 300; 600 after DATA's final dot].
    #[arg(long, value_name = "SECS")]
    pub reply_timeout: Option<u64>,
    /// First retry delay in seconds [default: 300].
    #[arg(long, value_name = "SECS")]
    pub min_backoff: Option<u64>,
    /// Longest retry delay in seconds [default: 4000].
    #[arg(long, value_name = "SECS")]
    pub max_backoff: Option<u64>,
    /// Seconds after which undeliverable mail is returned to its sender [default: 432000, 5 days].
    #[arg(long, value_name = "SECS")]
    pub lifetime: Option<u64>,
    /// Seconds after which the sender of mail not yet delivered is told once
    /// that it is delayed (DSN `Action: delayed`) [default: 0, never; below the lifetime].
    #[arg(long, value_name = "SECS")]
    pub delay_warning: Option<u64>,
    /// Answer 452 4.3.1 above this many queued recipients [default: 0, no limit].
    #[arg(long, value_name = "N")]
    pub max_queued_recipients: Option<u64>,
    /// Answer 452 4.3.1 above this many bytes of queued messages [default: 0, no limit].
    #[arg(long, value_name = "BYTES")]
    pub max_queued_bytes: Option<u64>,
    /// Answer 452 4.3.1 when the queue's filesystem has less free space [default: 134217728, 128 MiB; 0: no check].
    #[arg(long, value_name = "BYTES")]
    pub min_free_disk: Option<u64>,
    /// Admin API socket for mailqctl [default: QUEUE/admin.sock].
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
    /// Also serve the admin API on this TCP address (for Prometheus: /metrics
    /// is open there, the rest needs --admin-token-file); loopback only.
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin_listen: Option<SocketAddr>,
    /// File holding the bearer token for the TCP admin endpoints beyond /metrics.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// A group (numeric gid) whose members may use the admin API read-only.
    #[arg(long, value_name = "GID")]
    pub admin_read_group: Option<u32>,
    /// Do not serve the admin API.
    #[arg(long)]
    pub no_admin: bool,
    /// An egress source, NAME=IP (repeat for a pool): sessions are spread
    /// over the sources and each connects from its address; mailqctl
    /// source-limit sets per-source limits per destination [default: none,
    /// the system picks the address].
    #[arg(long = "source", value_name = "NAME=IP")]
    pub source: Vec<String>,
}

/// The TOML file: the same settings as [`Args`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    queue: Option<PathBuf>,
    listen: Option<SocketAddr>,
    relay_to: Option<String>,
    routes: Option<PathBuf>,
    #[serde(default)]
    allow_network: Vec<String>,
    #[serde(default)]
    allow_domain: Vec<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    max_size: Option<usize>,
    max_recipients: Option<usize>,
    max_connections: Option<usize>,
    max_outbound: Option<usize>,
    hostname: Option<String>,
    command_timeout: Option<u64>,
    data_timeout: Option<u64>,
    connect_timeout: Option<u64>,
    reply_timeout: Option<u64>,
    min_backoff: Option<u64>,
    max_backoff: Option<u64>,
    lifetime: Option<u64>,
    delay_warning: Option<u64>,
    max_queued_recipients: Option<u64>,
    max_queued_bytes: Option<u64>,
    min_free_disk: Option<u64>,
    admin_socket: Option<PathBuf>,
    admin_listen: Option<SocketAddr>,
    admin_token_file: Option<PathBuf>,
    admin_read_group: Option<u32>,
    #[serde(default)]
    no_admin: bool,
    #[serde(default)]
    source: Vec<String>,
}

/// Next hops: the default (`--relay-to`) and per domain or routing key.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    /// Used when nothing else matches.
    pub default: Option<String>,
    exact: HashMap<String, String>,
    /// `.example.com` entries, without the leading dot.
    parents: HashMap<String, String>,
}

impl Routes {
    /// Adds one route (`key` may start with `.` to match subdomains).
    pub fn insert(&mut self, key: &str, hop: &str) -> Result<(), ConfigError> {
        check_hop(hop)?;
        let key = key.to_ascii_lowercase();
        match key.strip_prefix('.') {
            Some(parent) => self.parents.insert(parent.to_string(), hop.to_string()),
            None => self.exact.insert(key, hop.to_string()),
        };
        Ok(())
    }

    /// Parses a routes file's text.
    pub fn parse(&mut self, text: &str) -> Result<(), ConfigError> {
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut it = line.split_whitespace();
            match (it.next(), it.next(), it.next()) {
                (Some(key), Some(hop), None) => self.insert(key, hop)?,
                _ => {
                    return Err(ConfigError::Value {
                        what: "routes file line",
                        value: line.to_string(),
                        why: "is not `DOMAIN-OR-KEY HOST:PORT`",
                    })
                }
            }
        }
        Ok(())
    }

    /// The next hop for a routing key (a domain unless the MTA set a key): the
    /// exact entry, else the nearest `.parent` entry, else the default.
    pub fn lookup(&self, key: &str) -> Option<&str> {
        let key = key.to_ascii_lowercase();
        if let Some(hop) = self.exact.get(&key) {
            return Some(hop);
        }
        let mut rest = key.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(hop) = self.parents.get(parent) {
                return Some(hop);
            }
            rest = parent;
        }
        self.default.as_deref()
    }
}

/// `host:port` with a numeric port (resolution happens at connect time).
fn check_hop(hop: &str) -> Result<(), ConfigError> {
    let ok = hop
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Value {
            what: "next hop",
            value: hop.to_string(),
            why: "is not HOST:PORT (e.g. 127.0.0.1:25 or [::1]:25 or smarthost.example:587)",
        })
    }
}

/// Who may relay where.
#[derive(Debug, Clone, Default)]
pub struct RelayPolicy {
    /// Clients in these networks may send to any domain.
    pub networks: Vec<IpNet>,
    /// Any client may send to these domains (lower case).
    pub domains: Vec<String>,
}

impl RelayPolicy {
    /// True when `client` may send mail to `domain`.
    pub fn allows(&self, client: IpAddr, domain: &str) -> bool {
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(client),
            v4 => v4,
        };
        self.networks.iter().any(|n| n.contains(&client))
            || self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

/// Everything the relay runs with, checked.
#[derive(Clone)]
pub struct Config {
    /// Queue directory.
    pub queue_dir: PathBuf,
    /// SMTP listen address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Next hops.
    pub routes: Routes,
    /// Relay control.
    pub policy: RelayPolicy,
    /// Certificate and key files for STARTTLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Largest message in bytes.
    pub max_size: usize,
    /// Most recipients per message.
    pub max_recipients: usize,
    /// Most simultaneous inbound connections.
    pub max_connections: usize,
    /// Most simultaneous outbound connections.
    pub max_outbound: usize,
    /// Greeting, EHLO and Received name.
    pub hostname: String,
    /// Wait for a client command.
    pub command_timeout: Duration,
    /// Wait for each read during DATA.
    pub data_timeout: Duration,
    /// Connect to a next hop.
    pub connect_timeout: Duration,
    /// Wait for each reply of a next hop.
    pub reply_timeout: Duration,
    /// Retry delays and lifetime, passed to the queue.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Lifetime of undeliverable mail.
    pub lifetime: Duration,
    /// When to warn the sender of a delay (zero: never).
    pub delay_warning: Duration,
    /// Backpressure limits, passed to the queue (0: none).
    pub max_queued_recipients: u64,
    /// Bytes of queued messages.
    pub max_queued_bytes: u64,
    /// Free-disk watermark.
    pub min_free_disk: u64,
    /// The queue's filesystem (default: the operating system's). Tests put a
    /// fault-injecting one here.
    pub vfs: Option<std::sync::Arc<dyn mailq::Vfs>>,
    /// The admin API (`mailqctl`), served by default; `None` turns it off.
    pub admin: Option<mailq::AdminOptions>,
    /// Egress sources (name, local address), the default pool of every
    /// destination; empty: none.
    pub sources: Vec<(String, std::net::IpAddr)>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("queue_dir", &self.queue_dir)
            .field("listen", &self.listen)
            .field("routes", &self.routes)
            .field("policy", &self.policy)
            .field("tls", &self.tls)
            .field("max_size", &self.max_size)
            .field("max_recipients", &self.max_recipients)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A configuration with the defaults, for `queue_dir` (tests and embedders).
    pub fn new(queue_dir: impl Into<PathBuf>) -> Config {
        Config {
            queue_dir: queue_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 2525)),
            routes: Routes::default(),
            policy: RelayPolicy {
                networks: loopback(),
                domains: Vec::new(),
            },
            tls: None,
            max_size: 10_240_000,
            max_recipients: 1000,
            max_connections: 1000,
            max_outbound: 500,
            hostname: host_name(),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            connect_timeout: Duration::from_secs(30),
            reply_timeout: Duration::from_secs(300),
            min_backoff: Duration::from_secs(300),
            max_backoff: Duration::from_secs(4000),
            lifetime: Duration::from_secs(5 * 86400),
            delay_warning: Duration::ZERO,
            max_queued_recipients: 0,
            max_queued_bytes: 0,
            min_free_disk: mailq::Options::default().min_free_disk,
            vfs: None,
            admin: Some(mailq::AdminOptions::default()),
            sources: Vec::new(),
        }
    }

    /// Builds the configuration from flags and the file they name.
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = read(path)?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Toml {
                    path: path.clone(),
                    source: Box::new(e),
                })?
            }
            None => FileConfig::default(),
        };
        let queue = args.queue.or(file.queue).ok_or(ConfigError::Missing(
            "no queue directory: give --queue DIR (or `queue = \"DIR\"` in the config file)",
        ))?;
        let mut c = Config::new(queue);
        if let Some(l) = args.listen.or(file.listen) {
            c.listen = l;
        }
        c.routes.default = args.relay_to.or(file.relay_to);
        if let Some(hop) = &c.routes.default {
            check_hop(hop)?;
        }
        if let Some(path) = args.routes.or(file.routes) {
            c.routes.parse(&read(&path)?)?;
        }
        let nets = pick(args.allow_network, file.allow_network);
        let domains = pick(args.allow_domain, file.allow_domain);
        if !nets.is_empty() || !domains.is_empty() {
            c.policy.networks = nets
                .iter()
                .map(|n| parse_net(n))
                .collect::<Result<_, _>>()?;
            c.policy.domains = domains.iter().map(|d| d.to_ascii_lowercase()).collect();
        }
        c.tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Missing(
                    "--tls-cert and --tls-key go together: give both or neither",
                ))
            }
        };
        set(&mut c.max_size, args.max_size.or(file.max_size));
        set(
            &mut c.max_recipients,
            args.max_recipients.or(file.max_recipients),
        );
        set(
            &mut c.max_connections,
            args.max_connections.or(file.max_connections),
        );
        set(&mut c.max_outbound, args.max_outbound.or(file.max_outbound));
        set(&mut c.hostname, args.hostname.or(file.hostname));
        let secs = |a: Option<u64>, f: Option<u64>| a.or(f).map(Duration::from_secs);
        set(
            &mut c.command_timeout,
            secs(args.command_timeout, file.command_timeout),
        );
        set(
            &mut c.data_timeout,
            secs(args.data_timeout, file.data_timeout),
        );
        set(
            &mut c.connect_timeout,
            secs(args.connect_timeout, file.connect_timeout),
        );
        set(
            &mut c.reply_timeout,
            secs(args.reply_timeout, file.reply_timeout),
        );
        set(&mut c.min_backoff, secs(args.min_backoff, file.min_backoff));
        set(&mut c.max_backoff, secs(args.max_backoff, file.max_backoff));
        set(&mut c.lifetime, secs(args.lifetime, file.lifetime));
        set(
            &mut c.delay_warning,
            secs(args.delay_warning, file.delay_warning),
        );
        set(
            &mut c.max_queued_recipients,
            args.max_queued_recipients.or(file.max_queued_recipients),
        );
        set(
            &mut c.max_queued_bytes,
            args.max_queued_bytes.or(file.max_queued_bytes),
        );
        set(
            &mut c.min_free_disk,
            args.min_free_disk.or(file.min_free_disk),
        );
        if args.no_admin || file.no_admin {
            c.admin = None;
        } else {
            let token = match args.admin_token_file.or(file.admin_token_file) {
                Some(path) => match read(&path)?.trim() {
                    "" => {
                        return Err(ConfigError::Missing(
                            "the admin token file is empty: put a long random token in it",
                        ))
                    }
                    t => Some(t.to_string()),
                },
                None => None,
            };
            c.admin = Some(mailq::AdminOptions {
                socket: args.admin_socket.or(file.admin_socket),
                tcp: args.admin_listen.or(file.admin_listen),
                token,
                read_group: args.admin_read_group.or(file.admin_read_group),
                ..Default::default()
            });
        }
        c.sources = pick(args.source, file.source)
            .iter()
            .map(|s| parse_source(s))
            .collect::<Result<_, _>>()?;
        c.check()?;
        Ok(c)
    }

    /// The local address of egress source `name`, if it is one.
    pub fn source_addr(&self, name: &str) -> Option<std::net::IpAddr> {
        self.sources.iter().find(|(n, _)| n == name).map(|s| s.1)
    }

    /// The outbound client's deadlines.
    pub fn client_timeouts(&self) -> crate::client::Timeouts {
        crate::client::Timeouts {
            connect: self.connect_timeout,
            reply: self.reply_timeout,
            data_end: self.reply_timeout * 2,
        }
    }

    /// The longest one delivery attempt may take: connect, greeting and EHLO,
    /// RSET, the pipelined MAIL/RCPT/DATA replies, the body and the final
    /// reply. Attempts are cut there, so they always end inside the lease.
    pub fn delivery_deadline(&self) -> Duration {
        let t = self.client_timeouts();
        t.connect + t.reply * 6 + t.data_end
    }

    /// The queue's session lease: a delivery deadline plus a margin, so a live
    /// session is never reclaimed under a slow but working delivery.
    pub fn lease_ttl(&self) -> Duration {
        self.delivery_deadline() + Duration::from_secs(60)
    }

    /// Rejects settings that cannot work.
    pub fn check(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max-size", self.max_size),
            ("max-recipients", self.max_recipients),
            ("max-connections", self.max_connections),
            ("max-outbound", self.max_outbound),
        ];
        for (what, v) in positive {
            if v == 0 {
                return Err(ConfigError::Value {
                    what,
                    value: "0".into(),
                    why: "must be at least 1",
                });
            }
        }
        if self.hostname.is_empty() || self.hostname.chars().any(|c| c.is_whitespace()) {
            return Err(ConfigError::Value {
                what: "hostname",
                value: self.hostname.clone(),
                why: "must be one word (a domain name)",
            });
        }
        for (i, (name, _)) in self.sources.iter().enumerate() {
            if self.sources[..i].iter().any(|(n, _)| n == name) {
                return Err(ConfigError::Value {
                    what: "--source",
                    value: name.clone(),
                    why: "is given twice: give each source one address",
                });
            }
        }
        Ok(())
    }
}

fn pick<T>(flags: Vec<T>, file: Vec<T>) -> Vec<T> {
    if flags.is_empty() {
        file
    } else {
        flags
    }
}

fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A CIDR, or a single address (as a /32 or /128).
fn parse_net(s: &str) -> Result<IpNet, ConfigError> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| ConfigError::Value {
            what: "--allow-network",
            value: s.to_string(),
            why: "is not a network (e.g. 192.0.2.0/24, 2001:db8::/32 or 127.0.0.1)",
        })
}

fn parse_source(s: &str) -> Result<(String, IpAddr), ConfigError> {
    match s.split_once('=') {
        Some((name, ip)) if !name.is_empty() => match ip.parse::<IpAddr>() {
            Ok(ip) => Ok((name.to_string(), ip)),
            Err(_) => Err(ConfigError::Value {
                what: "--source",
                value: s.to_string(),
                why: "has no IP address after '=' (e.g. ip-1=192.0.2.1)",
            }),
        },
        _ => Err(ConfigError::Value {
            what: "--source",
            value: s.to_string(),
            why: "is not NAME=IP (e.g. ip-1=192.0.2.1)",
        }),
    }
}

fn loopback() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The machine's host name (`/proc/sys/kernel/hostname`), or `localhost`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace))
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_exact_then_parent_then_default() {
        let mut r = Routes::default();
        r.parse("# comment\nexample.com 10.0.0.1:25\n.example.org 10.0.0.2:25 # subdomains\n")
            .unwrap();
        r.default = Some("10.0.0.9:25".into());
        assert_eq!(r.lookup("EXAMPLE.com"), Some("10.0.0.1:25"));
        assert_eq!(r.lookup("a.b.example.org"), Some("10.0.0.2:25"));
        assert_eq!(r.lookup("example.org"), Some("10.0.0.9:25"));
        assert_eq!(r.lookup("sub.example.com"), Some("10.0.0.9:25"));
        assert!(r.parse("example.net").is_err());
        assert!(r.parse("example.net host-without-port").is_err());
    }

    #[test]
    fn relay_policy_is_closed_unless_configured() {
        let p = RelayPolicy {
            networks: vec![parse_net("192.0.2.0/24").unwrap()],
            domains: vec!["example.com".into()],
        };
        assert!(p.allows("192.0.2.7".parse().unwrap(), "anywhere.net"));
        assert!(p.allows("::ffff:192.0.2.7".parse().unwrap(), "anywhere.net"));
        assert!(p.allows("198.51.100.1".parse().unwrap(), "EXAMPLE.COM"));
        assert!(!p.allows("198.51.100.1".parse().unwrap(), "sub.example.com"));
        assert!(!p.allows("198.51.100.1".parse().unwrap(), "anywhere.net"));
        assert!(!RelayPolicy::default().allows("127.0.0.1".parse().unwrap(), "x.org"));
    }

    #[test]
    fn flags_override_the_file_and_bad_values_are_refused() {
        let dir = std::env::temp_dir().join(format!("mailq-relay-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("relay.toml");
        std::fs::write(
            &file,
            "queue = \"/var/q\"\nmax_size = 1000\nallow_domain = [\"Example.com\"]\n",
        )
        .unwrap();
        let args = Args::parse_from([
            "mailq-relay",
            "--config",
            file.to_str().unwrap(),
            "--max-size",
            "2000",
        ]);
        let c = Config::from_args(args).unwrap();
        assert_eq!(c.queue_dir, PathBuf::from("/var/q"));
        assert_eq!(c.max_size, 2000);
        assert_eq!(c.policy.domains, vec!["example.com".to_string()]);
        assert!(
            c.policy.networks.is_empty(),
            "a domain list alone opens no network"
        );
        std::fs::write(&file, "queue = \"/var/q\"\nbogus = 1\n").unwrap();
        let args = Args::parse_from(["mailq-relay", "--config", file.to_str().unwrap()]);
        assert!(matches!(
            Config::from_args(args),
            Err(ConfigError::Toml { .. })
        ));
        let args = Args::parse_from([
            "mailq-relay",
            "--queue",
            "q",
            "--allow-network",
            "10.0.0.0/33",
        ]);
        assert!(Config::from_args(args).is_err());
        let args = Args::parse_from(["mailq-relay", "--queue", "q", "--relay-to", "nohost"]);
        assert!(Config::from_args(args).is_err());
        let args = Args::parse_from(["mailq-relay", "--queue", "q", "--tls-cert", "c.pem"]);
        assert!(Config::from_args(args).is_err());
        let args = Args::parse_from(["mailq-relay", "--queue", "q"]);
        let c = Config::from_args(args).unwrap();
        assert!(c.policy.allows("127.0.0.1".parse().unwrap(), "x.org"));
        assert!(!c.policy.allows("192.0.2.1".parse().unwrap(), "x.org"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
