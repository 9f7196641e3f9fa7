//! threshold: count, or distinct count of a field, per key over a sliding
//! event-time window `(t - window, t]`; optionally also fires when the count
//! is well above the key's own baseline. With `per`, each value of a field
//! (the reporting source, say) is counted on its own and the largest count
//! decides, so one action reported by two observers is not counted twice.

use std::collections::VecDeque;

use event::Event;

use super::baseline::{BaselineSpec, Rate};
use super::{part_of, EvidenceItem, Kept, Touched, Trigger, Weight};
use crate::field::FieldRef;
use crate::predicate::EvalEnv;

#[derive(Debug)]
pub(crate) struct ThresholdSpec {
    pub(crate) count: usize,
    pub(crate) window: i64,
    pub(crate) distinct: Option<FieldRef>,
    pub(crate) per: Option<FieldRef>,
    pub(crate) baseline: Option<BaselineSpec>,
    /// How many actions an event stands for (not with `distinct`).
    pub(crate) weight: Option<Weight>,
    /// Longer windows with counts of their own (a slow burst: many in an
    /// hour, never `count` in `window`); plain counts only.
    pub(crate) also: Vec<Window>,
}

#[derive(Debug)]
pub(crate) struct Window {
    pub(crate) count: usize,
    pub(crate) window: i64,
    /// Only events that also meet this are counted in the window.
    pub(crate) when: Option<crate::predicate::Pred>,
}

impl ThresholdSpec {
    /// How long an untouched key is worth keeping.
    pub(crate) fn retention(&self) -> i64 {
        let window = self
            .also
            .iter()
            .map(|w| w.window)
            .fold(self.window, i64::max);
        self.baseline
            .as_ref()
            .map_or(window, |b| b.retention().max(window))
    }
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct ThresholdState {
    /// Newest last; only the newest events whose weights reach `count`
    /// decide, so no more are kept (at most `count`).
    recent: VecDeque<Kept>,
    /// For distinct counts: (value hash, newest event with it).
    distinct: VecDeque<(u64, Kept)>,
    rate: Option<Rate>,
    last: i64,
    /// With `per`: one count for each value of that field (value hash, its
    /// count). An absent value is a value of its own.
    parts: Vec<(u64, ThresholdState)>,
    /// The events of each longer window (`also`), as `recent`.
    also: Vec<VecDeque<Kept>>,
}

impl Touched for ThresholdState {
    fn last(&self) -> i64 {
        self.last
    }
}

impl ThresholdState {
    pub(crate) fn on_event(
        &mut self,
        spec: &ThresholdSpec,
        e: &Event,
        env: &EvalEnv,
    ) -> Option<Trigger> {
        let weight = spec.weight.as_ref().map_or(1, |w| w.of(e, env));
        // Which longer windows count the event (bit per window).
        let also = spec
            .also
            .iter()
            .enumerate()
            .take(64)
            .filter(|(_, w)| w.when.as_ref().is_none_or(|p| p.eval(e, env)))
            .fold(0u64, |m, (i, _)| m | 1 << i);
        let Some(per) = &spec.per else {
            return self.count(spec, e, weight, also);
        };
        self.last = self.last.max(e.time);
        part_of(
            &mut self.parts,
            per,
            e,
            spec.retention(),
            ThresholdState::default,
        )
        .count(spec, e, weight, also)
    }

    /// Whether `e`, arriving behind what this count has seen, is a copy of
    /// an event it still holds (a sender's retry arriving late): counted
    /// once, in the rate too. Events without an id are never copies.
    fn holds_copy(&self, e: &Event) -> bool {
        if e.event_id.is_empty() || e.time > self.last {
            return false;
        }
        let id = &*e.event_id;
        self.recent.iter().any(|x| x.id() == id)
            || self.distinct.iter().any(|(_, x)| x.id() == id)
            || self.also.iter().flatten().any(|x| x.id() == id)
    }

