//! threshold: count, or distinct count of a field, per key over a sliding
//! event-time window `(t - window, t]`; optionally also fires when the count
//! is well above the key's own baseline. With `per`, each value of a field
//! (the reporting source, say) is counted on its own and the largest count
//! decides, so one action reported by two observers is not counted twice.

use std::collections::VecDeque;

use event::Event;

use super::baseline::{BaselineSpec, Rate};
use super::{part_of, EvidenceItem, Kept, Touched, Trigger};
use crate::field::FieldRef;

#[derive(Debug)]
pub(crate) struct ThresholdSpec {
    pub(crate) count: usize,
    pub(crate) window: i64,
    pub(crate) distinct: Option<FieldRef>,
    pub(crate) per: Option<FieldRef>,
    pub(crate) baseline: Option<BaselineSpec>,
}

impl ThresholdSpec {
    /// How long an untouched key is worth keeping.
    pub(crate) fn retention(&self) -> i64 {
        self.baseline
            .as_ref()
            .map_or(self.window, |b| b.retention().max(self.window))
    }
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct ThresholdState {
    /// Newest last; at most `count` entries (only the newest `count` decide).
    recent: VecDeque<Kept>,
    /// For distinct counts: (value hash, newest event with it).
    distinct: VecDeque<(u64, Kept)>,
    rate: Option<Rate>,
    last: i64,
    /// With `per`: one count for each value of that field (value hash, its
    /// count). An absent value is a value of its own.
    parts: Vec<(u64, ThresholdState)>,
}

impl Touched for ThresholdState {
    fn last(&self) -> i64 {
        self.last
    }
}

impl ThresholdState {
    pub(crate) fn on_event(&mut self, spec: &ThresholdSpec, e: &Event) -> Option<Trigger> {
        let Some(per) = &spec.per else {
            return self.count(spec, e);
        };
        self.last = self.last.max(e.time);
        part_of(
            &mut self.parts,
            per,
            e,
            spec.retention(),
            ThresholdState::default,
        )
        .count(spec, e)
    }

    /// Whether `e`, arriving behind what this count has seen, is a copy of
    /// an event it still holds (a sender's retry arriving late): counted
    /// once, in the rate too. Events without an id are never copies.
    fn holds_copy(&self, e: &Event) -> bool {
        if e.event_id.is_empty() || e.time > self.last {
            return false;
        }
        let id = &*e.event_id;
        self.recent.iter().any(|x| x.id() == id) || self.distinct.iter().any(|(_, x)| x.id() == id)
    }

    /// One count (the whole key's, or one `per` value's).
    fn count(&mut self, spec: &ThresholdSpec, e: &Event) -> Option<Trigger> {
        if self.holds_copy(e) {
            return None;
        }
        let t = e.time;
        self.last = self.last.max(t);
        let horizon = t.saturating_sub(spec.window);
        let required = match &spec.baseline {
            Some(b) => {
                let rate = self.rate.get_or_insert_with(|| Rate::new(t));
                rate.add(b, t, 1.0);
                // Fire at the fixed count, or earlier when the key's own
                // baseline says this is unusual for it.
                b.required(rate, t)
                    .map_or(spec.count, |r| (r.ceil() as usize).clamp(1, spec.count))
            }
            None => spec.count,
        };
        let (n, evidence): (usize, Vec<EvidenceItem>) = match &spec.distinct {
            None if self.recent.back().is_some_and(|b| behind(e, b)) => {
                let (n, evidence) = late_window(&mut self.recent, Kept::new(e), |k| k, spec);
                if n < required {
                    return None;
                }
                (n, evidence)
            }
            None => {
                self.recent.push_back(Kept::new(e));
                while self.recent.front().is_some_and(|f| f.time() <= horizon)
                    || self.recent.len() > spec.count
                {
                    self.recent.pop_front();
                }
                let n = self.recent.len();
                if n < required {
                    return None;
                }
                (
                    n,
                    self.recent
                        .iter()
                        .map(|x| EvidenceItem::Kept(x.clone()))
                        .collect(),
                )
            }
            Some(f) => {
                let v = f.get(e)?;
                let h = xxhash_rust::xxh3::xxh3_64(v.to_text().as_bytes());
                if self.distinct.back().is_some_and(|(_, b)| behind(e, b)) {
                    // Out of order: a value already counted adds nothing new.
                    if self.distinct.iter().any(|(vh, _)| *vh == h) {
                        return None;
                    }
                    let (n, evidence) =
                        late_window(&mut self.distinct, (h, Kept::new(e)), |(_, k)| k, spec);
                    if n < required {
                        return None;
                    }
                    return Some(Trigger {
                        evidence,
                        count: n as u64,
                    });
                }
                self.distinct
                    .retain(|(vh, x)| *vh != h && x.time() > horizon);
                self.distinct.push_back((h, Kept::new(e)));
                if self.distinct.len() > spec.count {
                    self.distinct.pop_front();
                }
                let n = self.distinct.len();
                if n < required {
                    return None;
                }
                (
                    n,
                    self.distinct
                        .iter()
                        .map(|(_, x)| EvidenceItem::Kept(x.clone()))
                        .collect(),
                )
            }
        };
        Some(Trigger {
            evidence,
            count: n as u64,
        })
    }
}

/// Whether `e` comes before `x` in the engine's order, `(time, event_id)`,
/// or is `x` again: it arrived after the allowed lateness, behind what this
/// key has seen.
fn behind(e: &Event, x: &Kept) -> bool {
    (e.time, e.event_id.as_ref()) <= (x.time(), x.id())
}

/// Counts an event that arrived out of order (`recent` already holds newer
/// ones, each of which `kept` reads): it is put in its place by time, and
/// the window of `window` that holds it and the most events decides (copies
/// were left out before, see [`ThresholdState::holds_copy`]). Keeps the
/// newest `count`.
fn late_window<T>(
    recent: &mut VecDeque<T>,
    item: T,
    kept: fn(&T) -> &Kept,
    spec: &ThresholdSpec,
) -> (usize, Vec<EvidenceItem>) {
    let k = kept(&item);
    let at = recent.partition_point(|x| (kept(x).time(), kept(x).id()) < (k.time(), k.id()));
    recent.insert(at, item);
    let time = |i: usize| kept(&recent[i]).time();
    // Windows are `(t - window, t]`: the events of one are less than
    // `window` apart. Slide the end from the late event onwards.
    let mut best = (at, at);
    let mut lo = 0;
    for hi in at..recent.len() {
        while time(hi) - time(lo) >= spec.window {
            lo += 1;
        }
        if lo > at {
            break;
        }
        if hi - lo > best.1 - best.0 {
            best = (lo, hi);
        }
    }
    let found = (
        best.1 - best.0 + 1,
        recent
            .range(best.0..=best.1)
            .map(|x| EvidenceItem::Kept(kept(x).clone()))
            .collect(),
    );
    while recent.len() > spec.count {
        recent.pop_front();
    }
    found
}
