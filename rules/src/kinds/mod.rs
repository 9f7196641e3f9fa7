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

use crate::field::FieldRef;

/// The evidence fields of an event a kind keeps in its state (a sequence
/// step, a threshold window), packed into one shared allocation: the
/// event itself is freed as soon as the engine has run it, instead of
/// being held whole (~0.5 KB and a dozen strings) for as long as the window.
/// Clones are a reference count, so triggers that get suppressed stay cheap.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Kept {
    time: i64,
    /// `event_id`, then `action`, `tool`, `path`, `domain`, `command` back to back.
    text: Arc<str>,
    /// End offset in `text` of each of the six parts.
    ends: [u32; 6],
    /// Bit `i` set when optional part `i` (1..=5) was present.
    present: u8,
    kind: EventKind,
    /// How many actions the event stands for ([`Weight`]); 1 for most.
    weight: u32,
}

impl Kept {
    pub(crate) fn new(e: &Event) -> Kept {
        let opts = [&e.action, &e.tool, &e.path, &e.domain, &e.command];
        let len = e.event_id.len()
            + opts
                .iter()
                .map(|o| o.as_ref().map_or(0, |s| s.len()))
                .sum::<usize>();
        let mut text = String::with_capacity(len);
        let mut ends = [0u32; 6];
        let mut present = 0u8;
        text.push_str(&e.event_id);
        // Offsets fit in u32: an event is far below 4 GiB (ingest caps records).
        ends[0] = text.len() as u32;
        for (i, o) in opts.iter().enumerate() {
            if let Some(v) = o {
                text.push_str(v);
                present |= 1 << (i + 1);
            }
            ends[i + 1] = text.len() as u32;
        }
        Kept {
            time: e.time,
            text: Arc::from(text),
            ends,
            present,
            kind: e.kind,
            weight: 1,
        }
    }

    /// The same evidence standing for `weight` actions.
    pub(crate) fn with_weight(mut self, weight: u32) -> Kept {
        self.weight = weight;
        self
    }

    pub(crate) fn weight(&self) -> u32 {
        self.weight
    }

    pub(crate) fn time(&self) -> i64 {
        self.time
    }

    pub(crate) fn id(&self) -> &str {
        &self.text[..self.ends[0] as usize]
    }

    fn part(&self, i: usize) -> Option<String> {
        (self.present & (1 << i) != 0)
            .then(|| self.text[self.ends[i - 1] as usize..self.ends[i] as usize].to_string())
    }

    /// Same as `Evidence::from_event` on the event it was made from.
    pub(crate) fn to_evidence(&self) -> Evidence {
        Evidence {
            event_id: self.id().to_string(),
            time: self.time,
            kind: self.kind,
            action: self.part(1),
            tool: self.part(2),
            path: self.part(3),
            domain: self.part(4),
            command: self.part(5),
        }
    }
}

/// How many actions one event stands for, in a threshold's count or a
/// sequence step's: the first of its sources that applies, else 1. A field
/// gives a whole number (ingest's `attrs.vigil.items`: a batch call's list of
/// ids) or a JSON list, its length; a `when` gives its fixed weight when its
/// condition holds (a read of a whole folder counts as many reads).
#[derive(Debug, Default)]
pub(crate) struct Weight {
    pub(crate) sources: Vec<WeightSource>,
}

#[derive(Debug)]
pub(crate) enum WeightSource {
    Field(FieldRef),
    When(crate::predicate::Pred, u32),
}

/// The largest weight one event may have.
pub(crate) const MAX_WEIGHT: u32 = 1_000_000;

impl Weight {
    pub(crate) fn of(&self, e: &Event, env: &crate::predicate::EvalEnv) -> u32 {
        for s in &self.sources {
            let w = match s {
                WeightSource::Field(f) => f.get(e).and_then(|v| weight_of(&v.to_text())),
                WeightSource::When(p, w) => p.eval(e, env).then_some(*w),
            };
            if let Some(w) = w {
                return w;
            }
        }
        1
    }
}

/// A field's value as a weight: a whole number of at least 1, or the
/// length of a non-empty JSON list; at most [`MAX_WEIGHT`].
fn weight_of(text: &str) -> Option<u32> {
    let text = text.trim();
    let n = if text.starts_with('[') {
        serde_json::from_str::<Vec<serde::de::IgnoredAny>>(text)
            .ok()?
            .len() as u64
    } else {
        text.parse::<u64>().ok()?
    };
    (n >= 1).then(|| n.min(u64::from(MAX_WEIGHT)) as u32)
}

/// An event id kept for long in small state. Ids vigil computes are 32
/// lowercase hex digits: those are held as their 16 bytes (no allocation),
/// anything else as text. `to_string` gives back the exact id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum CompactId {
    Hex([u64; 2]),
    Text(Box<str>),
}

impl CompactId {
    pub(crate) fn new(id: &str) -> CompactId {
        let b = id.as_bytes();
        if b.len() == 32 && b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            let hi = u64::from_str_radix(&id[..16], 16);
            let lo = u64::from_str_radix(&id[16..], 16);
            if let (Ok(hi), Ok(lo)) = (hi, lo) {
                return CompactId::Hex([hi, lo]);
            }
        }
        CompactId::Text(id.into())
    }
}

