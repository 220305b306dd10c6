//! The open connections of one server, so that a flood of them cannot
//! starve the others: a budget of connections open at once and a cap per
//! client address.
//!
//! **Who is shed to make room.** When a new connection takes the count past
//! the budget (or `accept` fails for want of descriptors), one connection
//! that is doing nothing for anyone is closed, in this order:
//!
//! 1. the oldest connection that has not sent a whole request head yet
//!    (silent or trickling: what a connection flood is made of; a real
//!    client sends its request as soon as it has connected, so the oldest
//!    is the least likely to ever send one);
//! 2. failing that, the keep-alive connection idle the longest between two
//!    requests: a flood can also send one request per connection and then
//!    hold it open, and closing an idle keep-alive connection costs its
//!    client one new connection (HTTP/1.1 lets the server close it at any
//!    moment between requests).
//!
//! Never a connection with a request in flight, nor a keep-alive one
//! partway through sending its next request, and never the connection just
//! accepted (it has had no chance to send its request yet: shedding it
//! would refuse every newcomer, the probe included, whenever all the others
//! have sent one). If every other connection is busy, the new one is closed
//! instead (`full`): the budget is what keeps descriptors for the database.
//!
//! **Per client.** A client address (an IPv6 one by its /64, what one host
//! usually holds) may hold `max_connections_per_client` connections; one
//! more is closed at once (`per_client`).
//!
//! Every shed connection is counted in
//! `smartmart_http_connections_shed_total{reason}`, and logged at warn at
//! most every [`REPORT_EVERY`] (the counts since the last line).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio::time::Instant;

use super::activity::{Activity, Sheddable};
use crate::metrics::ReasonLabels;

/// Warn lines about shed connections: at most one per this period.
pub(super) const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Why a connection was closed to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ShedReason {
    /// It had not sent a whole request head yet.
    NoRequest,
    /// An idle keep-alive connection.
    Idle,
    /// Its client address held the most connections allowed already.
    PerClient,
    /// The budget was full of connections with requests in flight: the new one.
    Full,
}

impl ShedReason {
    const ALL: [ShedReason; 4] = [ShedReason::NoRequest, ShedReason::Idle, ShedReason::PerClient, ShedReason::Full];

    fn label(self) -> &'static str {
        match self {
            ShedReason::NoRequest => "no_request",
            ShedReason::Idle => "idle",
            ShedReason::PerClient => "per_client",
            ShedReason::Full => "full",
        }
    }
}

/// One open connection.
struct Entry {
    client: IpAddr,
    activity: Arc<Activity>,
    /// Chosen to be shed, not closed yet: no longer counted against the budget.
    shed: bool,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    /// Every open connection by id; ids grow with the accepts.
    open: BTreeMap<u64, Entry>,
    /// Ids of connections not yet seen to have sent a whole request head,
    /// oldest first. Pruned lazily: a proven one leaves when it is looked at.
    unproven: BTreeSet<u64>,
    /// Open connections per client address.
    per_client: HashMap<IpAddr, usize>,
    /// Open connections chosen to be shed.
    shedding: usize,
}

impl Registry {
    /// Connections counted against the budget: the open ones not being shed.
    fn live(&self) -> usize {
        self.open.len() - self.shedding
    }

    /// Sheds one connection other than `spare`, as the module comment orders them.
    fn shed_one(&mut self, spare: Option<u64>) -> Option<ShedReason> {
        let found = self.shed_oldest_without_request(spare).map(|id| (id, ShedReason::NoRequest));
        let (id, reason) = found.or_else(|| self.shed_longest_idle(spare).map(|id| (id, ShedReason::Idle)))?;
        if let Some(entry) = self.open.get_mut(&id) {
            entry.shed = true;
            self.shedding += 1;
        }
        Some(reason)
    }

    /// Sheds the oldest connection that has not sent a whole request head, if any.
    fn shed_oldest_without_request(&mut self, spare: Option<u64>) -> Option<u64> {
        let spared = spare.filter(|id| self.unproven.remove(id));
        let mut found = None;
        while let Some(id) = self.unproven.pop_first() {
            let Some(entry) = self.open.get(&id) else { continue };
            // Fails only for one that has sent a request head by now: it leaves the set for good.
            if entry.activity.shed(Sheddable::NoRequestYet) {
                found = Some(id);
                break;
            }
        }
        self.unproven.extend(spared);
        found
    }

    /// Sheds the keep-alive connection idle the longest, if any. A scan of
    /// every connection: only reached when none is without a request yet,
    /// under pressure; the common path (a flood of silent connections) never does.
    fn shed_longest_idle(&self, spare: Option<u64>) -> Option<u64> {
        let mut idle: Vec<(Instant, u64)> = self
            .open
            .iter()
            .filter(|(id, entry)| Some(**id) != spare && !entry.shed)
            .filter_map(|(id, entry)| entry.activity.idle_until().map(|until| (until, *id)))
            .collect();
        idle.sort_unstable();
        idle.into_iter().map(|(_, id)| id).find(|id| self.open[id].activity.shed(Sheddable::Idle))
    }
}

/// The connections of one server and their limits.
pub(super) struct Connections {
    registry: Mutex<Registry>,
    /// Most connections open at once (not counting those being shed).
    budget: usize,
    /// Most connections one client address may hold; 0: no cap.
    per_client: usize,
    /// Notified whenever a connection has closed (its descriptor released).
    closed: Notify,
    report: ShedReport,
}

/// What [`Connections::admit`] decided about a new connection.
pub(super) enum Admission {
    /// Serve it; dropping the registration marks it closed.
    Admitted(Registration),
    /// Close it at once.
    Refused,
}

