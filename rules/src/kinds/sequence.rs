//! sequence: ordered steps per key within `within`, each step with its own
//! predicate and count. When an event satisfies the last step, the engine
//! looks backwards for the newest events of each earlier step, each strictly
//! before those chosen for the next step, all inside the span. An `until`
//! event clears the key. A completed sequence clears the key too.

use std::collections::VecDeque;
use std::sync::Arc;

use event::Event;

use super::{EvidenceItem, Touched, Trigger};
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

#[derive(Debug)]
pub(crate) struct SequenceState {
    /// Per step, the matching events with their time inline (no pointer chase to expire).
    per_step: Vec<VecDeque<(i64, Arc<Event>)>>,
    last: i64,
}

impl Touched for SequenceState {
    fn last(&self) -> i64 {
        self.last
    }
}

fn before(a: &Event, b: (i64, &str)) -> bool {
    (a.time, a.event_id.as_str()) < b
}

impl SequenceState {
    pub(crate) fn new(spec: &SequenceSpec) -> Self {
        SequenceState {
            per_step: (0..spec.steps.len()).map(|_| VecDeque::new()).collect(),
            last: i64::MIN,
        }
    }

    /// Feeds an event that matched at least one step (bits in `steps`).
    pub(crate) fn on_event(
        &mut self,
        spec: &SequenceSpec,
        e: &Arc<Event>,
        steps: u64,
    ) -> Option<Trigger> {
        self.last = e.time;
        let horizon = e.time.saturating_sub(spec.within);
        let last_step = spec.steps.len() - 1;
        for i in 0..spec.steps.len() {
            let q = &mut self.per_step[i];
            while q.front().is_some_and(|x| x.0 < horizon) {
                q.pop_front();
            }
            if steps & (1 << i) != 0 {
                if q.capacity() == 0 {
                    q.reserve_exact(spec.cap(i) + 1);
                }
                q.push_back((e.time, e.clone()));
                if q.len() > spec.cap(i) {
                    q.pop_front();
                }
            }
        }
        if steps & (1 << last_step) == 0 {
            return None;
        }
        // The last step: its newest `count` events end with this one.
        let mut chosen: Vec<Arc<Event>> = Vec::new();
        let q = &self.per_step[last_step];
        let need = spec.steps[last_step].count;
        if q.len() < need {
            return None;
        }
        chosen.extend(q.iter().rev().take(need).map(|x| x.1.clone()));
        let mut bound = {
            let first = chosen.last().expect("need >= 1");
            (first.time, first.event_id.clone())
        };
        for i in (0..last_step).rev() {
            let need = spec.steps[i].count;
            let picked: Vec<Arc<Event>> = self.per_step[i]
                .iter()
                .rev()
                .filter(|x| before(&x.1, (bound.0, &bound.1)))
                .take(need)
                .map(|x| x.1.clone())
                .collect();
            if picked.len() < need {
                return None;
            }
            let first = picked.last().expect("need >= 1");
            bound = (first.time, first.event_id.clone());
            chosen.extend(picked);
        }
        chosen.sort_by(|a, b| (a.time, &a.event_id).cmp(&(b.time, &b.event_id)));
        for q in &mut self.per_step {
            q.clear();
        }
        let count = chosen.len() as u64;
        Some(Trigger {
            evidence: chosen.into_iter().map(EvidenceItem::Full).collect(),
            count,
        })
    }
}
