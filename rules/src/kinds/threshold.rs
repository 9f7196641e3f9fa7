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
    distinct: Vec<(u64, Kept)>,
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
        self.last = e.time;
        part_of(
            &mut self.parts,
            per,
            e,
            spec.retention(),
            ThresholdState::default,
        )
        .count(spec, e)
    }

    /// One count (the whole key's, or one `per` value's).
    fn count(&mut self, spec: &ThresholdSpec, e: &Event) -> Option<Trigger> {
        let t = e.time;
        self.last = t;
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
                self.distinct
                    .retain(|(vh, x)| *vh != h && x.time() > horizon);
                self.distinct.push((h, Kept::new(e)));
                if self.distinct.len() > spec.count {
                    self.distinct.remove(0);
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
