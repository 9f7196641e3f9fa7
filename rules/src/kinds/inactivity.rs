//! inactivity: per key, an `activity` event more than `after` since the last
//! `reset` event fires, once per reset epoch. It fires on the activity itself
//! (the session is still running), not when the session ends. A key that has
//! never seen a reset does not fire (nobody is known to have been there),
//! unless its activity matches `start`: then its first such activity starts
//! the clock, as a reset would (a session that no human ever interacted with).

use event::Event;

use event::EventKind;

use super::{CompactId, EvidenceItem, Touched, Trigger};
use crate::predicate::{EvalEnv, Pred};

#[derive(Debug)]
pub(crate) struct InactivitySpec {
    pub(crate) after: i64,
    pub(crate) reset: Pred,
    pub(crate) activity: Pred,
    pub(crate) until: Option<Pred>,
    /// Activity that starts the clock of a key without a reset.
    pub(crate) start: Option<Pred>,
    /// How long a key is kept after its last event.
    pub(crate) ttl: i64,
}

/// Kept small on purpose: one per live session.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct InactivityState {
    /// The reset event, kept as id, time and kind only.
    reset_id: CompactId,
    reset_time: i64,
    last: i64,
    activity: u32,
    fired: bool,
    reset_kind: EventKind,
}

impl Touched for InactivityState {
    fn last(&self) -> i64 {
        self.last
    }
}

/// What an event means to an inactivity rule.
pub(crate) enum Role {
    None,
    Until,
    Reset,
    Activity,
}

impl InactivitySpec {
    pub(crate) fn role(&self, e: &Event, env: &EvalEnv) -> Role {
        if self.until.as_ref().is_some_and(|u| u.eval(e, env)) {
            Role::Until
        } else if self.reset.eval(e, env) {
            Role::Reset
        } else if self.activity.eval(e, env) {
            Role::Activity
        } else {
            Role::None
        }
    }
}

impl InactivityState {
    pub(crate) fn new_reset(e: &Event) -> Self {
        InactivityState {
            reset_id: CompactId::new(&e.event_id),
            reset_time: e.time,
            last: e.time,
            activity: 0,
            fired: false,
            reset_kind: e.kind,
        }
    }

    /// A reset older than the one held (it arrived after the allowed
    /// lateness) says nothing about the time since the newer one.
    pub(crate) fn reset(&mut self, e: &Event) {
        if e.time < self.reset_time {
            self.last = self.last.max(e.time);
            return;
        }
        let last = self.last.max(e.time);
        *self = InactivityState::new_reset(e);
        self.last = last;
    }

    pub(crate) fn on_activity(&mut self, spec: &InactivitySpec, e: &Event) -> Option<Trigger> {
        self.last = self.last.max(e.time);
        self.activity = self.activity.saturating_add(1);
        if self.fired || e.time - self.reset_time <= spec.after {
            return None;
        }
        self.fired = true;
        Some(Trigger {
            evidence: vec![
                EvidenceItem::Compact {
                    id: self.reset_id.to_string().into(),
                    time: self.reset_time,
                    kind: self.reset_kind,
                },
                EvidenceItem::Current,
            ],
            count: u64::from(self.activity),
            window: None,
        })
    }
}
