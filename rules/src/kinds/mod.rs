//! Per-kind keyed state. Each kind is one module: its compiled spec, its
//! per-key state and an `on_event` that returns a [`Trigger`] when it fires.
//! [`KeyMap`] bounds every kind's state (max keys, expiry on watermark).

pub(crate) mod baseline;
pub(crate) mod inactivity;
pub(crate) mod new_value;
pub(crate) mod sequence;
pub(crate) mod threshold;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use event::{Event, EventKind, Evidence};

/// An evidence event: the whole event while it is in a window, or only its
/// id, time and kind when a kind keeps it for long (to keep idle keys small).
#[derive(Debug, Clone)]
pub(crate) enum EvidenceItem {
    Full(Arc<Event>),
    Compact {
        id: Box<str>,
        time: i64,
        kind: EventKind,
    },
}

impl EvidenceItem {
    pub(crate) fn compact(e: &Event) -> EvidenceItem {
        EvidenceItem::Compact {
            id: e.event_id.as_str().into(),
            time: e.time,
            kind: e.kind,
        }
    }

    pub(crate) fn time(&self) -> i64 {
        match self {
            EvidenceItem::Full(e) => e.time,
            EvidenceItem::Compact { time, .. } => *time,
        }
    }

    pub(crate) fn id(&self) -> &str {
        match self {
            EvidenceItem::Full(e) => &e.event_id,
            EvidenceItem::Compact { id, .. } => id,
        }
    }

    pub(crate) fn to_evidence(&self) -> Evidence {
        match self {
            EvidenceItem::Full(e) => Evidence::from_event(e),
            EvidenceItem::Compact { id, time, kind } => Evidence {
                event_id: id.to_string(),
                time: *time,
                kind: *kind,
                ..Default::default()
            },
        }
    }
}

/// A rule fired: the evidence (in event-time order) and what it counted.
#[derive(Debug)]
pub(crate) struct Trigger {
    pub(crate) evidence: Vec<EvidenceItem>,
    pub(crate) count: u64,
}

impl Trigger {
    pub(crate) fn single(e: &Arc<Event>) -> Trigger {
        Trigger {
            evidence: vec![EvidenceItem::Full(e.clone())],
            count: 1,
        }
    }
}

/// Keys are already 128-bit hashes: use their low bits as the hash.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, i: u128) {
        self.0 = i as u64;
    }
}

/// State that knows when it was last touched, for eviction.
pub(crate) trait Touched {
    fn last(&self) -> i64;
}

/// Bounded per-key state of one rule.
#[derive(Debug)]
pub(crate) struct KeyMap<S> {
    pub(crate) map: HashMap<u128, S, BuildHasherDefault<KeyHasher>>,
    max_keys: usize,
    pub(crate) evicted: u64,
}

impl<S: Touched> KeyMap<S> {
    pub(crate) fn new(max_keys: usize) -> Self {
        KeyMap {
            map: HashMap::default(),
            max_keys: max_keys.max(1),
            evicted: 0,
        }
    }

    /// The state of `key`, created with `make` (evicting the least recently
    /// touched tenth of the keys first when the map is full).
    pub(crate) fn entry(&mut self, key: u128, make: impl FnOnce() -> S) -> &mut S {
        if !self.map.contains_key(&key) && self.map.len() >= self.max_keys {
            self.evict_oldest();
        }
        self.map.entry(key).or_insert_with(make)
    }

    fn evict_oldest(&mut self) {
        let mut times: Vec<i64> = self.map.values().map(Touched::last).collect();
        let n = (times.len() / 10).max(1);
        let (_, cutoff, _) = times.select_nth_unstable(n - 1);
        let cutoff = *cutoff;
        let before = self.map.len();
        // Ties at the cutoff may all go; the bound holds either way.
        self.map.retain(|_, s| s.last() > cutoff);
        self.evicted += (before - self.map.len()) as u64;
    }

    /// Drops every key for which `expired` says so.
    pub(crate) fn sweep(&mut self, mut expired: impl FnMut(&S) -> bool) {
        let before = self.map.len();
        self.map.retain(|_, s| !expired(s));
        self.evicted += (before - self.map.len()) as u64;
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct S(i64);
    impl Touched for S {
        fn last(&self) -> i64 {
            self.0
        }
    }

    #[test]
    fn key_map_is_bounded_and_evicts_the_oldest() {
        let mut m = KeyMap::new(10);
        for i in 0..10u128 {
            m.entry(i, || S(i as i64));
        }
        assert_eq!(m.len(), 10);
        m.entry(100, || S(100));
        assert!(m.len() <= 10);
        assert!(!m.map.contains_key(&0), "the oldest key goes first");
        assert!(m.map.contains_key(&100));
        assert_eq!(m.evicted, 1);
        m.sweep(|s| s.0 < 5);
        assert!(m.map.values().all(|s| s.0 >= 5));
    }
}
