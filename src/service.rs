//! The service manager's side of a role (systemd's `sd_notify` protocol): readiness once the
//! role listens and its broker link is up, a watchdog fed while its runtime runs, and its
//! stopping. Outside systemd (no `$NOTIFY_SOCKET`) every call does nothing.
//!
//! The watchdog is fed by a task on the role's own runtime, at half `WatchdogSec`: a runtime
//! whose threads are all stuck (a deadlock, a blocking call where none belongs) stops feeding
//! it, and systemd restarts the role. A lost broker does not starve it: the roles reconnect by
//! themselves, and killing them meanwhile would only lose their reconnection backoff.

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Tells the service manager the role is ready, with a one-line status.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager the role is stopping.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Feeds the watchdog until `shutdown`, when the service manager asked for one.
pub async fn watchdog(shutdown: CancellationToken) {
    let Some(period) = sd_notify::watchdog_enabled() else { return };
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => notify(&[NotifyState::Watchdog]),
        }
    }
}

fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        debug!(error = %e, "cannot notify the service manager");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    /// The datagrams a role sends, as systemd receives them on $NOTIFY_SOCKET.
    #[test]
    fn readiness_watchdog_and_stopping_reach_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        // SAFETY: this test's process-wide environment; no other test reads these variables.
        unsafe {
            std::env::set_var("NOTIFY_SOCKET", &path);
            std::env::set_var("WATCHDOG_USEC", "20000");
            std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
        }
        let recv = || {
            let mut buf = [0u8; 256];
            let n = socket.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        ready("serving");
        assert_eq!(recv(), "READY=1\nSTATUS=serving\n");
        // The watchdog on its own runtime thread: two pings, 10 ms apart (half of WatchdogSec),
        // each awaited as it arrives (the socket's timeout is the deadline).
        let shutdown = CancellationToken::new();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let fed = runtime.spawn(watchdog(shutdown.clone()));
        assert_eq!((recv(), recv()), ("WATCHDOG=1\n".to_string(), "WATCHDOG=1\n".to_string()));
        shutdown.cancel();
        runtime.block_on(fed).unwrap();
        stopping();
        assert_eq!(recv(), "STOPPING=1\nSTATUS=stopping\n");
    }
}
