//! Who gets a connection: bounds per address, and room for the newcomer at the expense of the
//! oldest connection that has not yet proven itself.
//!
//! A connection is *pending* from accept until it proves itself: a good hello on the job
//! protocol, a whole request on HTTP. Pending connections cost a descriptor and a task and
//! give nothing back, so anyone can open many. A fixed cap that refuses the newest is a door
//! any peer can hold shut, so the gate does what nginx, HAProxy and RabbitMQ do: it bounds
//! each address, and when the pending set is full it closes the oldest pending connection of
//! the address that holds the most, never refusing the newcomer. A legitimate client finishes
//! its handshake in milliseconds; an idle flood only ever evicts itself.
//!
//! - one address holds at most `per_address` connections in any state (the newest past it is
//!   refused at once);
//! - one address holds at most `pending_per_address` pending connections (past it, its own
//!   oldest pending one is closed);
//! - all addresses together hold at most `pending` pending connections (past it, the oldest
//!   pending connection of the address holding the most is closed).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Pending connections, all addresses together.
    pub pending: usize,
    /// Pending connections of one address.
    pub pending_per_address: usize,
    /// Connections of one address in any state.
    pub per_address: usize,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The address holds its share of connections already.
    TooManyFromAddress(usize),
}

impl Refused {
    /// What the peer is told.
    pub fn message(self) -> String {
        match self {
            Refused::TooManyFromAddress(most) => {
                format!("too many connections from your address (at most {most}); try again later")
            }
        }
    }
}

/// The bookkeeping of one listener; shared by every connection it admitted.
pub struct Gate {
    limits: Limits,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The next connection's number: numbers grow with age, so the smallest is the oldest.
    next: u64,
    /// Pending connections by number: their address and how to close them.
    pending: BTreeMap<u64, (Option<IpAddr>, CancellationToken)>,
    /// Per address: pending connections, and connections in any state.
    addresses: HashMap<IpAddr, Counts>,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    pending: usize,
    open: usize,
}

/// An admitted connection's place. While pending, [`Pass::evicted`] fires when the gate
/// needs its room; [`Pass::proven`] takes it out of reach. Dropping it gives the place back.
pub struct Pass {
    gate: Arc<Gate>,
    id: u64,
    address: Option<IpAddr>,
    evict: CancellationToken,
}

impl Gate {
    /// A gate with `limits`.
    pub fn new(limits: Limits) -> Arc<Gate> {
        Arc::new(Gate { limits, state: Mutex::default() })
    }

    /// Admits a connection from `ip` (`None`: a Unix socket, which only the pending cap
    /// applies to), closing older pending connections to make room; or says why not.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Pass, Refused> {
        let ip = ip.map(canonical);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ip) = ip {
            let counts = state.addresses.get(&ip).copied().unwrap_or_default();
            if counts.open >= self.limits.per_address && counts.pending == 0 {
                return Err(Refused::TooManyFromAddress(self.limits.per_address));
            }
            // At its share already: its own oldest pending connection makes room.
            if counts.open >= self.limits.per_address || counts.pending >= self.limits.pending_per_address {
                state.evict_oldest_of(Some(ip));
            }
        }
        if state.pending.len() >= self.limits.pending {
            let heaviest = state.addresses.iter().filter(|(_, c)| c.pending > 0).max_by_key(|(_, c)| c.pending);
            let heaviest = heaviest.map(|(ip, _)| *ip);
            // Unix-socket connections (no address) are evicted only when no address holds any.
            state.evict_oldest_of(heaviest);
        }
        let id = state.next;
        state.next += 1;
        let evict = CancellationToken::new();
        state.pending.insert(id, (ip, evict.clone()));
        if let Some(ip) = ip {
            let counts = state.addresses.entry(ip).or_default();
            counts.pending += 1;
            counts.open += 1;
        }
        Ok(Pass { gate: self.clone(), id, address: ip, evict })
    }

    /// Connections pending now (for tests and metrics).
    pub fn pending(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).pending.len()
    }
}

impl State {
    /// Closes the oldest pending connection of `ip` (`None`: of any address or none).
    fn evict_oldest_of(&mut self, ip: Option<IpAddr>) {
        let oldest = self.pending.iter().find(|(_, (at, _))| ip.is_none() || *at == ip).map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.unpend(id);
        }
    }

    /// Takes `id` out of the pending set, firing its eviction.
    fn unpend(&mut self, id: u64) {
        if let Some((ip, evict)) = self.pending.remove(&id) {
            evict.cancel();
            if let Some(counts) = ip.and_then(|ip| self.addresses.get_mut(&ip)) {
                counts.pending -= 1;
            }
        }
    }
}

