//! Running under systemd: the notify protocol and socket activation.
//!
//! Owns: [`Notifier`], what wsgate tells the service manager and when —
//! `READY=1` once listeners are bound and the first config is live;
//! `RELOADING=1` with `MONOTONIC_USEC` before a reload (SIGHUP, the file
//! watch or `POST /reload`) and `READY=1` with a `STATUS` after it, failed
//! or not; `STOPPING=1` when a stop begins; a `STATUS` with the number of
//! open tunnels every few seconds, and `WATCHDOG=1` at half of
//! `WATCHDOG_USEC` from a runtime task (so a wedged runtime stops pinging).
//! Nothing is sent without `NOTIFY_SOCKET`. And [`take_inherited`]: the
//! listening sockets passed by socket activation (`LISTEN_PID`,
//! `LISTEN_FDS`, `LISTEN_FDNAMES`), checked and keyed by name.
//!
//! Must not: decide what a name binds to (the binary matches inherited
//! sockets to listeners), or block: a failed notification is logged once
//! per kind and otherwise ignored, since the service manager's view is
//! not worth stopping traffic for.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// How often a `STATUS` line is sent when no watchdog asks for more.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// Sends notifications to the service manager; does nothing when wsgate
/// was not started with `NOTIFY_SOCKET` (or was made with
/// [`Notifier::disabled`], as the library's own tests are).
#[derive(Debug, Clone, Copy, Default)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    /// Enabled when `NOTIFY_SOCKET` is set.
    pub fn from_env() -> Self {
        Self {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty()),
        }
    }

    /// Sends nothing.
    pub fn disabled() -> Self {
        Self { enabled: false }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "cannot notify the service manager");
        }
    }

    /// `READY=1` and what runs.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `RELOADING=1` with the monotonic time, as `Type=notify-reload` and
    /// `systemctl reload` expect.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[
                NotifyState::Reloading,
                now,
                NotifyState::Status("reloading the config"),
            ]),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the monotonic clock");
                self.send(&[NotifyState::Reloading]);
            }
        }
    }

    /// `STOPPING=1`.
    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// A `STATUS` line, with `WATCHDOG=1` when `ping`.
    pub fn status(&self, status: &str, ping: bool) {
        if ping {
            self.send(&[NotifyState::Watchdog, NotifyState::Status(status)]);
        } else {
            self.send(&[NotifyState::Status(status)]);
        }
    }
}

/// What the `STATUS` line says: open tunnels, and the phase.
pub fn status_line(shared: &Shared) -> String {
    let tunnels = shared.registry.live_count();
    let version = shared.snapshot.load().config.version.clone();
    if shared.stopping.is_cancelled() {
        format!("stopping: {tunnels} tunnels open")
    } else {
        format!("{tunnels} tunnels open; config {version}")
    }
}

/// Until `stop`: a `STATUS` line every [`STATUS_INTERVAL`] or, when the
/// service manager asked for a watchdog (`WATCHDOG_USEC`, for this process
/// by `WATCHDOG_PID`), `WATCHDOG=1` with it at half that interval.
pub async fn heartbeat(shared: Arc<Shared>, notifier: Notifier, stop: CancellationToken) {
    let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
    let every = watchdog.map_or(STATUS_INTERVAL, |d| d / 2);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        notifier.status(&status_line(&shared), watchdog.is_some());
    }
}

// === socket activation ===

/// A socket passed by socket activation could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// `LISTEN_FDS`, `LISTEN_PID` or `LISTEN_FDNAMES` is malformed.
    #[error("socket activation: {0}")]
    Environment(#[source] std::io::Error),
    /// The descriptor is not a TCP socket.
    #[error("socket activation: the socket named {name} (fd {fd}) is not a TCP socket: {source}")]
    NotTcp {
        /// Its `FileDescriptorName=`.
        name: String,
        /// Its descriptor number.
        fd: usize,
        /// Why it was refused.
        #[source]
        source: std::io::Error,
    },
    /// The socket is not listening (a `Accept=yes` connection, or a
    /// socket that was never `listen`ed on).
    #[error("socket activation: the socket named {name} (fd {fd}) is not listening")]
    NotListening {
        /// Its `FileDescriptorName=`.
        name: String,
        /// Its descriptor number.
        fd: usize,
    },
    /// Two sockets have the same name.
    #[error("socket activation: two sockets are named {0}")]
    Duplicate(String),
    /// A name matches no listener.
    #[error("socket activation: the socket named {name} matches no [[listeners]] name{}; set FileDescriptorName= in the socket unit to a listener's name, or \"admin\"", if known.is_empty() { String::new() } else { format!(" ({})", known.join(", ")) })]
    UnknownName {
        /// The name that matched nothing.
        name: String,
        /// The names that would match.
        known: Vec<String>,
    },
}

