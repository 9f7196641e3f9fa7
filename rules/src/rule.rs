//! A rule as written (serde structs that reject unknown fields) and as
//! compiled (typed predicates, nanosecond durations, kind prefilter mask).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use event::{Event, Severity};
use serde::{Deserialize, Deserializer, Serialize};
use serde_yaml::Value;

use crate::config::{BusinessHours, Lists};
use crate::field::FieldRef;
use crate::kinds::baseline::BaselineSpec;
use crate::kinds::inactivity::InactivitySpec;
use crate::kinds::new_value::NewValueSpec;
use crate::kinds::sequence::{Bind, SequenceSpec, Step};
use crate::kinds::threshold::{ThresholdSpec, Window};
use crate::kinds::Trigger;
use crate::kinds::{Weight, WeightSource, MAX_WEIGHT};
use crate::list::ListMatcher;
use crate::predicate::{compile, CompileEnv, CondError, Pred};

/// A duration written `30s`, `5m`, `2h`, `7d`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::config::duration_text::deserialize(d).map(Dur)
    }
}

impl Dur {
    pub(crate) fn ns(self) -> i64 {
        i64::try_from(self.0.as_nanos()).unwrap_or(i64::MAX / 4)
    }
}

/// The kinds of rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// One event satisfies the condition.
    #[default]
    Match,
    /// Count (or distinct count) per key over a sliding window.
    Threshold,
    /// Ordered steps per key within a span.
    Sequence,
    /// Activity too long after the last reset event, per key.
    Inactivity,
    /// First time a value is seen for a key.
    NewValue,
    /// Rate per key well above its own recent rate.
    Baseline,
}

