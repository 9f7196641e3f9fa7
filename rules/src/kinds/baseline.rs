//! baseline: per key, the amount (event count, or the sum of a numeric field
//! such as `tokens_out`) in the last `window` against an exponentially
//! weighted mean of that key's earlier fixed windows. Fires when the amount
//! exceeds `max(floor, factor * mean)`, once the key is older than `warmup`.
//!
//! The usual rate is learnt over fixed windows (hours from :00 for `1h`); the
//! amount judged slides, so a spike that straddles two of them (3M tokens
//! from 10:30 to 11:25) is seen whole, not as two halves under the bar.
//!
//! A mean over every window, idle ones included, makes a daily job look
//! like a spike every day: with `peak_factor` the amount must also exceed
//! that many times the key's largest amount on any earlier day of the
//! history. With `per`, each value of a field (the reporting source) has its
//! own amount and rate, so a call reported by two observers counts once.

use std::collections::VecDeque;

use event::Event;

use super::{part_of, EvidenceItem, Touched, Trigger};
use crate::field::FieldRef;
use crate::predicate::CondError;
use crate::rule::{BaselineDoc, Dur};

const NS_PER_SEC: i64 = 1_000_000_000;

#[derive(Debug)]
pub(crate) struct BaselineSpec {
    pub(crate) window: i64,
    pub(crate) history: i64,
    /// Weight of the newest window in the mean: `window / history`.
    alpha: f64,
    pub(crate) factor: f64,
    pub(crate) floor: f64,
    pub(crate) warmup: i64,
    pub(crate) sum: Option<FieldRef>,
    pub(crate) per: Option<FieldRef>,
    pub(crate) peak_factor: Option<f64>,
}

impl BaselineSpec {
    /// `window` comes from the enclosing threshold when nested in one.
    pub(crate) fn compile(
        d: &BaselineDoc,
        window: Option<i64>,
        path: &str,
    ) -> Result<BaselineSpec, CondError> {
        let bad = |field: &str, msg: &str| CondError {
            path: format!("{path}.{field}"),
            message: msg.to_string(),
            needle: Some(format!("{field}:")),
        };
        let nested = window.is_some();
        let window = match (window, d.window) {
            (Some(w), None) => w,
            (None, Some(w)) => w.ns(),
            (Some(_), Some(_)) => {
                return Err(bad(
                    "window",
                    "a baseline inside a threshold uses the threshold's window",
                ))
            }
            (None, None) => return Err(bad("window", "a baseline needs a `window`")),
        };
        if window <= 0 {
            return Err(bad("window", "window must be positive"));
        }
        let history = d.history.map(Dur::ns).unwrap_or(7 * 86_400 * NS_PER_SEC);
        if history < window {
            return Err(bad("history", "history must be at least one window"));
        }
        let factor = d.factor.unwrap_or(3.0);
        if factor.is_nan() || factor <= 1.0 {
            return Err(bad("factor", "factor must be greater than 1"));
        }
        let field = |name: &Option<String>, key: &str| match name {
            Some(s) => FieldRef::parse(s)
                .map(Some)
                .ok_or_else(|| bad(key, &format!("unknown field `{s}`"))),
            None => Ok(None),
        };
        let sum = field(&d.sum, "sum")?;
        let per = field(&d.per, "per")?;
        if let Some(p) = d.peak_factor {
            if p.is_nan() || p < 1.0 {
                return Err(bad("peak_factor", "peak_factor must be at least 1"));
            }
        }
        if nested && (per.is_some() || d.peak_factor.is_some()) {
            let key = if per.is_some() { "per" } else { "peak_factor" };
            return Err(bad(
                key,
                "a baseline inside a threshold counts as the threshold does: `per` and `peak_factor` belong to the baseline kind",
            ));
        }
        Ok(BaselineSpec {
            window,
            history,
            alpha: window as f64 / history as f64,
            factor,
            floor: d.floor.unwrap_or(10.0),
            warmup: d.warmup.map(Dur::ns).unwrap_or(86_400 * NS_PER_SEC),
            sum,
            per,
            peak_factor: d.peak_factor,
        })
    }

    pub(crate) fn retention(&self) -> i64 {
        self.history
    }

    /// The amount the current window must reach to be unusual, once warm.
    pub(crate) fn required(&self, r: &Rate, now: i64) -> Option<f64> {
        if now - r.first < self.warmup {
            return None;
        }
        Some(self.floor.max(self.factor * r.mean))
    }
}

/// A key's windowed rate: current window and the mean of earlier ones.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Rate {
    first: i64,
    bucket: i64,
    pub(crate) current: f64,
    pub(crate) mean: f64,
    windows: u32,
}