impl Connections {
    pub(super) fn new(budget: usize, per_client: usize, shed_total: Family<ReasonLabels, Counter>) -> Connections {
        Connections {
            registry: Mutex::default(),
            budget,
            per_client,
            closed: Notify::new(),
            report: ShedReport::new(shed_total),
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection just accepted from `peer`, or refuses it (over
    /// the per-client cap, or the budget full of busy connections); sheds
    /// another one when it takes the count past the budget.
    pub(super) fn admit(self: &Arc<Self>, peer: IpAddr, activity: Arc<Activity>) -> Admission {
        let client = client_of(peer);
        let mut registry = self.registry();
        let held = registry.per_client.get(&client).copied().unwrap_or(0);
        if self.per_client > 0 && held >= self.per_client {
            drop(registry);
            self.report.shed(ShedReason::PerClient);
            return Admission::Refused;
        }
        let id = registry.next_id;
        registry.next_id += 1;
        registry.open.insert(id, Entry { client, activity, shed: false });
        registry.unproven.insert(id);
        *registry.per_client.entry(client).or_default() += 1;
        let mut shed = Vec::new();
        let mut refused = false;
        while registry.live() > self.budget {
            match registry.shed_one(Some(id)) {
                Some(reason) => shed.push(reason),
                None => {
                    refused = true;
                    break;
                }
            }
        }
        drop(registry);
        let registration = Registration { id, connections: self.clone() };
        for reason in shed {
            self.report.shed(reason);
        }
        if refused {
            drop(registration);
            self.report.shed(ShedReason::Full);
            return Admission::Refused;
        }
        Admission::Admitted(registration)
    }

    /// After `accept` failed for want of descriptors: sheds one connection.
    /// Returns a future that resolves when some connection has closed (the
    /// descriptor is free again), or `None` if none could be shed.
    pub(super) fn make_room(&self) -> Option<Pin<Box<Notified<'_>>>> {
        let mut closed = Box::pin(self.closed.notified());
        // Registered before the shed, so its close is not missed.
        closed.as_mut().enable();
        let reason = self.registry().shed_one(None)?;
        self.report.shed(reason);
        Some(closed)
    }

    /// An `accept` failed for want of descriptors (counted into the next warn line).
    pub(super) fn out_of_descriptors(&self, error: &std::io::Error) {
        self.report.out_of_descriptors(error);
    }

    fn close(&self, id: u64) {
        let mut registry = self.registry();
        if let Some(entry) = registry.open.remove(&id) {
            registry.unproven.remove(&id);
            if entry.shed {
                registry.shedding -= 1;
            }
            if let Some(held) = registry.per_client.get_mut(&entry.client) {
                *held -= 1;
                if *held == 0 {
                    registry.per_client.remove(&entry.client);
                }
            }
        }
        drop(registry);
        self.closed.notify_waiters();
    }
}

/// An open connection's place in [`Connections`]; dropped once its socket is closed.
pub(super) struct Registration {
    id: u64,
    connections: Arc<Connections>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.connections.close(self.id);
    }
}

/// The address a per-client cap counts by: an IPv4 address (an IPv4-mapped
/// IPv6 one as IPv4), an IPv6 address by its /64.
fn client_of(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// The shed counter and its rate-limited warn line.
struct ShedReport {
    shed_total: Family<ReasonLabels, Counter>,
    pending: Mutex<PendingReport>,
}

#[derive(Default)]
struct PendingReport {
    /// Shed connections since the last line, by [`ShedReason::ALL`] index.
    shed: [u64; 4],
    accept_failures: u64,
    last_error: Option<String>,
    /// No line before this.
    quiet_until: Option<Instant>,
}

impl ShedReport {
    fn new(shed_total: Family<ReasonLabels, Counter>) -> ShedReport {
        ShedReport { shed_total, pending: Mutex::default() }
    }

    fn shed(&self, reason: ShedReason) {
        self.shed_total.get_or_create(&ReasonLabels { reason: reason.label().to_string() }).inc();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = ShedReason::ALL.iter().position(|r| *r == reason) {
            pending.shed[i] += 1;
        }
        Self::maybe_warn(&mut pending);
    }

    fn out_of_descriptors(&self, error: &std::io::Error) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.accept_failures += 1;
        pending.last_error = Some(error.to_string());
        Self::maybe_warn(&mut pending);
    }

    /// One line with the counts since the last one, unless one was written
    /// within [`REPORT_EVERY`]: the first shed of a burst is seen at once,
    /// the rest of it in the next line.
    fn maybe_warn(pending: &mut PendingReport) {
        let now = Instant::now();
        if pending.quiet_until.is_some_and(|until| now < until) {
            return;
        }
        let [no_request, idle, per_client, full] = pending.shed;
        tracing::warn!(
            no_request,
            idle,
            per_client,
            full,
            accept_failures = pending.accept_failures,
            accept_error = pending.last_error.as_deref().unwrap_or(""),
            "closed connections to keep room for others (connection budget, per-client cap or out of descriptors); \
             counts since the last such line"
        );
        *pending = PendingReport { quiet_until: Some(now + REPORT_EVERY), ..PendingReport::default() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_counted_by_ipv4_address_and_ipv6_slash_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")), ip("2001:db8:1:2::"));
        assert_eq!(client_of(ip("2001:db8:1:2::1")), client_of(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(client_of(ip("2001:db8:1:2::1")), client_of(ip("2001:db8:1:3::1")));
    }
}
