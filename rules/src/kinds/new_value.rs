//! new_value: the first time a value of a field is seen for a key, once the
//! key has been learned for `learning` (values seen while learning are
//! remembered silently). Each key remembers at most `max_values` values.

use std::collections::HashSet;

use event::Event;

use super::{Touched, Trigger};
use crate::field::FieldRef;

#[derive(Debug)]
pub(crate) struct NewValueSpec {
    pub(crate) field: FieldRef,
    pub(crate) learning: i64,
    pub(crate) forget: i64,
    pub(crate) max_values: usize,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct NewValueState {
    first: i64,
    seen: HashSet<u64>,
    last: i64,
}

impl Touched for NewValueState {
    fn last(&self) -> i64 {
        self.last
    }
}

impl NewValueState {
    pub(crate) fn new(t: i64) -> Self {
        NewValueState {
            first: t,
            seen: HashSet::new(),
            last: t,
        }
    }

    pub(crate) fn on_event(&mut self, spec: &NewValueSpec, e: &Event) -> Option<Trigger> {
        let v = spec.field.get(e)?;
        self.last = self.last.max(e.time);
        let text = v.to_text();
        let h = xxhash_rust::xxh3::xxh3_64(text.to_ascii_lowercase().as_bytes());
        if self.seen.contains(&h) || self.seen.len() >= spec.max_values {
            return None;
        }
        self.seen.insert(h);
        (e.time - self.first >= spec.learning).then(Trigger::single)
    }
}