impl Rate {
    pub(crate) fn new(t: i64) -> Rate {
        Rate {
            first: t,
            bucket: i64::MIN,
            current: 0.0,
            mean: 0.0,
            windows: 0,
        }
    }

    fn close(&mut self, alpha: f64, amount: f64) {
        self.windows = self.windows.saturating_add(1);
        let a = alpha.max(1.0 / f64::from(self.windows));
        self.mean = self.mean * (1.0 - a) + amount * a;
    }

    /// Closes `k` empty windows in O(1): while the weight is `1/n` the mean
    /// scales by `n0 / (n0 + k)`; once it is `alpha` it decays geometrically.
    fn close_empty(&mut self, alpha: f64, k: i64) {
        if k <= 0 {
            return;
        }
        let n0 = i64::from(self.windows);
        let switch = (1.0 / alpha).floor() as i64;
        let k1 = k.min((switch - n0).max(0));
        if k1 > 0 {
            self.mean *= n0 as f64 / (n0 + k1) as f64;
        }
        let k2 = k - k1;
        if k2 > 0 {
            self.mean *= (1.0 - alpha).powi(k2.min(i64::from(i32::MAX)) as i32);
        }
        self.windows = u32::try_from(n0 + k).unwrap_or(u32::MAX);
    }

    pub(crate) fn add(&mut self, spec: &BaselineSpec, t: i64, amount: f64) {
        let b = t - t.rem_euclid(spec.window);
        if self.bucket == i64::MIN {
            self.bucket = b;
        } else if b > self.bucket {
            let gap = (b - self.bucket) / spec.window;
            // Close the finished window, then the empty ones in between. The
            // weight is never below 1/n, so early on the mean is the plain
            // average of the windows seen instead of starting from zero.
            self.close(spec.alpha, self.current);
            self.close_empty(spec.alpha, gap - 1);
            self.bucket = b;
            self.current = 0.0;
        }
        self.current += amount;
    }
}

/// How long the ids of counted events are kept to recognize a late copy
/// (senders give up retrying well before), and how many at most per key.
const COPIES_WITHIN: i64 = 15 * 60 * NS_PER_SEC;
const MAX_COUNTED: usize = 4096;

/// Slots per window of the sliding amount: a minute for an hour.
const SLOTS: i64 = 60;
const DAY: i64 = 86_400 * NS_PER_SEC;
/// Days of peaks kept at most, whatever the history.
const MAX_PEAK_DAYS: usize = 31;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct BaselineState {
    rate: Rate,
    /// The amount of each of the last [`SLOTS`] slots of `window / SLOTS`
    /// that had any, oldest first: `(slot index, amount)`.
    recent: VecDeque<(i64, f64)>,
    /// The sum of `recent`.
    sum: f64,
    fired: i64,
    last: i64,
    /// With `peak_factor`: the largest amount of each earlier day (UTC) of
    /// the history that had any, oldest first, and today's so far.
    peaks: VecDeque<(i64, f64)>,
    today: (i64, f64),
    /// With `per`: one state for each value of that field (value hash).
    parts: Vec<(u64, BaselineState)>,
    /// The events counted in the last 15 minutes (or window), as `(time,
    /// id hash)`, oldest first: a copy arriving after the allowed lateness
    /// (a sender's retry) is recognized and not counted again.
    counted: VecDeque<(i64, u64)>,
}

impl Touched for BaselineState {
    fn last(&self) -> i64 {
        self.last
    }
}

impl BaselineState {
    pub(crate) fn new(t: i64) -> Self {
        BaselineState {
            rate: Rate::new(t),
            recent: VecDeque::new(),
            sum: 0.0,
            fired: i64::MIN,
            last: t,
            peaks: VecDeque::new(),
            today: (i64::MIN, 0.0),
            parts: Vec::new(),
            counted: VecDeque::new(),
        }
    }

    /// The largest amount of the past days of the history (not today's).
    fn usual_peak(&mut self, spec: &BaselineSpec, t: i64, amount: f64) -> Option<f64> {
        let day = t.div_euclid(DAY);
        if day < self.today.0 {
            // Out of order, from an earlier day: judged against the days
            // before it, and no day's peak changes.
            let days = (spec.history / DAY).max(1);
            return self
                .peaks
                .iter()
                .filter(|&&(d, _)| d < day && d >= day - days)
                .map(|&(_, a)| a)
                .reduce(f64::max);
        }
        if self.today.0 != day {
            if self.today.0 != i64::MIN {
                self.peaks.push_back(self.today);
            }
            self.today = (day, 0.0);
        }
        let days = (spec.history / DAY).max(1);
        while self
            .peaks
            .front()
            .is_some_and(|&(d, _)| d < day - days || self.peaks.len() > MAX_PEAK_DAYS)
        {
            self.peaks.pop_front();
        }
        let peak = self.peaks.iter().map(|&(_, a)| a).reduce(f64::max);
        self.today.1 = self.today.1.max(amount);
        peak
    }

