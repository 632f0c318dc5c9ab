//! Places among the uploads (and the results being sent), shared fairly.
//!
//! A place is held while bytes of a video cross the connection. The places bound the uploads
//! in progress; the disk they may take is checked apart, against the file system's free
//! space ([`check_disk`]). No one holder may take more than its share: one address holds at most a quarter of
//! the places, and so does one named client (a token's holder), so that a few stalled
//! uploads from one peer never keep the others waiting. A holder over its share waits while
//! others go ahead; everyone waits, in turn, when all places are held. An upload too slow to
//! deserve its place is cut by the session (see `session::MIN_UPLOAD_RATE`), freeing it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::protocol::job::JobId;

/// Who holds a place: an address and, where tokens are required, a client's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Holder {
    Address(IpAddr),
    Client(String),
}

/// The places of one server.
pub struct Places {
    total: usize,
    share: usize,
    state: Mutex<State>,
    freed: Notify,
}

#[derive(Default)]
struct State {
    used: usize,
    held: HashMap<Holder, usize>,
}

/// A place held; dropping it frees it.
pub struct Place {
    places: Arc<Places>,
    holders: Vec<Holder>,
}

impl Places {
    /// `total` places, at most a quarter of them (at least one) for any one holder.
    pub fn new(total: usize) -> Arc<Places> {
        Arc::new(Places { total, share: total.div_ceil(4).max(1), state: Mutex::default(), freed: Notify::new() })
    }

    /// The places one holder may hold at once.
    #[cfg(test)]
    pub fn share(&self) -> usize {
        self.share
    }

    /// Waits for a place for a connection from `address` (`None`: the Unix socket) of the
    /// client `client` (`None`: no tokens, so no name tells clients apart).
    pub async fn take(self: &Arc<Self>, address: Option<IpAddr>, client: Option<&str>) -> Place {
        let holders: Vec<Holder> = address
            .map(|a| Holder::Address(crate::net::gate::canonical(a)))
            .into_iter()
            .chain(client.map(|c| Holder::Client(c.to_string())))
            .collect();
        loop {
            // Registered before the check, so that a place freed in between is not missed.
            let freed = self.freed.notified();
            if let Some(place) = self.try_take(&holders) {
                return place;
            }
            freed.await;
        }
    }

    fn try_take(self: &Arc<Self>, holders: &[Holder]) -> Option<Place> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.used >= self.total || holders.iter().any(|h| state.held.get(h).copied().unwrap_or(0) >= self.share) {
            return None;
        }
        state.used += 1;
        for h in holders {
            *state.held.entry(h.clone()).or_insert(0) += 1;
        }
        Some(Place { places: self.clone(), holders: holders.to_vec() })
    }

    /// Places held now.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).used
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut state = self.places.state.lock().unwrap_or_else(|p| p.into_inner());
        state.used -= 1;
        for h in &self.holders {
            if let Some(n) = state.held.get_mut(h) {
                *n -= 1;
                if *n == 0 {
                    state.held.remove(h);
                }
            }
        }
        drop(state);
        // Every waiter looks again: the one that may go is not always the first in line.
        self.places.freed.notify_waiters();
    }
}

/// The jobs whose upload a connection is receiving now: one connection per upload, so that a
/// resume never writes beside the connection it replaces.
#[derive(Default)]
pub struct UnderWay(Arc<Mutex<std::collections::HashSet<JobId>>>);

/// A job's upload claimed by one connection; dropping it lets the next one claim it.
pub struct Claim {
    set: Arc<Mutex<std::collections::HashSet<JobId>>>,
    job: JobId,
}

impl UnderWay {
    /// Claims `job`'s upload, unless a connection holds it.
    pub fn claim(&self, job: &JobId) -> Option<Claim> {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(job.clone()).then(|| Claim { set: self.0.clone(), job: job.clone() })
    }

    /// Whether a connection is receiving `job`'s upload.
    pub fn holds(&self, job: &JobId) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).contains(job)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.job);
    }
}

