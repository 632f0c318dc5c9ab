//! Who gets a connection, and how fast a wrong token may be retried.
//!
//! Connections go through a [`Gate`]: one address holds at most [`MAX_PER_ADDRESS`]
//! connections; connections that have not yet shown a good token are *pending*, at most
//! [`PENDING_PER_ADDRESS`] per address and [`MAX_PENDING`] in all, and a newcomer past either
//! bound closes the oldest pending connection of the address holding the most, so idle or
//! slow peers never lock a client out. An address that presented a wrong token waits longer
//! for each answer ([`Throttle`]). A connection past the per-address cap is told so in one
//! error frame and closed at once, without a task of its own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::net::gate::{Gate, Limits, Pass, Refused, canonical};

/// Connections between accept and a good token, server-wide. Each costs a descriptor and a
/// small task for up to the 10 s handshake timeout, unless a newer one evicts it first.
pub const MAX_PENDING: usize = 512;
/// Pending connections of one address: past it, its oldest is closed.
pub const PENDING_PER_ADDRESS: usize = 16;
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

/// The shared bookkeeping.
pub struct Admission {
    gate: Arc<Gate>,
    throttle: Mutex<Throttle>,
}

/// What an admitted connection holds: its place at the gate.
pub type Ticket = Pass;

impl Default for Admission {
    fn default() -> Self {
        Admission::new(Limits {
            pending: MAX_PENDING,
            pending_per_address: PENDING_PER_ADDRESS,
            per_address: MAX_PER_ADDRESS,
        })
    }
}

impl Admission {
    /// Bookkeeping with these limits.
    pub fn new(limits: Limits) -> Self {
        Admission { gate: Gate::new(limits), throttle: Mutex::new(Throttle::default()) }
    }

    /// Admits a connection from `ip` (`None`: the Unix socket, which only the pending cap
    /// applies to), or says why not.
    pub fn admit(&self, ip: Option<IpAddr>) -> Result<Ticket, Refused> {
        self.gate.admit(ip)
    }

    /// How long to wait before answering a wrong token from `ip`, counting this failure.
    pub fn failed_token(&self, ip: Option<IpAddr>) -> Duration {
        let Some(ip) = ip.map(canonical) else { return Duration::ZERO };
        self.throttle.lock().unwrap_or_else(|p| p.into_inner()).fail(ip, Instant::now())
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
