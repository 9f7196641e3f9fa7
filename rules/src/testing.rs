//! Rule tests, the way detection engineers work: every rule carries `tests:`
//! with example events (normalized form, RFC 3339 times or `at:` offsets from
//! `base_time`) and the alerts they must produce. [`run`] compiles each rule
//! alone under the test's own config fragment, feeds the events through a
//! fresh [`Engine`], and compares. `vigil rules test` prints the [`Report`].

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use event::{Alert, Event, EVENT_FIELDS};
use serde_yaml::{Mapping, Value};

use crate::config::{duration_text, EngineConfig, RulesContext};
use crate::load::{compile_parsed, parse_all, Parsed, ParsedRule};
use crate::rule::{ExpectDoc, TestDoc};
use crate::{Engine, RulesError};

/// The result of one test.
#[derive(Debug, Clone, PartialEq)]
pub struct TestOutcome {
    pub file: String,
    pub rule_id: String,
    pub test: String,
    pub passed: bool,
    /// Why it failed (empty when it passed).
    pub detail: String,
}

/// Every test's outcome, plus the rules that have none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub outcomes: Vec<TestOutcome>,
    /// Ids of loaded rules without a single test.
    pub untested: Vec<String>,
}

impl Report {
    /// Number of failed tests.
    pub fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| !o.passed).count()
    }

    /// Number of passed tests.
    pub fn passed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.passed).count()
    }

    /// Writes a pass/fail table, the failure details, and a closing
    /// `N passed, N failed` line.
    pub fn print_table(&self, w: &mut dyn io::Write) -> io::Result<()> {
        let rw = self
            .outcomes
            .iter()
            .map(|o| o.rule_id.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let tw = self
            .outcomes
            .iter()
            .map(|o| o.test.len())
            .max()
            .unwrap_or(4)
            .max(4);
        writeln!(w, "{:<6} {:<rw$} {:<tw$} FILE", "RESULT", "RULE", "TEST")?;
        for o in &self.outcomes {
            let r = if o.passed { "pass" } else { "FAIL" };
            writeln!(w, "{:<6} {:<rw$} {:<tw$} {}", r, o.rule_id, o.test, o.file)?;
        }
        for o in self.outcomes.iter().filter(|o| !o.passed) {
            writeln!(
                w,
                "\nFAIL {} / {}:\n  {}",
                o.rule_id,
                o.test,
                o.detail.replace('\n', "\n  ")
            )?;
        }
        if !self.untested.is_empty() {
            writeln!(w, "\nrules without tests: {}", self.untested.join(", "))?;
        }
        writeln!(w, "\n{} passed, {} failed", self.passed(), self.failed())
    }
}

/// Runs the tests of the default pack (when `default_pack`) and of the rule
/// files in `extra_paths`. `ctx` is the base config; each test's `config:`
/// fragment replaces lists by name and business hours as a whole.
pub fn run(
    default_pack: bool,
    extra_paths: &[PathBuf],
    ctx: &RulesContext,
) -> Result<Report, RulesError> {
    let parsed = parse_all(default_pack, extra_paths)?;
    // The whole set must compile first: tests of a broken pack mean nothing.
    compile_parsed(&parsed, ctx, None).map_err(RulesError::Invalid)?;
    let mut report = Report::default();
    for r in &parsed.rules {
        if r.doc.tests.is_empty() {
            report.untested.push(r.doc.id.clone());
        }
        for t in &r.doc.tests {
            let (passed, detail) = match run_one(&parsed, r, t, ctx) {
                Ok(()) => (true, String::new()),
                Err(d) => (false, d),
            };
            report.outcomes.push(TestOutcome {
                file: r.file.clone(),
                rule_id: r.doc.id.clone(),
                test: t.name.clone(),
                passed,
                detail,
            });
        }
    }
    Ok(report)
}

/// Static checks of a test entry (used by `check`).
pub(crate) fn validate_test(t: &TestDoc) -> Result<(), String> {
    if t.expect.is_none() && t.expect_count.is_none() {
        return Err("give `expect` (alerts that must fire, [] for none) or `expect_count`".into());
    }
    test_events(t).map(|_| ())
}