/// Checks that an upload of `bytes` fits on `dir`'s file system now. Nothing is set aside: an
/// announced size that is never sent must not keep others out. No margin either: a fixed one
/// would refuse every upload on a small disk, and a job that then runs out of room fails with
/// its segments kept, to be resumed.
pub fn check_disk(dir: &std::path::Path, bytes: u64) -> Result<(), String> {
    let room = free_bytes(dir).map_err(|e| format!("cannot read the free space of the server's disk: {e}"))?;
    if bytes > room {
        return Err(format!(
            "the server's disk has room for {} MB now; this upload is {} MB: try again later",
            room >> 20,
            bytes.div_ceil(1 << 20)
        ));
    }
    Ok(())
}

/// Bytes an unprivileged writer may still use in `dir`'s file system.
fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: statvfs writes into the zeroed struct passed by reference; the path is a valid
    // NUL-terminated string that outlives the call.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_bavail * stat.f_frsize)
}

/// Who a connection is to the upload places: its address and, where tokens tell clients
/// apart, its client.
pub struct Seat {
    /// The peer's address (none on the Unix socket).
    pub address: Option<IpAddr>,
    /// The client's name, where tokens tell clients apart.
    pub client: Option<String>,
}

impl Seat {
    /// Waits for a place among `places` within this seat's share.
    pub async fn place(&self, places: &Arc<Places>) -> Place {
        places.take(self.address, self.client.as_deref()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    async fn taken_soon(places: &Arc<Places>, address: Option<IpAddr>, client: Option<&str>) -> Option<Place> {
        tokio::time::timeout(Duration::from_millis(50), places.take(address, client)).await.ok()
    }

    #[tokio::test]
    async fn one_address_takes_at_most_its_share_and_others_go_ahead() {
        let places = Places::new(8);
        let mut held = Vec::new();
        for _ in 0..places.share() {
            held.push(taken_soon(&places, ip("10.0.0.1"), None).await.expect("within its share"));
        }
        assert!(taken_soon(&places, ip("10.0.0.1"), None).await.is_none(), "over its share, it waits");
        assert!(taken_soon(&places, ip("10.0.0.2"), None).await.is_some(), "another address goes ahead");
        // Its waiter gets the place its own upload frees.
        let waiter = tokio::spawn({
            let places = places.clone();
            async move { places.take(ip("10.0.0.1"), None).await }
        });
        tokio::task::yield_now().await;
        held.pop();
        let place = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").unwrap();
        drop((place, held));
        assert_eq!(places.used(), 0);
    }

    #[tokio::test]
    async fn a_named_client_takes_at_most_its_share_from_any_address() {
        let places = Places::new(4);
        let _first = taken_soon(&places, ip("10.0.0.1"), Some("alice")).await.unwrap();
        assert!(taken_soon(&places, ip("10.0.0.2"), Some("alice")).await.is_none());
        assert!(taken_soon(&places, ip("10.0.0.2"), Some("bob")).await.is_some());
    }

    #[test]
    fn an_upload_must_fit_on_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(check_disk(dir.path(), free / 2).is_ok());
        let err = check_disk(dir.path(), free + (1 << 30)).unwrap_err();
        assert!(err.contains("try again later"), "{err}");
    }

    #[tokio::test]
    async fn all_places_held_means_everyone_waits() {
        let places = Places::new(4);
        let held: Vec<Place> = held_by_distinct_addresses(&places, 4).await;
        assert!(taken_soon(&places, ip("10.9.9.9"), None).await.is_none());
        drop(held);
        assert!(taken_soon(&places, ip("10.9.9.9"), None).await.is_some());
    }

    async fn held_by_distinct_addresses(places: &Arc<Places>, n: usize) -> Vec<Place> {
        let mut held = Vec::new();
        for i in 0..n {
            held.push(places.take(ip(&format!("10.0.1.{i}")), None).await);
        }
        held
    }
}
