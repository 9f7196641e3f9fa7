//! sequence: ordered steps per key within `within`, each step with its own
//! predicate and count. When an event satisfies the last step, the engine
//! looks backwards for the newest events of each earlier step, each strictly
//! before those chosen for the next step, all inside the span. An `until`
//! event clears the key. A completed sequence clears the key too.
//!
//! Steps may `bind` a value of their event (a regex's `value` group): two
//! neighbouring steps that both bind join only on equal values (the remote
//! a `git remote add` names and the one a `git push` pushes to). An
//! `optional` step links that way and is needed only when the next step's
//! event binds a value; its newest event binding that value decides, so an
//! event that binds it without meeting the step's condition (the remote
//! pointed back inside, or removed) undoes an earlier one.
//!
//! A step that `shares_event` may take as the step before it the very event
//! that meets it (one command that archives a folder and uploads it).

use std::collections::VecDeque;

use event::Event;
use regex::Regex;

use super::{EvidenceItem, Kept, Touched, Trigger, Weight};
use crate::field::FieldRef;
use crate::predicate::{EvalEnv, Pred};

#[derive(Debug)]
pub(crate) struct Step {
    #[allow(dead_code)] // shown in docs and kept for future evidence labels
    pub(crate) name: String,
    pub(crate) pred: Pred,
    pub(crate) count: usize,
    pub(crate) bind: Option<Bind>,
    pub(crate) optional: bool,
    /// How many of the step's `count` one event stands for.
    pub(crate) weight: Option<Weight>,
    /// Its event may also count for the step before it.
    pub(crate) shares_event: bool,
}

/// The value a step's event binds: the `value` group of a regex over a
/// field (or the whole match), or `default` when the regex matched without
/// its `value` group (a bare `git push` pushes to origin).
#[derive(Debug)]
pub(crate) struct Bind {
    pub(crate) field: FieldRef,
    pub(crate) pattern: Regex,
    pub(crate) default: Option<Box<str>>,
    /// The regex has a `value` group.
    pub(crate) has_group: bool,
}

impl Bind {
    fn value(&self, e: &Event) -> Option<Box<str>> {
        let text = self.field.get(e)?.to_text();
        let caps = self.pattern.captures(&text)?;
        let found = if self.has_group {
            caps.name("value")
        } else {
            caps.get(0)
        };
        match found {
            Some(m) if !m.as_str().is_empty() => Some(m.as_str().into()),
            _ => self.default.clone(),
        }
    }

    /// Whether the event's field matches (cheaper than its value: most
    /// events are looked at for nothing else).
    fn matches(&self, e: &Event) -> bool {
        self.field
            .get(e)
            .is_some_and(|v| self.pattern.is_match(&v.to_text()))
    }
}

/// A step's event as a sequence keeps it: its evidence, and what it binds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Held {
    kept: Kept,
    bind: Option<Box<str>>,
    /// It bound the value without meeting the step's condition: it only
    /// undoes what earlier events of the step bound.
    undoes: bool,
}

#[derive(Debug)]
pub(crate) struct SequenceSpec {
    pub(crate) within: i64,
    pub(crate) steps: Vec<Step>,
    pub(crate) until: Option<Pred>,
    /// The steps whose events may start a key's state (bits): the first
    /// and the optional ones.
    pub(crate) starts: u64,
}

/// Which steps an event satisfies (bit per step), which optional steps'
/// values it binds without satisfying them, and whether it cancels.
pub(crate) struct Matched {
    pub(crate) until: bool,
    pub(crate) steps: u64,
    pub(crate) undoes: u64,
}

impl Matched {
    /// Whether the event has any role in the sequence.
    pub(crate) fn any(&self) -> bool {
        self.until || self.steps != 0 || self.undoes != 0
    }
}

impl SequenceSpec {
    /// Whether an event matching `steps` (bits) is worth new state for a
    /// key: the first step's events come before all others, and an
    /// optional step's may come before them too.
    pub(crate) fn can_start(&self, steps: u64) -> bool {
        steps & self.starts != 0
    }