impl Pass {
    /// The connection proved itself: it is no longer pending, and no newcomer can evict it.
    pub fn proven(&mut self) {
        let mut state = self.gate.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((ip, _)) = state.pending.remove(&self.id)
            && let Some(counts) = ip.and_then(|ip| state.addresses.get_mut(&ip))
        {
            counts.pending -= 1;
        }
    }

    /// Fires when the gate closed this pending connection to make room for a newer one.
    pub fn evicted(&self) -> WaitForCancellationFutureOwned {
        self.evict.clone().cancelled_owned()
    }

    /// Whether the gate closed this connection.
    pub fn is_evicted(&self) -> bool {
        self.evict.is_cancelled()
    }

    /// The peer's address (`None` on a Unix socket).
    pub fn address(&self) -> Option<IpAddr> {
        self.address
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut state = self.gate.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((ip, _)) = state.pending.remove(&self.id)
            && let Some(counts) = ip.and_then(|ip| state.addresses.get_mut(&ip))
        {
            counts.pending -= 1;
        }
        if let Some(ip) = self.address
            && let Some(counts) = state.addresses.get_mut(&ip)
        {
            counts.open -= 1;
            if counts.open == 0 {
                state.addresses.remove(&ip);
            }
        }
    }
}

/// `::ffff:a.b.c.d` is the IPv4 client `a.b.c.d` on a dual-stack socket.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    const LIMITS: Limits = Limits { pending: 8, pending_per_address: 3, per_address: 5 };

    #[test]
    fn an_idle_flood_evicts_only_itself() {
        let gate = Gate::new(LIMITS);
        // Four addresses flood, each over its pending share.
        let flood: Vec<Pass> =
            (0..40).map(|i| gate.admit(ip(&format!("10.0.0.{}", i % 4 + 1))).expect("newcomers are let in")).collect();
        assert!(gate.pending() <= LIMITS.pending);
        let alive = flood.iter().filter(|p| !p.is_evicted()).count();
        assert_eq!(alive, gate.pending(), "every pass still pending is one the gate holds");
        // A newcomer from elsewhere gets in, and more flooding does not evict it.
        let honest = gate.admit(ip("10.9.9.9")).unwrap();
        let more: Vec<Pass> = (0..40).map(|i| gate.admit(ip(&format!("10.0.0.{}", i % 4 + 1))).unwrap()).collect();
        assert!(!honest.is_evicted(), "the address with the fewest pending is never the one evicted");
        drop((flood, more));
        assert_eq!(gate.pending(), 1);
    }

    #[test]
    fn an_address_over_its_pending_share_loses_its_oldest() {
        let gate = Gate::new(LIMITS);
        let passes: Vec<Pass> = (0..4).map(|_| gate.admit(ip("10.0.0.1")).unwrap()).collect();
        assert!(passes[0].is_evicted(), "the oldest made room");
        assert!(passes[1..].iter().all(|p| !p.is_evicted()));
        // The same client over the dual-stack socket is the same address.
        let mapped = gate.admit(ip("::ffff:10.0.0.1")).unwrap();
        assert!(passes[1].is_evicted());
        drop(mapped);
    }

    #[test]
    fn proven_connections_are_never_evicted_and_count_against_their_address() {
        let gate = Gate::new(LIMITS);
        let mut proven = Vec::new();
        for _ in 0..LIMITS.per_address {
            let mut p = gate.admit(ip("10.0.0.1")).unwrap();
            p.proven();
            proven.push(p);
        }
        // A flood from elsewhere does not touch them.
        let flood: Vec<Pass> = (0..40).map(|_| gate.admit(ip("10.0.0.3")).unwrap()).collect();
        assert!(proven.iter().all(|p| !p.is_evicted()));
        assert_eq!(gate.admit(ip("10.0.0.1")).err(), Some(Refused::TooManyFromAddress(LIMITS.per_address)));
        assert!(gate.admit(ip("10.0.0.2")).is_ok(), "another address is not affected");
        drop((proven, flood));
        assert!(gate.admit(ip("10.0.0.1")).is_ok(), "closed connections give their places back");
        assert!(gate.state.lock().unwrap().addresses.is_empty(), "no entry outlives its connections");
    }

    #[test]
    fn the_unix_socket_is_bounded_by_the_pending_cap_alone() {
        let gate = Gate::new(LIMITS);
        let passes: Vec<Pass> = (0..20).map(|_| gate.admit(None).unwrap()).collect();
        assert_eq!(passes.iter().filter(|p| !p.is_evicted()).count(), LIMITS.pending);
    }
}