    /// One count (the whole key's, or one `per` value's); the event stands
    /// for `weight` actions, and is counted in the longer windows whose bits
    /// `also` has.
    fn count(
        &mut self,
        spec: &ThresholdSpec,
        e: &Event,
        weight: u32,
        also: u64,
    ) -> Option<Trigger> {
        if self.holds_copy(e) {
            return None;
        }
        let t = e.time;
        self.last = self.last.max(t);
        let required = match &spec.baseline {
            Some(b) => {
                let rate = self.rate.get_or_insert_with(|| Rate::new(t));
                rate.add(b, t, f64::from(weight));
                // Fire at the fixed count, or earlier when the key's own
                // baseline says this is unusual for it.
                b.required(rate, t)
                    .map_or(spec.count, |r| (r.ceil() as usize).clamp(1, spec.count))
            }
            None => spec.count,
        };
        let Some(f) = &spec.distinct else {
            let kept = Kept::new(e).with_weight(weight);
            let first = add(
                &mut self.recent,
                kept.clone(),
                spec.count,
                spec.window,
                required,
            )
            .map(|(n, evidence)| (n, evidence, spec.window));
            // Every longer window counts the event, whichever fires.
            self.also.resize_with(spec.also.len(), VecDeque::new);
            let mut longer = None;
            for (i, (w, recent)) in spec.also.iter().zip(&mut self.also).enumerate() {
                if i >= 64 || also & (1 << i) == 0 {
                    continue;
                }
                let hit = add(recent, kept.clone(), w.count, w.window, w.count);
                if longer.is_none() {
                    longer = hit.map(|(n, evidence)| (n, evidence, w.window));
                }
            }
            let (n, evidence, window) = first.or(longer)?;
            return Some(Trigger {
                evidence,
                count: n as u64,
                window: Some(window),
            });
        };
        let horizon = t.saturating_sub(spec.window);
        let v = f.get(e)?;
        let h = xxhash_rust::xxh3::xxh3_64(v.to_text().as_bytes());
        let (n, evidence) = if self
            .distinct
            .back()
            .is_some_and(|(_, b)| behind((e.time, &e.event_id), b))
        {
            // Out of order: a value already counted adds nothing new.
            if self.distinct.iter().any(|(vh, _)| *vh == h) {
                return None;
            }
            late_window(
                &mut self.distinct,
                (h, Kept::new(e)),
                |(_, k)| k,
                spec.count,
                spec.window,
            )
        } else {
            self.distinct
                .retain(|(vh, x)| *vh != h && x.time() > horizon);
            self.distinct.push_back((h, Kept::new(e)));
            if self.distinct.len() > spec.count {
                self.distinct.pop_front();
            }
            (
                self.distinct.len(),
                self.distinct
                    .iter()
                    .map(|(_, x)| EvidenceItem::Kept(x.clone()))
                    .collect(),
            )
        };
        if n < required {
            return None;
        }
        Some(Trigger {
            evidence,
            count: n as u64,
            window: Some(spec.window),
        })
    }
}

/// Counts `kept` in one window's events (`recent`, newest last, holding
/// only the newest whose weights reach `count`): the actions within
/// `window` of it and their evidence when they reach `need`.
fn add(
    recent: &mut VecDeque<Kept>,
    kept: Kept,
    count: usize,
    window: i64,
    need: usize,
) -> Option<(usize, Vec<EvidenceItem>)> {
    if recent
        .back()
        .is_some_and(|b| behind((kept.time(), kept.id()), b))
    {
        let (n, evidence) = late_window(recent, kept, |k| k, count, window);
        return (n >= need).then_some((n, evidence));
    }
    let horizon = kept.time().saturating_sub(window);
    recent.push_back(kept);
    let n = trim(recent, |k| k, count, Some(horizon));
    if n < need {
        return None;
    }
    Some((
        n,
        recent
            .iter()
            .map(|x| EvidenceItem::Kept(x.clone()))
            .collect(),
    ))
}

/// Whether an event at `(time, event_id)` comes before `x` in the engine's
/// order, or is `x` again: it arrived after the allowed lateness, behind
/// what this key has seen.
fn behind(at: (i64, &str), x: &Kept) -> bool {
    at <= (x.time(), x.id())
}

/// Drops the oldest events of `recent` that are at or before `horizon` (if any), or
/// whose weights the newer ones reach `count` without; returns the weights
/// of those kept.
fn trim<T>(
    recent: &mut VecDeque<T>,
    kept: fn(&T) -> &Kept,
    count: usize,
    horizon: Option<i64>,
) -> usize {
    let mut total: usize = recent.iter().map(|x| kept(x).weight() as usize).sum();
    while let Some(f) = recent.front() {
        let w = kept(f).weight() as usize;
        if horizon.is_none_or(|h| kept(f).time() > h) && total - w < count {
            break;
        }
        total -= w;
        recent.pop_front();
    }
    total
}

/// Counts an event that arrived out of order (`recent` already holds newer
/// ones, each of which `kept` reads): it is put in its place by time, and
/// the window of `window` that holds it and the most actions decides (copies
/// were left out before, see [`ThresholdState::holds_copy`]). Keeps the
/// newest events whose weights reach `count`. Returns the actions counted.
fn late_window<T>(
    recent: &mut VecDeque<T>,
    item: T,
    kept: fn(&T) -> &Kept,
    count: usize,
    window: i64,
) -> (usize, Vec<EvidenceItem>) {
    let k = kept(&item);
    let at = recent.partition_point(|x| (kept(x).time(), kept(x).id()) < (k.time(), k.id()));
    recent.insert(at, item);
    let time = |i: usize| kept(&recent[i]).time();
    let weight = |i: usize| kept(&recent[i]).weight() as usize;
    // Windows are `(t - window, t]`: the events of one are less than
    // `window` apart. Slide the end from the late event onwards.
    let mut best = (at, at, weight(at));
    let mut lo = 0;
    let mut sum = 0;
    for hi in 0..recent.len() {
        sum += weight(hi);
        while time(hi) - time(lo) >= window {
            sum -= weight(lo);
            lo += 1;
        }
        if hi < at {
            continue;
        }
        if lo > at {
            break;
        }
        if sum > best.2 {
            best = (lo, hi, sum);
        }
    }
    let found = (
        best.2,
        recent
            .range(best.0..=best.1)
            .map(|x| EvidenceItem::Kept(kept(x).clone()))
            .collect(),
    );
    // Only the newest whose weights reach `count` are kept (no horizon: a
    // late event's window may lie anywhere among them).
    trim(recent, kept, count, None);
    found
}
