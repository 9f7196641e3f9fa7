//! sequence: ordered steps per key within `within`, each step with its own
//! predicate and count. When an event satisfies the last step, the engine
//! looks backwards for the newest events of each earlier step, each strictly
//! before those chosen for the next step, all inside the span. An `until`
//! event clears the key. A completed sequence clears the key too.

use std::collections::VecDeque;

use event::Event;

use super::{EvidenceItem, Kept, Touched, Trigger};
use crate::predicate::{EvalEnv, Pred};

#[derive(Debug)]
pub(crate) struct Step {
    #[allow(dead_code)] // shown in docs and kept for future evidence labels
    pub(crate) name: String,
    pub(crate) pred: Pred,
    pub(crate) count: usize,
}

#[derive(Debug)]
pub(crate) struct SequenceSpec {
    pub(crate) within: i64,
    pub(crate) steps: Vec<Step>,
    pub(crate) until: Option<Pred>,
}

/// Which steps an event satisfies (bit per step), and whether it cancels.
pub(crate) struct Matched {
    pub(crate) until: bool,
    pub(crate) steps: u64,
}

impl SequenceSpec {
    pub(crate) fn matched(&self, e: &Event, env: &EvalEnv) -> Matched {
        let until = self.until.as_ref().is_some_and(|u| u.eval(e, env));
        let mut steps = 0u64;
        if !until {
            for (i, s) in self.steps.iter().enumerate().take(64) {
                if s.pred.eval(e, env) {
                    steps |= 1 << i;
                }
            }
        }
        Matched { until, steps }
    }

    fn cap(&self, i: usize) -> usize {
        // The step just before the last only ever needs its newest `count`
        // (plus the current event, which may match it too); earlier steps
        // keep some slack for interleavings.
        let c = self.steps[i].count;
        if i + 2 >= self.steps.len() {
            c + 1
        } else {
            (c + 64).min(4096)
        }
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct SequenceState {
    /// Per step, the evidence of the matching events (time inline, no
    /// pointer chase to expire; the events themselves are not kept). The
    /// first two steps live inline (most sequences have two): one cache
    /// miss fewer per event on a table of many sessions.
    first: [VecDeque<Kept>; 2],
    rest: Vec<VecDeque<Kept>>,
    last: i64,
}

impl Touched for SequenceState {
    fn last(&self) -> i64 {
        self.last
    }
}

/// `(time, event_id)` order, the engine's processing order.
fn before(a: &Kept, b: &Kept) -> bool {
    (a.time(), a.id()) < (b.time(), b.id())
}

impl SequenceState {
    pub(crate) fn new(spec: &SequenceSpec) -> Self {
        SequenceState {
            first: [VecDeque::new(), VecDeque::new()],
            rest: (2..spec.steps.len()).map(|_| VecDeque::new()).collect(),
            last: i64::MIN,
        }
    }

    fn step(&self, i: usize) -> &VecDeque<Kept> {
        match i {
            0 | 1 => &self.first[i],
            _ => &self.rest[i - 2],
        }
    }

    fn step_mut(&mut self, i: usize) -> &mut VecDeque<Kept> {
        match i {
            0 | 1 => &mut self.first[i],
            _ => &mut self.rest[i - 2],
        }
    }

    /// Feeds an event that matched at least one step (bits in `steps`).
    pub(crate) fn on_event(
        &mut self,
        spec: &SequenceSpec,
        e: &Event,
        steps: u64,
    ) -> Option<Trigger> {
        self.last = e.time;
        let horizon = e.time.saturating_sub(spec.within);
        let last_step = spec.steps.len() - 1;
        let mut kept: Option<Kept> = None;
        for i in 0..spec.steps.len() {
            let q = self.step_mut(i);
            while q.front().is_some_and(|x| x.time() < horizon) {
                q.pop_front();
            }
            if steps & (1 << i) != 0 {
                // Grown as needed, from one: most keys never see more than
                // one or two events of a step, and there is one state per
                // live session.
                if q.capacity() == 0 {
                    q.reserve_exact(1);
                }
                q.push_back(kept.get_or_insert_with(|| Kept::new(e)).clone());
                if q.len() > spec.cap(i) {
                    q.pop_front();
                }
            }
        }
        if steps & (1 << last_step) == 0 {
            return None;
        }
        // The last step: its newest `count` events end with this one.
        let q = self.step(last_step);
        let need = spec.steps[last_step].count;
        if q.len() < need {
            return None;
        }
        let mut chosen: Vec<Kept> = q.iter().rev().take(need).cloned().collect();
        let mut bound = chosen.last().expect("need >= 1").clone();
        for i in (0..last_step).rev() {
            let need = spec.steps[i].count;
            let from = chosen.len();
            chosen.extend(
                self.step(i)
                    .iter()
                    .rev()
                    .filter(|x| before(x, &bound))
                    .take(need)
                    .cloned(),
            );
            if chosen.len() - from < need {
                return None;
            }
            bound = chosen.last().expect("need >= 1").clone();
        }
        chosen.sort_by(|a, b| (a.time(), a.id()).cmp(&(b.time(), b.id())));
        for q in self.first.iter_mut().chain(&mut self.rest) {
            q.clear();
        }
        let count = chosen.len() as u64;
        Some(Trigger {
            evidence: chosen.into_iter().map(EvidenceItem::Kept).collect(),
            count,
        })
    }
}
