//! Where and when a rule serves: the sales channels of its manifest entry
//! and its activation window. An order asks once, at its start, with its
//! channel and the instant it started ([`OrderScope`]); each rule of the set
//! answers with a bit test and two comparisons. Nothing is rebuilt per
//! channel or at a window's boundary: the set holds every entry, each with
//! its [`Scope`], and an order started before a boundary keeps the instant
//! (and the set) it started with.

use std::fmt;

use crate::domain::status::Channel;

/// A set of sales channels, a bit per channel.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channels(u8);

impl Channels {
    /// Every channel: what an entry without `channels` serves.
    pub const ALL: Channels = Channels((1 << Channel::ALL.len()) - 1);

    fn bit(channel: Channel) -> u8 {
        1 << Channel::ALL.iter().position(|c| *c == channel).expect("a channel is in Channel::ALL")
    }

    /// The channels of `list` (none for an empty list).
    pub fn of(list: &[Channel]) -> Channels {
        Channels(list.iter().fold(0, |bits, c| bits | Self::bit(*c)))
    }

    pub fn contains(self, channel: Channel) -> bool {
        self.0 & Self::bit(channel) != 0
    }

    pub fn is_all(self) -> bool {
        self == Channels::ALL
    }

    /// The channels in both.
    pub fn intersection(self, other: Channels) -> Channels {
        Channels(self.0 & other.0)
    }

    /// Whether an order of some channel is in both.
    pub fn intersects(self, other: Channels) -> bool {
        self.0 & other.0 != 0
    }

    /// The channels of the set, in `Channel::ALL` order.
    pub fn list(self) -> Vec<Channel> {
        Channel::ALL.iter().copied().filter(|c| self.contains(*c)).collect()
    }
}

impl fmt::Debug for Channels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.list().iter().map(|c| c.as_str())).finish()
    }
}

impl fmt::Display for Channels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.list().iter().map(|c| c.as_str()).collect();
        f.write_str(&names.join(", "))
    }
}

/// An activation window, `from` (inclusive) to `until` (exclusive), in ms
/// since the Unix epoch; an end left out is open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub from_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

impl Window {
    pub fn contains(self, at_ms: i64) -> bool {
        self.from_ms.is_none_or(|from| at_ms >= from) && self.until_ms.is_none_or(|until| at_ms < until)
    }

    /// Whether some instant is in both.
    pub fn overlaps(self, other: Window) -> bool {
        let from = self.from_ms.max(other.from_ms);
        let until = match (self.until_ms, other.until_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match (from, until) {
            (Some(from), Some(until)) => from < until,
            _ => true,
        }
    }

    /// Whether the window has an end at all.
    pub fn is_scheduled(self) -> bool {
        self.from_ms.is_some() || self.until_ms.is_some()
    }
}

/// Where and when one rule of a slot serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub channels: Channels,
    pub window: Window,
}

impl Default for Scope {
    /// Every order, always.
    fn default() -> Scope {
        Scope { channels: Channels::ALL, window: Window::default() }
    }
}

impl Scope {
    /// Whether the order runs this rule: one of its channels, inside its
    /// window at the order's start. An order of a channel the host does not
    /// know (an embedder's) runs only the rules of every channel.
    pub fn serves(&self, order: OrderScope) -> bool {
        let channel = match order.channel {
            Some(channel) => self.channels.contains(channel),
            None => self.channels.is_all(),
        };
        channel && self.window.contains(order.at_ms)
    }

    /// Whether some order could run both (a channel in common, windows that overlap).
    pub fn overlaps(&self, other: &Scope) -> bool {
        self.channels.intersects(other.channels) && self.window.overlaps(other.window)
    }
}

/// What an order asks the rule set with: its channel, and the instant it
/// started (fixed for the order's whole life, fraud checks included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderScope {
    pub channel: Option<Channel>,
    pub at_ms: i64,
}

impl OrderScope {
    /// An order of `channel` (as the request carries it) started at `at_ms`.
    pub fn of(channel: &str, at_ms: i64) -> OrderScope {
        OrderScope { channel: channel.parse().ok(), at_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_795_600_800_000;

    #[test]
    fn a_scope_serves_its_channels_inside_its_window() {
        let mobile = Scope {
            channels: Channels::of(&[Channel::Mobile]),
            window: Window { from_ms: Some(T), until_ms: Some(T + 1000) },
        };
        assert!(mobile.serves(OrderScope::of("mobile", T)), "from is inclusive");
        assert!(mobile.serves(OrderScope::of("mobile", T + 999)));
        assert!(!mobile.serves(OrderScope::of("mobile", T + 1000)), "until is exclusive");
        assert!(!mobile.serves(OrderScope::of("mobile", T - 1)));
        assert!(!mobile.serves(OrderScope::of("web", T)));
        assert!(!mobile.serves(OrderScope::of("kiosk", T)), "an unknown channel runs only every-channel rules");
        assert!(Scope::default().serves(OrderScope::of("kiosk", 0)));
        assert_eq!(Channels::of(&[Channel::Partner, Channel::Web]).to_string(), "web, partner");
    }

    #[test]
    fn windows_overlap_when_an_instant_is_in_both() {
        let w = |from: Option<i64>, until: Option<i64>| Window { from_ms: from, until_ms: until };
        assert!(w(Some(0), Some(10)).overlaps(w(Some(5), None)));
        assert!(!w(Some(0), Some(10)).overlaps(w(Some(10), Some(20))), "until is exclusive");
        assert!(!w(None, Some(10)).overlaps(w(Some(10), None)));
        assert!(w(None, None).overlaps(w(Some(3), Some(4))));
    }
}
