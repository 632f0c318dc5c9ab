//! [`Stop`]: a cancellation signal that blocking threads can wait on in `select!`.

use crossbeam_channel::{Receiver, Sender, TryRecvError, bounded};
use tokio_util::sync::CancellationToken;

/// Closed when a job must stop; every pipeline stage and worker thread can select on it.
#[derive(Debug, Clone)]
pub struct Stop(Receiver<()>);

/// Fires its [`Stop`] when dropped (or by [`StopHandle::fire`]).
#[derive(Debug)]
pub struct StopHandle(Option<Sender<()>>);

impl StopHandle {
    /// Fires the stop now.
    pub fn fire(&mut self) {
        self.0.take();
    }
}

impl Stop {
    /// A stop that never fires.
    pub fn never() -> Self {
        Stop(crossbeam_channel::never())
    }

    /// A stop and the handle that fires it.
    pub fn new() -> (StopHandle, Stop) {
        let (tx, rx) = bounded(0);
        (StopHandle(Some(tx)), Stop(rx))
    }

    /// A stop that fires when `token` is cancelled. Needs a tokio runtime to wait on the token;
    /// cancel `token` (or a parent) when the job ends so the waiting task ends too.
    pub fn on_cancel(token: CancellationToken, runtime: &tokio::runtime::Handle) -> Self {
        let (mut handle, stop) = Stop::new();
        runtime.spawn(async move {
            token.cancelled().await;
            handle.fire();
        });
        stop
    }

    /// Whether the stop has fired.
    pub fn is_stopped(&self) -> bool {
        matches!(self.0.try_recv(), Err(TryRecvError::Disconnected))
    }

    /// The channel to `select!` on: it becomes ready (disconnected) when the stop fires.
    pub fn receiver(&self) -> &Receiver<()> {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_on_demand_or_on_drop() {
        let (mut h, s) = Stop::new();
        assert!(!s.is_stopped());
        h.fire();
        assert!(s.is_stopped());
        let (h, s) = Stop::new();
        drop(h);
        assert!(s.is_stopped());
        assert!(!Stop::never().is_stopped());
    }

    #[tokio::test]
    async fn follows_a_cancellation_token() {
        let token = CancellationToken::new();
        let s = Stop::on_cancel(token.clone(), &tokio::runtime::Handle::current());
        assert!(!s.is_stopped());
        token.cancel();
        // The waiting task fires it; wait for that event, with a deadline.
        let r = s.receiver().clone();
        let waited =
            tokio::task::spawn_blocking(move || r.recv_timeout(std::time::Duration::from_secs(5))).await.unwrap();
        assert_eq!(waited, Err(crossbeam_channel::RecvTimeoutError::Disconnected));
        assert!(s.is_stopped());
    }
}