fn run_one(parsed: &Parsed, r: &ParsedRule, t: &TestDoc, ctx: &RulesContext) -> Result<(), String> {
    validate_test(t)?;
    let mut ctx = ctx.clone();
    if let Some(c) = &t.config {
        if let Some(l) = &c.lists {
            for (k, v) in &l.0 {
                ctx.lists.0.insert(k.clone(), v.clone());
            }
        }
        if let Some(bh) = &c.business_hours {
            ctx.business_hours = bh.clone();
        }
    }
    let mut set = compile_parsed(parsed, &ctx, Some(&r.doc.id)).map_err(|d| {
        d.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    // A disabled rule's tests still run: the test is about its logic.
    if let Some(rules) = std::sync::Arc::get_mut(&mut set.rules) {
        for rule in rules.iter_mut() {
            rule.info.enabled = true;
        }
    }
    let events = test_events(t)?;
    let mut engine = Engine::new(set, EngineConfig::default());
    let mut alerts = engine.push(events);
    alerts.extend(engine.finish());
    compare(&alerts, t)
}

fn describe(a: &Alert) -> String {
    format!(
        "{{user: {}, session: {}, host: {}, key: {:?}, count: {}, suppressed: {}, time: {}}}",
        a.user.as_deref().unwrap_or("-"),
        a.session.as_deref().unwrap_or("-"),
        a.host.as_deref().unwrap_or("-"),
        a.key,
        a.count,
        a.suppressed,
        event::format_ns(a.time)
    )
}

/// An expected alert as the test wrote it: only the fields it gives.
fn describe_expect(x: &ExpectDoc) -> String {
    let mut parts = Vec::new();
    let mut text = |name: &str, v: &Option<String>| {
        if let Some(v) = v {
            parts.push(format!("{name}: {v}"));
        }
    };
    text("user", &x.user);
    text("session", &x.session);
    text("host", &x.host);
    text("tenant", &x.tenant);
    text("summary_contains", &x.summary_contains);
    if let Some(k) = &x.key {
        let kv: Vec<String> = k.iter().map(|(f, v)| format!("{f}: {v}")).collect();
        parts.push(format!("key: {{{}}}", kv.join(", ")));
    }
    if let Some(c) = x.count {
        parts.push(format!("count: {c}"));
    }
    if let Some(s) = x.suppressed {
        parts.push(format!("suppressed: {s}"));
    }
    format!("{{{}}}", parts.join(", "))
}

fn matches(a: &Alert, x: &ExpectDoc) -> bool {
    let eq = |want: &Option<String>, got: &Option<String>| {
        want.as_ref().is_none_or(|w| got.as_ref() == Some(w))
    };
    eq(&x.user, &a.user)
        && eq(&x.session, &a.session)
        && eq(&x.host, &a.host)
        && x.tenant.as_ref().is_none_or(|t| *t == a.tenant)
        && x.key
            .as_ref()
            .is_none_or(|k| k.iter().all(|(f, v)| a.key.get(f) == Some(v)))
        && x.count.is_none_or(|c| c == a.count)
        && x.suppressed.is_none_or(|s| s == a.suppressed)
        && x.summary_contains
            .as_ref()
            .is_none_or(|s| a.summary.contains(s.as_str()))
}

fn compare(alerts: &[Alert], t: &TestDoc) -> Result<(), String> {
    let expect = t.expect.as_deref().unwrap_or(&[]);
    let want_count = t.expect_count.unwrap_or(expect.len());
    let got = alerts.iter().map(describe).collect::<Vec<_>>().join("\n");
    if alerts.len() != want_count {
        return Err(format!(
            "expected {want_count} alert(s), got {}:\n{got}",
            alerts.len()
        ));
    }
    let mut used = vec![false; alerts.len()];
    for (i, x) in expect.iter().enumerate() {
        match alerts
            .iter()
            .enumerate()
            .position(|(j, a)| !used[j] && matches(a, x))
        {
            Some(j) => used[j] = true,
            None => {
                return Err(format!(
                    "expected alert #{} {} not produced; got:\n{got}",
                    i + 1,
                    describe_expect(x)
                ))
            }
        }
    }
    Ok(())
}

fn parse_offset(text: &str) -> Result<i64, String> {
    let (sign, rest) = match text.trim().strip_prefix('-') {
        Some(r) => (-1, r),
        None => (1, text.trim().trim_start_matches('+')),
    };
    let d = duration_text::parse(rest)?;
    Ok(sign * i64::try_from(d.as_nanos()).map_err(|_| "offset too large".to_string())?)
}

/// Expands a test's events: `repeat`/`every` copies, `at` offsets, default
/// tenant, computed ids. Unknown event fields are errors.
pub(crate) fn test_events(t: &TestDoc) -> Result<Vec<Event>, String> {
    let base = match &t.base_time {
        Some(b) => Some(
            event::parse_rfc3339_ns(b)
                .ok_or_else(|| format!("base_time: invalid RFC 3339 time {b:?}"))?,
        ),
        None => None,
    };
    let mut out = Vec::new();
    for (i, v) in t.events.iter().enumerate() {
        let Value::Mapping(m) = v else {
            return Err(format!("event #{}: must be a mapping", i + 1));
        };
        let mut fields = Mapping::new();
        let (mut repeat, mut every, mut at) = (1usize, 0i64, None);
        for (k, val) in m {
            let key = k.as_str().unwrap_or_default();
            match key {
                "repeat" => {
                    repeat = val
                        .as_u64()
                        .ok_or_else(|| format!("event #{}: repeat takes a count", i + 1))?
                        as usize;
                }
                "every" => {
                    every = parse_offset(val.as_str().unwrap_or_default())
                        .map_err(|e| format!("event #{}: every: {e}", i + 1))?
                }
                "at" => {
                    let off = parse_offset(val.as_str().unwrap_or_default())
                        .map_err(|e| format!("event #{}: at: {e}", i + 1))?;
                    at = Some(
                        base.ok_or_else(|| {
                            format!("event #{}: `at` needs the test's base_time", i + 1)
                        })? + off,
                    );
                }
                k if EVENT_FIELDS.contains(&k) => {
                    fields.insert(Value::String(k.to_string()), val.clone());
                }
                other => return Err(format!("event #{}: unknown event field `{other}`", i + 1)),
            }
        }
        let has_time = fields.contains_key("time");
        let mut e: Event = serde_yaml::from_value(Value::Mapping(fields))
            .map_err(|err| format!("event #{}: {err}", i + 1))?;
        match (at, has_time) {
            (Some(t), false) => e.time = t,
            (None, true) => {}
            _ => {
                return Err(format!(
                    "event #{}: give exactly one of `time` or `at`",
                    i + 1
                ))
            }
        }
        if e.tenant.is_empty() {
            e.tenant = event::DEFAULT_TENANT.into();
        }
        let given_id = (!e.event_id.is_empty()).then(|| e.event_id.clone());
        for n in 0..repeat.clamp(1, 100_000) {
            let mut copy = e.clone();
            copy.time = e.time + every * n as i64;
            copy.observed_time = copy.time;
            copy.event_id = match &given_id {
                Some(id) if repeat > 1 => format!("{id}-{n}"),
                Some(id) => id.clone(),
                None => copy.compute_id(),
            };
            out.push(copy);
        }
    }
    Ok(out)
}

/// Alert count per rule id, handy for scenario checks in tests.
pub fn count_by_rule(alerts: &[Alert]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in alerts {
        *m.entry(a.rule_id.clone()).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pack_tests_all_pass_and_every_rule_has_tests() {
        let report = run(true, &[], &RulesContext::default()).expect("default pack loads");
        let mut table = Vec::new();
        report.print_table(&mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert_eq!(report.failed(), 0, "{table}");
        assert!(report.untested.is_empty(), "{table}");
        assert!(report.passed() >= 20, "{table}");
        assert!(table.trim_end().ends_with("failed"), "{table}");
    }

    #[test]
    fn a_failing_test_is_reported_with_what_was_produced() {
        let dir = std::env::temp_dir().join(format!("vigil-rules-testing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("r.yaml");
        std::fs::write(
            &file,
            "id: t\ntitle: T\nseverity: low\nkey: [user]\ncondition: {kind: file_read}\ntests:\n  - name: wrong\n    events:\n      - {time: \"2026-01-01T00:00:00Z\", kind: file_read, user: a}\n    expect: [{user: b}]\n  - name: right\n    events:\n      - {time: \"2026-01-01T00:00:00Z\", kind: file_read, user: a}\n    expect: [{user: a, count: 1}]\n",
        )
        .unwrap();
        let report = run(false, std::slice::from_ref(&file), &RulesContext::default()).unwrap();
        assert_eq!((report.passed(), report.failed()), (1, 1));
        let mut out = Vec::new();
        report.print_table(&mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("FAIL") && out.contains("user: a"), "{out}");
        // The expectation as the test wrote it, not a debug dump.
        assert!(
            out.contains("expected alert #1 {user: b} not produced"),
            "{out}"
        );
        assert!(!out.contains("ExpectDoc"), "{out}");
        assert!(out.contains("1 passed, 1 failed"), "{out}");
        std::fs::write(&file, "id: t\ntitle: T\nseverity: low\ncondition: {kind: file_read}\ntests:\n  - name: bad\n    events:\n      - {time: \"2026-01-01T00:00:00Z\", kind: file_read, usr: a}\n    expect: []\n").unwrap();
        let err =
            crate::check(false, std::slice::from_ref(&file), &RulesContext::default()).unwrap_err();
        assert!(
            err.to_string().contains("unknown event field `usr`"),
            "{err}"
        );
        // The event's own line, not the test's (line 6).
        assert!(err.to_string().contains("r.yaml:8:"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
