//! Who gets a connection, and how fast a wrong token may be retried.
//!
//! Three bounds stand between a network peer and the server's file descriptors and memory:
//! connections that have not finished the handshake share [`MAX_PENDING`] places, server-wide;
//! one address holds at most [`MAX_PER_ADDRESS`] connections in any state; and an address that
//! presented a wrong token waits longer for each answer ([`Throttle`]). A connection past a
//! cap is told so in one error frame and closed at once, without a task of its own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections between accept and a successful hello, server-wide. Each costs a descriptor
/// and a task for up to the 10 s handshake timeout.
pub const MAX_PENDING: usize = 128;
/// Connections open at once from one IP address, whatever their state. A client machine
/// running a batch of jobs needs a handful.
pub const MAX_PER_ADDRESS: usize = 32;
/// The answer to the first wrong token from an address is delayed this long; each further
/// failure doubles it, up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(200);
/// The longest delay.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// An address's failures are forgotten this long after its last one.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Addresses with failures remembered at once; past it, the oldest are forgotten.
const MAX_REMEMBERED: usize = 4096;

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Too many connections are in their handshake.
    Busy,
    /// Too many connections from this address.
    TooManyFromAddress,
}

impl Refused {
    /// What the peer is told.
    pub fn message(self) -> String {
        match self {
            Refused::Busy => "server busy: too many connections are starting; try again".into(),
            Refused::TooManyFromAddress => {
                format!("too many connections from your address (at most {MAX_PER_ADDRESS}); try again later")
            }
        }
    }
}

/// Open connections per address.
type Counts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// The shared bookkeeping.
pub struct Admission {
    pending: Arc<Semaphore>,
    per_address: Counts,
    throttle: Mutex<Throttle>,
}

/// What an admitted connection holds: its place among the pending (given back after the
/// handshake) and its address's count (given back when the connection ends).
pub struct Ticket {
    pending: Option<OwnedSemaphorePermit>,
    address: Option<(IpAddr, Counts)>,
}

impl Ticket {
    /// The handshake is over: the place among the pending goes to the next connection.
    pub fn handshake_done(&mut self) {
        self.pending = None;
    }

    /// The peer's address, for the throttle (`None` on the Unix socket).
    pub fn address(&self) -> Option<IpAddr> {
        self.address.as_ref().map(|(ip, _)| *ip)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some((ip, counts)) = self.address.take() {
            let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = counts.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&ip);
                }
            }
        }
    }
}

impl Default for Admission {
    fn default() -> Self {
        Admission::new(MAX_PENDING)
    }
}

impl Admission {
    /// Bookkeeping with `pending` places for handshakes.
    pub fn new(pending: usize) -> Self {
        Admission {
            pending: Arc::new(Semaphore::new(pending)),
            per_address: Arc::default(),
            throttle: Mutex::new(Throttle::default()),
        }
    }

    /// Admits a connection from `ip` (`None`: the Unix socket, which only the per-server cap
    /// applies to), or says why not.
    pub fn admit(&self, ip: Option<IpAddr>) -> Result<Ticket, Refused> {
        let mut ticket = Ticket { pending: None, address: None };
        if let Some(ip) = ip.map(canonical) {
            let mut counts = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
            let n = counts.entry(ip).or_insert(0);
            if *n >= MAX_PER_ADDRESS {
                return Err(Refused::TooManyFromAddress);
            }
            *n += 1;
            ticket.address = Some((ip, self.per_address.clone()));
        }
        // On failure the ticket drops here, giving the address's count back.
        ticket.pending = Some(self.pending.clone().try_acquire_owned().map_err(|_| Refused::Busy)?);
        Ok(ticket)
    }

    /// How long to wait before answering a wrong token from `ip`, counting this failure.
    pub fn failed_token(&self, ip: Option<IpAddr>) -> Duration {
        let Some(ip) = ip.map(canonical) else { return Duration::ZERO };
        self.throttle.lock().unwrap_or_else(|p| p.into_inner()).fail(ip, Instant::now())
    }
}

/// `::ffff:a.b.c.d` is the IPv4 client `a.b.c.d` on a dual-stack socket.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Failed handshakes per address, with the delay each next answer gets.
#[derive(Default)]
struct Throttle {
    failures: HashMap<IpAddr, (u32, Instant)>,
}

impl Throttle {
    fn fail(&mut self, ip: IpAddr, now: Instant) -> Duration {
        if self.failures.len() >= MAX_REMEMBERED {
            self.failures.retain(|_, (_, last)| now.duration_since(*last) < FORGET_AFTER);
            if self.failures.len() >= MAX_REMEMBERED
                && let Some(oldest) = self.failures.iter().min_by_key(|(_, (_, last))| *last).map(|(ip, _)| *ip)
            {
                self.failures.remove(&oldest);
            }
        }
        let entry = self.failures.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= FORGET_AFTER {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        delay(entry.0)
    }
}

/// The delay after the `n`th recent failure: 0.2 s, 0.4 s, 0.8 s, … up to [`MAX_DELAY`].
fn delay(n: u32) -> Duration {
    FIRST_DELAY.saturating_mul(1u32 << n.saturating_sub(1).min(16)).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn one_address_gets_at_most_its_share() {
        let a = Admission::new(1000);
        let tickets: Vec<_> = (0..MAX_PER_ADDRESS).map(|_| a.admit(ip("10.0.0.1")).unwrap()).collect();
        assert_eq!(a.admit(ip("10.0.0.1")).err(), Some(Refused::TooManyFromAddress));
        // The same client over the dual-stack socket is the same address.
        assert_eq!(a.admit(ip("::ffff:10.0.0.1")).err(), Some(Refused::TooManyFromAddress));
        assert!(a.admit(ip("10.0.0.2")).is_ok(), "another address is not affected");
        drop(tickets);
        assert!(a.admit(ip("10.0.0.1")).is_ok(), "closed connections give their places back");
        assert!(a.per_address.lock().unwrap().is_empty(), "no entry outlives its connections");
    }

    #[test]
    fn handshakes_share_the_pending_places() {
        let a = Admission::new(2);
        let mut first = a.admit(ip("10.0.0.1")).unwrap();
        let _second = a.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.3")).err(), Some(Refused::Busy));
        assert!(a.per_address.lock().unwrap().get(&"10.0.0.3".parse().unwrap()).is_none());
        first.handshake_done();
        let _third = a.admit(None).expect("a finished handshake frees its place");
    }

    #[test]
    fn wrong_tokens_wait_longer_each_time_per_address() {
        let mut t = Throttle::default();
        let now = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let delays: Vec<_> = (0..8).map(|_| t.fail(a, now).as_millis()).collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(t.fail("10.0.0.2".parse().unwrap(), now), FIRST_DELAY, "per address");
        assert_eq!(t.fail(a, now + FORGET_AFTER), FIRST_DELAY, "forgotten after a quiet while");
    }

    #[test]
    fn the_throttle_forgets_rather_than_grows() {
        let mut t = Throttle::default();
        let now = Instant::now();
        for i in 0..(MAX_REMEMBERED as u32 + 100) {
            t.fail(IpAddr::V4(i.into()), now);
        }
        assert!(t.failures.len() <= MAX_REMEMBERED);
    }
}