/// Listening sockets passed by socket activation, by name.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: HashMap<String, std::net::TcpListener>,
}

impl Inherited {
    /// Takes the socket called `name`, if one was passed.
    pub fn take(&mut self, name: &str) -> Option<std::net::TcpListener> {
        self.sockets.remove(name)
    }

    /// Names of the sockets passed.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.sockets.keys().map(String::as_str)
    }

    /// Every name must be one of `known`.
    ///
    /// # Errors
    /// [`ActivationError::UnknownName`] for the first name that is not.
    pub fn check_names(&self, known: &[String]) -> Result<(), ActivationError> {
        let mut names: Vec<&str> = self.names().collect();
        names.sort_unstable();
        match names.into_iter().find(|n| !known.iter().any(|k| k == n)) {
            Some(name) => Err(ActivationError::UnknownName {
                name: name.to_string(),
                known: known.to_vec(),
            }),
            None => Ok(()),
        }
    }
}

/// Takes the sockets passed to this process by socket activation: each
/// must be a listening TCP socket; each is made non-blocking. Empty when
/// none were passed (or they were meant for another process).
///
/// Call it before any thread starts: it clears `LISTEN_FDS`, `LISTEN_PID`
/// and `LISTEN_FDNAMES`, so that no child inherits them.
///
/// # Errors
/// [`ActivationError`] naming the socket and what is wrong with it.
pub fn take_inherited() -> Result<Inherited, ActivationError> {
    // Sockets meant for another process (`LISTEN_PID` names it: a parent
    // that was activated and did not exec) are not ours, whatever
    // `LISTEN_FDNAMES` says: checked before the names, which would
    // otherwise disagree with the empty list and refuse the start.
    let ours = sd_notify::listen_fds()
        .map_err(ActivationError::Environment)?
        .len();
    let named: Vec<(i32, String)> = if ours == 0 {
        Vec::new()
    } else {
        sd_notify::listen_fds_with_names()
            .map_err(ActivationError::Environment)?
            .collect()
    };
    // Reads and clears LISTEN_FDS and LISTEN_PID; it reads the same
    // descriptors, in the same order, as the names above.
    let mut fds = listenfd::ListenFd::from_env();
    std::env::remove_var("LISTEN_FDNAMES");
    let mut sockets = HashMap::new();
    for (idx, (fd, name)) in named.into_iter().enumerate() {
        let fd = usize::try_from(fd).unwrap_or(idx + 3);
        let listener = match fds.take_tcp_listener(idx) {
            Ok(Some(l)) => l,
            Ok(None) => {
                return Err(ActivationError::NotTcp {
                    name,
                    fd,
                    source: std::io::Error::other("LISTEN_FDS and LISTEN_PID disagree"),
                })
            }
            Err(source) => return Err(ActivationError::NotTcp { name, fd, source }),
        };
        let sock = socket2::SockRef::from(&listener);
        if !sock.is_listener().unwrap_or(false) {
            return Err(ActivationError::NotListening { name, fd });
        }
        listener
            .set_nonblocking(true)
            .map_err(|source| ActivationError::NotTcp {
                name: name.clone(),
                fd,
                source,
            })?;
        if sockets.insert(name.clone(), listener).is_some() {
            return Err(ActivationError::Duplicate(name));
        }
    }
    Ok(Inherited { sockets })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_that_matches_no_listener_is_refused_naming_the_known_ones() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut inherited = Inherited::default();
        inherited.sockets.insert("public".to_string(), l);
        let known = vec!["public".to_string(), "admin".to_string()];
        assert!(inherited.check_names(&known).is_ok());
        let e = inherited
            .check_names(&["other".to_string()])
            .expect_err("unknown");
        assert!(
            matches!(&e, ActivationError::UnknownName { name, .. } if name == "public"),
            "{e:?}"
        );
        assert!(e.to_string().contains("(other)"), "{e}");
        assert!(inherited.take("public").is_some());
        assert!(inherited.take("public").is_none());
    }
}