impl std::fmt::Display for CompactId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CompactId::Hex([hi, lo]) => write!(f, "{hi:016x}{lo:016x}"),
            CompactId::Text(t) => f.write_str(t),
        }
    }
}

/// An evidence event: the event being processed, the evidence fields of an
/// earlier one, or only the id, time and kind when a kind keeps it for long
/// (to keep idle keys small).
#[derive(Debug, Clone)]
pub(crate) enum EvidenceItem {
    /// The event the engine is running the rule on.
    Current,
    Kept(Kept),
    Compact {
        id: Box<str>,
        time: i64,
        kind: EventKind,
    },
}

impl EvidenceItem {
    /// `current` is the event being processed.
    pub(crate) fn time(&self, current: &Event) -> i64 {
        match self {
            EvidenceItem::Current => current.time,
            EvidenceItem::Kept(k) => k.time,
            EvidenceItem::Compact { time, .. } => *time,
        }
    }

    pub(crate) fn id<'a>(&'a self, current: &'a Event) -> &'a str {
        match self {
            EvidenceItem::Current => &current.event_id,
            EvidenceItem::Kept(k) => k.id(),
            EvidenceItem::Compact { id, .. } => id,
        }
    }

    pub(crate) fn to_evidence(&self, current: &Event) -> Evidence {
        match self {
            EvidenceItem::Current => Evidence::from_event(current),
            EvidenceItem::Kept(k) => k.to_evidence(),
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
    /// The window the count is over, when the kind has one that the
    /// summary may name (`{window}`).
    pub(crate) window: Option<i64>,
}

impl Trigger {
    /// The event being processed is the whole evidence.
    pub(crate) fn single() -> Trigger {
        Trigger {
            evidence: vec![EvidenceItem::Current],
            count: 1,
            window: None,
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

/// With `per`: the state of `e`'s value of that field (an absent value is a
/// value of its own), made by `new` the first time. A value not heard from
/// for `keep` has nothing left to count and is dropped.
pub(crate) fn part_of<'a, S: Touched>(
    parts: &'a mut Vec<(u64, S)>,
    per: &FieldRef,
    e: &Event,
    keep: i64,
    new: impl FnOnce() -> S,
) -> &'a mut S {
    let h = per
        .get(e)
        .map_or(0, |v| xxhash_rust::xxh3::xxh3_64(v.to_text().as_bytes()));
    parts.retain(|(vh, p)| *vh == h || p.last().saturating_add(keep) >= e.time);
    let i = match parts.iter().position(|(vh, _)| *vh == h) {
        Some(i) => i,
        None => {
            parts.push((h, new()));
            parts.len() - 1
        }
    };
    &mut parts[i].1
}

/// Bounded per-key state of one rule. Snapshots keep the keys and their
/// state; the bound comes from the configuration in force at restore.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct KeyMap<S> {
    pub(crate) map: HashMap<u128, S, BuildHasherDefault<KeyHasher>>,
    #[serde(skip)]
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
        // The bound is rarely reached: test it first so the usual call
        // probes the table once.
        if self.map.len() >= self.max_keys && !self.map.contains_key(&key) {
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
        // Keys come and go in waves (sessions): give back most of a table
        // that is mostly empty, so idle state stays small.
        if self.map.capacity() > 64 && self.map.len() < self.map.capacity() / 4 {
            self.map.shrink_to(self.map.len() * 2);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Applies the bound in force (after a restore).
    pub(crate) fn bound(&mut self, max_keys: usize) {
        self.max_keys = max_keys.max(1);
        while self.map.len() > self.max_keys {
            self.evict_oldest();
        }
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

    #[test]
    fn compact_ids_give_back_the_exact_id() {
        for id in [
            "0123456789abcdef0123456789abcdef",
            "00000000000000000000000000000000",
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcde",
            "+123456789abcdef0123456789abcdef",
            "",
            "id-7",
        ] {
            assert_eq!(CompactId::new(id).to_string(), id);
        }
        assert!(matches!(
            CompactId::new("ffffffffffffffff0000000000000001"),
            CompactId::Hex(_)
        ));
    }

    #[test]
    fn kept_evidence_is_the_events_evidence() {
        let mut e = Event {
            time: 42,
            event_id: "abc".into(),
            kind: EventKind::FileRead,
            tool: Some("Read".into()),
            path: Some(String::new().into()),
            command: Some("cat é".into()),
            user: Some("u".into()),
            ..Default::default()
        };
        let k = Kept::new(&e);
        assert_eq!(k.to_evidence(), Evidence::from_event(&e));
        assert_eq!((k.time(), k.id()), (42, "abc"));
        e.action = Some("read".into());
        e.domain = Some("x.io".into());
        e.path = None;
        assert_eq!(Kept::new(&e).to_evidence(), Evidence::from_event(&e));
    }
}