impl fmt::Display for RuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so `{:<10}` aligns columns in `vigil rules list`.
        f.pad(match self {
            RuleKind::Match => "match",
            RuleKind::Threshold => "threshold",
            RuleKind::Sequence => "sequence",
            RuleKind::Inactivity => "inactivity",
            RuleKind::NewValue => "new_value",
            RuleKind::Baseline => "baseline",
        })
    }
}

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleDoc {
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    pub severity: Severity,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub falsepositives: Vec<String>,
    #[serde(default)]
    pub references: Vec<String>,
    #[serde(default)]
    pub key: Vec<String>,
    #[serde(default)]
    pub fallback_key: Vec<String>,
    #[serde(default)]
    pub suppress: Option<Dur>,
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub kind: RuleKind,
    #[serde(default)]
    pub requires_lists: Vec<String>,
    #[serde(default)]
    pub condition: Option<Value>,
    #[serde(default)]
    pub threshold: Option<ThresholdDoc>,
    #[serde(default)]
    pub sequence: Option<SequenceDoc>,
    #[serde(default)]
    pub inactivity: Option<InactivityDoc>,
    #[serde(default)]
    pub new_value: Option<NewValueDoc>,
    #[serde(default)]
    pub baseline: Option<BaselineDoc>,
    #[serde(default)]
    pub tests: Vec<TestDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ThresholdDoc {
    pub count: usize,
    pub window: Dur,
    #[serde(default)]
    pub distinct: Option<String>,
    #[serde(default)]
    pub per: Option<String>,
    #[serde(default)]
    pub baseline: Option<BaselineDoc>,
    /// How many actions one event stands for (a batch call's list of ids).
    #[serde(default)]
    pub weight: Option<WeightDoc>,
    /// Longer windows with counts of their own (a slow burst).
    #[serde(default)]
    pub also: Vec<AlsoDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AlsoDoc {
    pub count: usize,
    pub window: Dur,
    /// Only events that also meet this count in the window.
    #[serde(default)]
    pub condition: Option<Value>,
}

/// `weight:` of a threshold or a sequence step: a field, or a list of
/// fields and `{when: condition, weight: N}` cases, the first that applies.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum WeightDoc {
    One(String),
    Many(Vec<WeightEntryDoc>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum WeightEntryDoc {
    Field(String),
    When(WeightCaseDoc),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WeightCaseDoc {
    pub when: Value,
    pub weight: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BaselineDoc {
    #[serde(default)]
    pub window: Option<Dur>,
    #[serde(default)]
    pub history: Option<Dur>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub floor: Option<f64>,
    #[serde(default)]
    pub warmup: Option<Dur>,
    #[serde(default)]
    pub sum: Option<String>,
    /// Each value of this field (the reporting source) has its own amount
    /// and usual rate; the baseline kind only.
    #[serde(default)]
    pub per: Option<String>,
    /// Also above this many times the key's largest window of the past
    /// days; the baseline kind only.
    #[serde(default)]
    pub peak_factor: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SequenceDoc {
    pub within: Dur,
    pub steps: Vec<StepDoc>,
    #[serde(default)]
    pub until: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StepDoc {
    #[serde(default)]
    pub name: Option<String>,
    pub condition: Value,
    #[serde(default = "one")]
    pub count: usize,
    /// A value of the step's event that joins it to a neighbouring step.
    #[serde(default)]
    pub bind: Option<BindDoc>,
    /// Needed only when the next step's event binds a value.
    #[serde(default)]
    pub optional: bool,
    /// How many of `count` one event stands for (a read of a whole folder).
    #[serde(default)]
    pub weight: Option<WeightDoc>,
    /// The step's event may also be one of the step before it (one command
    /// that archives a folder and uploads the archive).
    #[serde(default)]
    pub shares_event: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BindDoc {
    pub field: String,
    pub regex: String,
    /// The value when the regex matches without its `value` group.
    #[serde(default)]
    pub default: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InactivityDoc {
    pub after: Dur,
    pub reset: Value,
    pub activity: Value,
    #[serde(default)]
    pub until: Option<Value>,
    /// Activity of a key that never saw a reset starts its clock when it matches.
    #[serde(default)]
    pub start: Option<Value>,
    #[serde(default)]
    pub ttl: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewValueDoc {
    pub field: String,
    #[serde(default)]
    pub learning: Option<Dur>,
    #[serde(default)]
    pub forget: Option<Dur>,
    #[serde(default)]
    pub max_values: Option<usize>,
}

/// One entry of a rule's `tests:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TestDoc {
    pub name: String,
    #[serde(default)]
    pub config: Option<TestConfig>,
    #[serde(default)]
    pub base_time: Option<String>,
    pub events: Vec<Value>,
    #[serde(default)]
    pub expect: Option<Vec<ExpectDoc>>,
    #[serde(default)]
    pub expect_count: Option<usize>,
}

/// The vigil.yaml fragment a test runs under.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TestConfig {
    #[serde(default)]
    pub lists: Option<Lists>,
    #[serde(default)]
    pub business_hours: Option<BusinessHours>,
}

/// What an expected alert must carry; absent fields are not checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExpectDoc {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub key: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub count: Option<u64>,
    #[serde(default)]
    pub suppressed: Option<u64>,
    #[serde(default)]
    pub summary_contains: Option<String>,
}

/// What `vigil rules list` shows about a loaded rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleInfo {
    pub id: String,
    pub title: String,
    pub kind: RuleKind,
    pub severity: Severity,
    pub tags: Vec<String>,
    pub description: String,
    /// Known benign causes, for the analyst.
    pub falsepositives: Vec<String>,
    /// Links for the analyst.
    pub references: Vec<String>,
    /// File the rule came from (`<default>/name.yaml` for the embedded pack).
    pub source: String,
    /// Line of the rule's document in that file.
    pub line: usize,
    pub enabled: bool,
    /// Why an enabled rule does not run (e.g. a required list is empty).
    pub inactive_reason: Option<String>,
}

impl RuleInfo {
    /// True when the engine evaluates this rule.
    pub fn is_active(&self) -> bool {
        self.enabled && self.inactive_reason.is_none()
    }
}

#[derive(Debug)]
pub(crate) enum Spec {
    Match,
    Threshold(ThresholdSpec),
    Sequence(SequenceSpec),
    Inactivity(Box<InactivitySpec>),
    NewValue(NewValueSpec),
    Baseline(BaselineSpec),
}

#[derive(Debug, Clone)]
pub(crate) enum Seg {
    Lit(String),
    Field(FieldRef),
    Count,
    /// The window a threshold's count is over (`5 minutes`, `1 hour`).
    Window,
    Title,
    /// `[ on host {host}]`: shown only when every field inside is present.
    Optional(Vec<Seg>),
}

fn render(segs: &[Seg], rule: &CompiledRule, e: &Event, t: &Trigger, out: &mut String) {
    for s in segs {
        match s {
            Seg::Lit(t) => out.push_str(t),
            Seg::Field(f) => match f.get(e) {
                Some(v) => out.push_str(&v.to_text()),
                None => out.push('-'),
            },
            Seg::Count => out.push_str(&t.count.to_string()),
            Seg::Window => match t.window {
                Some(w) => out.push_str(&span_text(w)),
                None => out.push('-'),
            },
            Seg::Title => out.push_str(&rule.info.title),
            Seg::Optional(inner) => {
                let present = inner.iter().all(|s| match s {
                    Seg::Field(f) => f.get(e).is_some(),
                    _ => true,
                });
                if present {
                    render(inner, rule, e, t, out);
                }
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct CompiledRule {
    pub info: RuleInfo,
    pub key: Vec<FieldRef>,
    pub key_names: Vec<String>,
    /// The key of events that lack a field of `key` (empty: such events
    /// have no key).
    pub fallback_key: Vec<FieldRef>,
    pub fallback_key_names: Vec<String>,
    pub suppress_ns: i64,
    pub summary: Vec<Seg>,
    pub condition: Option<Pred>,
    pub spec: Spec,
    /// Bit per `EventKind` this rule can use; the engine skips the rest.
    pub kinds: u32,
    /// Hash of the rule's text: state snapshotted under another text is not restored.
    pub fingerprint: u64,
}

impl CompiledRule {
    pub(crate) fn render_summary(&self, e: &Event, t: &Trigger) -> String {
        let mut out = String::new();
        render(&self.summary, self, e, t, &mut out);
        out
    }
}

const ALL_KINDS: u32 = u32::MAX;

fn cerr(path: &str, message: impl Into<String>, needle: Option<String>) -> CondError {
    CondError {
        path: path.into(),
        message: message.into(),
        needle,
    }
}

fn field(name: &str, path: &str) -> Result<FieldRef, CondError> {
    FieldRef::parse(name).ok_or_else(|| {
        cerr(
            path,
            format!("unknown field `{name}`"),
            Some(name.to_string()),
        )
    })
}

/// A window as a summary names it: `5 minutes`, `1 hour`, `90 seconds`.
fn span_text(ns: i64) -> String {
    let s = ns / 1_000_000_000;
    let (n, unit) = if s % 86_400 == 0 && s > 0 {
        (s / 86_400, "day")
    } else if s % 3_600 == 0 && s > 0 {
        (s / 3_600, "hour")
    } else if s % 60 == 0 && s > 0 {
        (s / 60, "minute")
    } else {
        (s, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// Compiles a `weight:` (see [`WeightDoc`]).
fn compile_weight(
    doc: &WeightDoc,
    path: &str,
    cond: &dyn Fn(&Value, &str) -> Result<Pred, CondError>,
) -> Result<Weight, CondError> {
    let one;
    let entries: &[WeightEntryDoc] = match doc {
        WeightDoc::One(f) => {
            one = [WeightEntryDoc::Field(f.clone())];
            &one
        }
        WeightDoc::Many(list) => list,
    };
    if entries.is_empty() {
        return Err(cerr(
            path,
            "a weight needs a field or a case",
            Some("weight:".into()),
        ));
    }
    let mut sources = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let here = format!("{path}[{i}]");
        sources.push(match entry {
            WeightEntryDoc::Field(f) => WeightSource::Field(field(f, &here)?),
            WeightEntryDoc::When(c) => {
                if c.weight == 0 || c.weight > u64::from(MAX_WEIGHT) {
                    return Err(cerr(
                        &format!("{here}.weight"),
                        format!("a weight is from 1 to {MAX_WEIGHT}"),
                        Some("weight:".into()),
                    ));
                }
                WeightSource::When(cond(&c.when, &format!("{here}.when"))?, c.weight as u32)
            }
        });
    }
    Ok(Weight { sources })
}

/// A summary template: `{field}` placeholders, `{count}`, `{title}`, and
/// optional parts in `[...]` that disappear when a field inside is missing.
fn parse_template(t: &str) -> Result<Vec<Seg>, CondError> {
    let mut segs = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('[') {
        segs.extend(parse_fields(&rest[..open])?);
        let Some(close) = rest[open..].find(']') else {
            return Err(cerr(
                "summary",
                "unclosed `[` in summary",
                Some("summary:".into()),
            ));
        };
        let inner = &rest[open + 1..open + close];
        if inner.contains('[') {
            return Err(cerr(
                "summary",
                "optional parts `[...]` do not nest",
                Some("summary:".into()),
            ));
        }
        segs.push(Seg::Optional(parse_fields(inner)?));
        rest = &rest[open + close + 1..];
    }
    if rest.contains(']') {
        return Err(cerr(
            "summary",
            "`]` without `[` in summary",
            Some("summary:".into()),
        ));
    }
    segs.extend(parse_fields(rest)?);
    Ok(segs)
}

fn parse_fields(t: &str) -> Result<Vec<Seg>, CondError> {
    let mut segs = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            segs.push(Seg::Lit(rest[..open].to_string()));
        }
        let Some(close) = rest[open..].find('}') else {
            return Err(cerr(
                "summary",
                "unclosed `{` in summary",
                Some("summary:".into()),
            ));
        };
        let name = &rest[open + 1..open + close];
        segs.push(match name {
            "count" => Seg::Count,
            "window" => Seg::Window,
            "title" => Seg::Title,
            _ => Seg::Field(field(name, "summary")?),
        });
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        segs.push(Seg::Lit(rest.to_string()));
    }
    Ok(segs)
}

fn kinds_of(p: &Pred) -> u32 {
    p.kinds().unwrap_or(ALL_KINDS)
}

/// Compiles one rule document.
pub(crate) fn compile_rule(
    doc: &RuleDoc,
    source: &str,
    line: usize,
    lists: &HashMap<String, Arc<ListMatcher>>,
) -> Result<CompiledRule, CondError> {
    let env = CompileEnv { lists };
    if doc.id.trim().is_empty() || doc.id.contains(char::is_whitespace) {
        return Err(cerr(
            "id",
            "rule id must be a non-empty word",
            Some("id:".into()),
        ));
    }
    let key = doc
        .key
        .iter()
        .map(|k| field(k, "key"))
        .collect::<Result<Vec<_>, _>>()?;
    let fallback_key = doc
        .fallback_key
        .iter()
        .map(|k| field(k, "fallback_key"))
        .collect::<Result<Vec<_>, _>>()?;
    if !fallback_key.is_empty() && key.is_empty() {
        return Err(cerr(
            "fallback_key",
            "a fallback key needs a `key:` to fall back from",
            Some("fallback_key:".into()),
        ));
    }
    if !fallback_key.is_empty() && fallback_key == key {
        return Err(cerr(
            "fallback_key",
            "the fallback key names the same fields as `key:`",
            Some("fallback_key:".into()),
        ));
    }
    let cond = |v: &Value, path: &str| compile(v, path, &env);
    let condition = doc
        .condition
        .as_ref()
        .map(|c| cond(c, "condition"))
        .transpose()?;
    let need_condition = |what: &str| -> Result<(), CondError> {
        if condition.is_none() {
            return Err(cerr(
                "condition",
                format!("a {what} rule needs a `condition`"),
                Some("id:".into()),
            ));
        }
        Ok(())
    };
    let blocks = [
        ("threshold", doc.threshold.is_some(), RuleKind::Threshold),
        ("sequence", doc.sequence.is_some(), RuleKind::Sequence),
        ("inactivity", doc.inactivity.is_some(), RuleKind::Inactivity),
        ("new_value", doc.new_value.is_some(), RuleKind::NewValue),
        ("baseline", doc.baseline.is_some(), RuleKind::Baseline),
    ];
    for (name, present, kind) in blocks {
        if present && kind != doc.kind {
            return Err(cerr(
                name,
                format!("`{name}:` block given but the rule's kind is {}", doc.kind),
                Some(format!("{name}:")),
            ));
        }
        if !present && kind == doc.kind {
            return Err(cerr(
                name,
                format!("a {} rule needs a `{name}:` block", doc.kind),
                Some("kind:".into()),
            ));
        }
    }
    let base_kinds = condition.as_ref().map(kinds_of).unwrap_or(ALL_KINDS);
    let (spec, kinds) = match doc.kind {
        RuleKind::Match => {
            need_condition("match")?;
            (Spec::Match, base_kinds)
        }
        RuleKind::Threshold => {
            need_condition("threshold")?;
            let t = doc.threshold.as_ref().expect("checked above");
            if t.count == 0 {
                return Err(cerr(
                    "threshold.count",
                    "count must be at least 1",
                    Some("count:".into()),
                ));
            }
            let distinct = t
                .distinct
                .as_deref()
                .map(|d| field(d, "threshold.distinct"))
                .transpose()?;
            let per = t
                .per
                .as_deref()
                .map(|d| field(d, "threshold.per"))
                .transpose()?;
            let baseline = t
                .baseline
                .as_ref()
                .map(|b| BaselineSpec::compile(b, Some(t.window.ns()), "threshold.baseline"))
                .transpose()?;
            if t.weight.is_some() && distinct.is_some() {
                return Err(cerr(
                    "threshold.weight",
                    "a distinct count counts values, not weighed actions: give `weight` or `distinct`, not both",
                    Some("weight:".into()),
                ));
            }
            let weight = t
                .weight
                .as_ref()
                .map(|w| compile_weight(w, "threshold.weight", &cond))
                .transpose()?;
            if !t.also.is_empty() && distinct.is_some() {
                return Err(cerr(
                    "threshold.also",
                    "longer windows count events, not distinct values: give `also` or `distinct`, not both",
                    Some("also:".into()),
                ));
            }
            if t.also.len() > 64 {
                return Err(cerr(
                    "threshold.also",
                    "at most 64 longer windows",
                    Some("also:".into()),
                ));
            }
            let mut also = Vec::new();
            for (i, w) in t.also.iter().enumerate() {
                if w.count == 0 {
                    return Err(cerr(
                        &format!("threshold.also[{i}].count"),
                        "count must be at least 1",
                        Some("count:".into()),
                    ));
                }
                let when = w
                    .condition
                    .as_ref()
                    .map(|c| cond(c, &format!("threshold.also[{i}].condition")))
                    .transpose()?;
                also.push(Window {
                    count: w.count,
                    window: w.window.ns(),
                    when,
                });
            }
            (
                Spec::Threshold(ThresholdSpec {
                    count: t.count,
                    window: t.window.ns(),
                    distinct,
                    per,
                    baseline,
                    weight,
                    also,
                }),
                base_kinds,
            )
        }
        RuleKind::Baseline => {
            need_condition("baseline")?;
            let b = doc.baseline.as_ref().expect("checked above");
            (
                Spec::Baseline(BaselineSpec::compile(b, None, "baseline")?),
                base_kinds,
            )
        }
        RuleKind::NewValue => {
            need_condition("new_value")?;
            let n = doc.new_value.as_ref().expect("checked above");
            (
                Spec::NewValue(NewValueSpec {
                    field: field(&n.field, "new_value.field")?,
                    learning: n.learning.map(Dur::ns).unwrap_or(0),
                    forget: n.forget.map(Dur::ns).unwrap_or(30 * 86_400 * 1_000_000_000),
                    max_values: n.max_values.unwrap_or(1000),
                }),
                base_kinds,
            )
        }
        RuleKind::Sequence => {
            let s = doc.sequence.as_ref().expect("checked above");
            if s.steps.len() < 2 {
                return Err(cerr(
                    "sequence.steps",
                    "a sequence needs at least two steps",
                    Some("steps:".into()),
                ));
            }
            let mut steps = Vec::new();
            let mut k = 0;
            for (i, st) in s.steps.iter().enumerate() {
                if st.count == 0 {
                    return Err(cerr(
                        &format!("sequence.steps[{i}].count"),
                        "count must be at least 1",
                        Some("count:".into()),
                    ));
                }
                let pred = cond(&st.condition, &format!("sequence.steps[{i}].condition"))?;
                k |= kinds_of(&pred);
                let here = format!("sequence.steps[{i}].bind");
                let bind = match &st.bind {
                    None => None,
                    Some(b) => {
                        if st.count != 1 {
                            return Err(cerr(
                                &here,
                                "a step that binds a value has count 1",
                                Some("bind:".into()),
                            ));
                        }
                        let pattern = crate::predicate::rule_regex(&b.regex).map_err(|e| {
                            cerr(
                                &format!("{here}.regex"),
                                format!("bad regex: {e}"),
                                Some(b.regex.clone()),
                            )
                        })?;
                        Some(Bind {
                            field: field(&b.field, &format!("{here}.field"))?,
                            has_group: pattern.capture_names().any(|n| n == Some("value")),
                            pattern,
                            default: b.default.as_deref().map(Box::from),
                        })
                    }
                };
                let weight = st
                    .weight
                    .as_ref()
                    .map(|w| compile_weight(w, &format!("sequence.steps[{i}].weight"), &cond))
                    .transpose()?;
                if weight.is_some() && bind.is_some() {
                    return Err(cerr(
                        &format!("sequence.steps[{i}].weight"),
                        "a step that binds a value has count 1: it has no use for a weight",
                        Some("weight:".into()),
                    ));
                }
                if st.shares_event && (i == 0 || st.optional) {
                    return Err(cerr(
                        &format!("sequence.steps[{i}].shares_event"),
                        "only a step after the first, and not an optional one, can share its event with the step before it",
                        Some("shares_event:".into()),
                    ));
                }
                steps.push(Step {
                    name: st.name.clone().unwrap_or_else(|| format!("step {}", i + 1)),
                    pred,
                    count: st.count,
                    bind,
                    optional: st.optional,
                    weight,
                    shares_event: st.shares_event,
                });
            }
            for (i, st) in s.steps.iter().enumerate().filter(|(_, st)| st.optional) {
                let next = s.steps.get(i + 1);
                let why = if i == 0 || next.is_none() {
                    Some("the first and the last step cannot be optional")
                } else if st.bind.is_none() || next.is_some_and(|n| n.bind.is_none() || n.optional)
                {
                    Some("an optional step binds a value, and so does the next step, which is not optional")
                } else {
                    None
                };
                if let Some(why) = why {
                    return Err(cerr(
                        &format!("sequence.steps[{i}].optional"),
                        why,
                        Some("optional:".into()),
                    ));
                }
            }
            let until = s
                .until
                .as_ref()
                .map(|u| cond(u, "sequence.until"))
                .transpose()?;
            if let Some(u) = &until {
                k |= kinds_of(u);
            }
            (
                Spec::Sequence(SequenceSpec {
                    within: s.within.ns(),
                    starts: steps.iter().enumerate().take(64).fold(1, |m, (i, st)| {
                        if st.optional {
                            m | 1 << i
                        } else {
                            m
                        }
                    }),
                    steps,
                    until,
                }),
                k & base_kinds,
            )
        }
        RuleKind::Inactivity => {
            let d = doc.inactivity.as_ref().expect("checked above");
            let reset = cond(&d.reset, "inactivity.reset")?;
            let activity = cond(&d.activity, "inactivity.activity")?;
            let until = d
                .until
                .as_ref()
                .map(|u| cond(u, "inactivity.until"))
                .transpose()?;
            let start = d
                .start
                .as_ref()
                .map(|s| cond(s, "inactivity.start"))
                .transpose()?;
            let mut k = kinds_of(&reset) | kinds_of(&activity);
            if let Some(u) = &until {
                k |= kinds_of(u);
            }
            let after = d.after.ns();
            let ttl = d
                .ttl
                .map(Dur::ns)
                .unwrap_or(after.saturating_mul(12).max(86_400 * 1_000_000_000));
            (
                Spec::Inactivity(Box::new(InactivitySpec {
                    after,
                    reset,
                    activity,
                    until,
                    start,
                    ttl,
                })),
                k & base_kinds,
            )
        }
    };
    let summary = match &doc.summary {
        Some(t) => parse_template(t)?,
        None => {
            let mut segs = vec![Seg::Title];
            for k in &key {
                segs.push(Seg::Lit(format!(", {}=", k.name())));
                segs.push(Seg::Field(k.clone()));
            }
            segs
        }
    };
    let mut inactive_reason = None;
    for l in &doc.requires_lists {
        match lists.get(l) {
            None => {
                return Err(cerr(
                    "requires_lists",
                    format!("unknown list `{l}`"),
                    Some(l.clone()),
                ))
            }
            Some(m) if m.is_empty() && inactive_reason.is_none() => {
                inactive_reason = Some(format!(
                    "list `{l}` is empty: configure it in vigil.yaml `lists:`"
                ));
            }
            _ => {}
        }
    }
    let suppress_ns = doc.suppress.map(Dur::ns).unwrap_or(3_600 * 1_000_000_000);
    Ok(CompiledRule {
        info: RuleInfo {
            id: doc.id.clone(),
            title: doc.title.clone(),
            kind: doc.kind,
            severity: doc.severity,
            tags: doc.tags.clone(),
            description: doc.description.clone(),
            falsepositives: doc.falsepositives.clone(),
            references: doc.references.clone(),
            source: source.to_string(),
            line,
            enabled: doc.enabled,
            inactive_reason,
        },
        key_names: key.iter().map(FieldRef::name).collect(),
        key,
        fallback_key_names: fallback_key.iter().map(FieldRef::name).collect(),
        fallback_key,
        suppress_ns,
        summary,
        condition,
        spec,
        kinds,
        fingerprint: 0,
    })
}