    /// Adds `amount` at `t` and returns the amount of the window ending at
    /// `t`, to the slot: the slots kept span between `window - slot` and
    /// `window`, and always the whole of the fixed window `t` falls in.
    fn slide(&mut self, spec: &BaselineSpec, t: i64, amount: f64) -> f64 {
        let slot = t.div_euclid((spec.window / SLOTS).max(1));
        if let Some(&(newest, _)) = self.recent.back() {
            if slot < newest {
                return self.slide_late(slot, amount);
            }
        }
        let mut dropped = false;
        while self.recent.front().is_some_and(|&(s, _)| s <= slot - SLOTS) {
            self.recent.pop_front();
            dropped = true;
        }
        match self.recent.back_mut() {
            Some((s, a)) if *s == slot => *a += amount,
            _ => self.recent.push_back((slot, amount)),
        }
        // Summed afresh (at most SLOTS terms) when a slot left, rather than
        // subtracted: no drift.
        self.sum = if dropped {
            self.recent.iter().map(|&(_, a)| a).sum()
        } else {
            self.sum + amount
        };
        self.sum
    }

    /// [`Self::slide`] for an amount that arrived out of order, at a slot
    /// behind the newest: added to its slot while that slot is kept, and the
    /// amount of the window ending at that slot returned.
    fn slide_late(&mut self, slot: i64, amount: f64) -> f64 {
        let newest = self.recent.back().map_or(slot, |&(s, _)| s);
        if slot <= newest - SLOTS {
            // The slots around it are gone: it is judged on its own.
            return amount;
        }
        let at = self.recent.partition_point(|&(s, _)| s < slot);
        match self.recent.get_mut(at) {
            Some((s, a)) if *s == slot => *a += amount,
            _ => self.recent.insert(at, (slot, amount)),
        }
        self.sum += amount;
        self.recent
            .iter()
            .take_while(|&&(s, _)| s <= slot)
            .map(|&(_, a)| a)
            .sum()
    }

    pub(crate) fn on_event(&mut self, spec: &BaselineSpec, e: &Event) -> Option<Trigger> {
        let Some(per) = &spec.per else {
            return self.judge(spec, e);
        };
        self.last = self.last.max(e.time);
        part_of(&mut self.parts, per, e, spec.retention(), || {
            BaselineState::new(e.time)
        })
        .judge(spec, e)
    }

    /// One amount and rate (the whole key's, or one `per` value's).
    fn judge(&mut self, spec: &BaselineSpec, e: &Event) -> Option<Trigger> {
        let id = if e.event_id.is_empty() {
            None
        } else {
            Some(xxhash_rust::xxh3::xxh3_64(e.event_id.as_bytes()))
        };
        // Events come in time order, except those that arrived late: only
        // an event not after the newest can be a copy of one counted.
        if e.time <= self.last && id.is_some_and(|h| self.counted.iter().any(|&(_, c)| c == h)) {
            return None;
        }
        if let Some(h) = id {
            let horizon = self
                .last
                .max(e.time)
                .saturating_sub(spec.window.min(COPIES_WITHIN));
            while self.counted.front().is_some_and(|&(t, _)| t <= horizon)
                || self.counted.len() >= MAX_COUNTED
            {
                self.counted.pop_front();
            }
            self.counted.push_back((e.time, h));
        }
        let amount = match &spec.sum {
            Some(f) => f.get(e).and_then(|v| v.to_f64()).unwrap_or(0.0),
            None => 1.0,
        };
        self.last = self.last.max(e.time);
        self.rate.add(spec, e.time, amount);
        let amount = self.slide(spec, e.time, amount);
        let peak = match spec.peak_factor {
            Some(f) => self.usual_peak(spec, e.time, amount).map(|p| p * f),
            None => None,
        };
        let required = spec.required(&self.rate, e.time)?.max(peak.unwrap_or(0.0));
        // At most once per window: one spike is one alert.
        let rested = self.fired == i64::MIN || e.time - self.fired >= spec.window;
        if amount > required && rested {
            self.fired = e.time;
            return Some(Trigger {
                evidence: vec![EvidenceItem::Current],
                count: amount as u64,
                window: None,
            });
        }
        None
    }
}