    pub(crate) fn matched(&self, e: &Event, env: &EvalEnv) -> Matched {
        let until = self.until.as_ref().is_some_and(|u| u.eval(e, env));
        let mut steps = 0u64;
        let mut undoes = 0u64;
        if !until {
            for (i, s) in self.steps.iter().enumerate().take(64) {
                if s.pred.eval(e, env) {
                    steps |= 1 << i;
                } else if s.optional && s.bind.as_ref().is_some_and(|b| b.matches(e)) {
                    undoes |= 1 << i;
                }
            }
        }
        Matched {
            until,
            steps,
            undoes,
        }
    }

    fn cap(&self, i: usize) -> usize {
        // The step just before the last only ever needs its newest `count`
        // (plus the current event, which may match it too); earlier steps
        // keep some slack for interleavings.
        let c = self.steps[i].count;
        let n = self.steps.len();
        if i + 1 == n {
            return c + 1;
        }
        // Optional steps between this one and the last do not order it: it
        // is searched before the last step's event, as the step just before
        // the last is. A binding step is searched by value: it keeps more.
        let before_last = self.steps[i + 1..n - 1].iter().all(|s| s.optional);
        if before_last && self.steps[i].bind.is_none() {
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
    first: [VecDeque<Held>; 2],
    rest: Vec<VecDeque<Held>>,
    last: i64,
}

impl Touched for SequenceState {
    fn last(&self) -> i64 {
        self.last
    }
}

/// `(time, event_id)` order, the engine's processing order.
fn before(a: &Held, b: &Held) -> bool {
    (a.kept.time(), a.kept.id()) < (b.kept.time(), b.kept.id())
}

/// The same event (kept by two steps).
fn same(a: &Held, b: &Held) -> bool {
    (a.kept.time(), a.kept.id()) == (b.kept.time(), b.kept.id())
}

impl SequenceState {
    pub(crate) fn new(spec: &SequenceSpec) -> Self {
        SequenceState {
            first: [VecDeque::new(), VecDeque::new()],
            rest: (2..spec.steps.len()).map(|_| VecDeque::new()).collect(),
            last: i64::MIN,
        }
    }

    fn step(&self, i: usize) -> &VecDeque<Held> {
        match i {
            0 | 1 => &self.first[i],
            _ => &self.rest[i - 2],
        }
    }

    fn step_mut(&mut self, i: usize) -> &mut VecDeque<Held> {
        match i {
            0 | 1 => &mut self.first[i],
            _ => &mut self.rest[i - 2],
        }
    }

    /// An `until` event that arrived out of order: it ends what came
    /// before it, not the key's newer events.
    pub(crate) fn forget_before(&mut self, e: &Event) {
        let at = (e.time, &*e.event_id);
        for q in self.first.iter_mut().chain(&mut self.rest) {
            q.retain(|x| (x.kept.time(), x.kept.id()) > at);
        }
    }

    /// Feeds an event that matched at least one step (bits in `steps`) or
    /// binds an optional step's value without matching it (`undoes`).
    pub(crate) fn on_event(
        &mut self,
        spec: &SequenceSpec,
        e: &Event,
        steps: u64,
        undoes: u64,
        env: &EvalEnv,
    ) -> Option<Trigger> {
        let last_step = spec.steps.len() - 1;
        // An event that arrived out of order (after the allowed lateness,
        // behind what this key has seen) is put in its place by time below;
        // a copy of one already kept (a retry arriving late) changes nothing.
        if e.time <= self.last
            && !e.event_id.is_empty()
            && (0..spec.steps.len()).any(|i| {
                (steps | undoes) & (1 << i) != 0
                    && self.step(i).iter().any(|x| x.kept.id() == &*e.event_id)
            })
        {
            return None;
        }
        self.last = self.last.max(e.time);
        let horizon = e.time.saturating_sub(spec.within);
        let mut kept: Option<Kept> = None;
        for i in 0..spec.steps.len() {
            let bit = 1 << i;
            let bind = match &spec.steps[i].bind {
                Some(b) if (steps | undoes) & bit != 0 => b.value(e),
                _ => None,
            };
            let q = self.step_mut(i);
            while q.front().is_some_and(|x| x.kept.time() < horizon) {
                q.pop_front();
            }
            if (steps | undoes) & bit != 0 {
                // Grown as needed, from one: most keys never see more than
                // one or two events of a step, and there is one state per
                // live session.
                if q.capacity() == 0 {
                    q.reserve_exact(1);
                }
                let mut kept = kept.get_or_insert_with(|| Kept::new(e)).clone();
                let undoes = steps & bit == 0;
                if let (Some(w), false) = (&spec.steps[i].weight, undoes) {
                    kept = kept.with_weight(w.of(e, env));
                }
                let held = Held { kept, bind, undoes };
                if q.back().is_some_and(|b| before(&held, b)) {
                    let at = q.partition_point(|x| before(x, &held));
                    q.insert(at, held);
                } else {
                    q.push_back(held);
                }
                if q.len() > spec.cap(i) {
                    q.pop_front();
                }
            }
        }
        if steps & (1 << last_step) == 0 {
            return None;
        }
        // The last step: its newest `count` events end with this one (and
        // a late one's with it: those after it are not its to count).
        let q = self.step(last_step);
        let need = spec.steps[last_step].count;
        let now = (e.time, &*e.event_id);
        let mut chosen: Vec<&Held> = Vec::new();
        if !take_weighed(
            &mut chosen,
            q.iter()
                .rev()
                .filter(|x| (x.kept.time(), x.kept.id()) <= now),
            need,
        ) {
            return None;
        }
        // Earlier steps come before `bound` (or are its event, when the step
        // that chose it shares its event); a binding step joins `next`.
        let mut bound = *chosen.last().expect("need >= 1");
        let mut shares = spec.steps[last_step].shares_event;
        let mut next = bound;
        for i in (0..last_step).rev() {
            let step = &spec.steps[i];
            let want = match (&step.bind, &next.bind) {
                (Some(_), Some(v)) => Some(v),
                _ => None,
            };
            if step.optional && want.is_none() {
                continue;
            }
            let from = chosen.len();
            let enough = take_weighed(
                &mut chosen,
                self.step(i)
                    .iter()
                    .rev()
                    .filter(|x| before(x, bound) || (shares && same(x, bound)))
                    .filter(|x| want.is_none_or(|v| x.bind.as_ref() == Some(v))),
                step.count,
            );
            if !enough || chosen[from..].iter().any(|x| x.undoes) {
                return None;
            }
            next = *chosen.last().expect("count >= 1");
            // An optional step links by value; it does not order the
            // steps before it, which need only come before the next one.
            if !step.optional {
                bound = next;
                shares = step.shares_event;
            }
        }
        let mut chosen: Vec<Kept> = chosen.into_iter().map(|h| h.kept.clone()).collect();
        chosen.sort_by(|a, b| (a.time(), a.id()).cmp(&(b.time(), b.id())));
        // An event that was two steps is one piece of evidence.
        chosen.dedup_by(|a, b| (a.time(), a.id()) == (b.time(), b.id()));
        for q in self.first.iter_mut().chain(&mut self.rest) {
            q.clear();
        }
        let count = chosen.len() as u64;
        Some(Trigger {
            evidence: chosen.into_iter().map(EvidenceItem::Kept).collect(),
            count,
            window: None,
        })
    }
}

/// Moves events from `from` (newest first) into `chosen` until their
/// weights reach `need`; whether they did.
fn take_weighed<'a>(
    chosen: &mut Vec<&'a Held>,
    from: impl Iterator<Item = &'a Held>,
    need: usize,
) -> bool {
    let mut sum = 0;
    for h in from {
        if sum >= need {
            break;
        }
        sum += h.kept.weight() as usize;
        chosen.push(h);
    }
    sum >= need
}
