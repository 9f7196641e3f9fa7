//! Loading: rule files (the embedded default pack and user files or
//! directories) are split into `---` documents, each parsed with serde_yaml
//! (strict: unknown fields are errors, with their line), then compiled
//! against the named lists and business hours. Every problem comes back as a
//! [`Diagnostic`] naming the file, the line and the field.
//!
//! YAML bombs: files over [`MAX_FILE_BYTES`] are refused before parsing, and
//! serde_yaml 0.9 itself refuses nesting deeper than 128 levels and alias
//! expansion past a fixed repetition limit ("repetition limit exceeded").

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_yaml::Value;

use crate::config::{Lists, RulesContext};
use crate::list::ListMatcher;
use crate::predicate::CondError;
use crate::rule::{compile_rule, CompiledRule, RuleDoc, RuleInfo};
use crate::schedule::Schedule;
use crate::{Diagnostic, RulesError};

/// Largest rule or list file accepted.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// The embedded default pack: (file name, YAML).
const DEFAULT_PACK: &[(&str, &str)] = &[
    (
        "<default>/lists.yaml",
        include_str!("../default/lists.yaml"),
    ),
    (
        "<default>/scheduled-task-created.yaml",
        include_str!("../default/scheduled-task-created.yaml"),
    ),
    (
        "<default>/mcp-unapproved-server.yaml",
        include_str!("../default/mcp-unapproved-server.yaml"),
    ),
    (
        "<default>/connector-write-off-hours.yaml",
        include_str!("../default/connector-write-off-hours.yaml"),
    ),
    (
        "<default>/connector-write-burst.yaml",
        include_str!("../default/connector-write-burst.yaml"),
    ),
    (
        "<default>/sensitive-file-read.yaml",
        include_str!("../default/sensitive-file-read.yaml"),
    ),
    (
        "<default>/unattended-session.yaml",
        include_str!("../default/unattended-session.yaml"),
    ),
    (
        "<default>/bypass-permissions-enabled.yaml",
        include_str!("../default/bypass-permissions-enabled.yaml"),
    ),
    (
        "<default>/exfiltration-chain.yaml",
        include_str!("../default/exfiltration-chain.yaml"),
    ),
    (
        "<default>/model-token-spike.yaml",
        include_str!("../default/model-token-spike.yaml"),
    ),
    (
        "<default>/denied-tool-retried.yaml",
        include_str!("../default/denied-tool-retried.yaml"),
    ),
];

/// Names and contents of the embedded default pack files.
pub fn default_pack_files() -> &'static [(&'static str, &'static str)] {
    DEFAULT_PACK
}

/// A rule document and where it came from.
#[derive(Debug)]
pub(crate) struct ParsedRule {
    pub(crate) doc: RuleDoc,
    pub(crate) file: String,
    pub(crate) line: usize,
    pub(crate) chunk: String,
}

/// A list document entry.
#[derive(Debug)]
pub(crate) struct ParsedList {
    pub(crate) name: String,
    pub(crate) entries: Vec<String>,
    pub(crate) file: String,
    pub(crate) line: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub(crate) rules: Vec<ParsedRule>,
    pub(crate) lists: Vec<ParsedList>,
    /// Parse problems, located.
    pub(crate) diagnostics: Vec<Diagnostic>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListsDoc {
    lists: Lists,
}

fn yaml_line(e: &serde_yaml::Error, start: usize) -> usize {
    e.location().map_or(start, |l| start + l.line() - 1)
}

/// Splits a file into documents at `---` lines: (first line number, text).
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- ") || t == "..." {
            docs.push((start, std::mem::take(&mut cur)));
            start = i + 2;
            if let Some(rest) = t.strip_prefix("--- ") {
                cur.push_str(rest);
                cur.push('\n');
                start = i + 1;
            }
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    docs.push((start, cur));
    docs
}

/// Parses one file's text into rule and list documents.
pub(crate) fn parse_text(file: &str, text: &str, out: &mut Parsed) {
    if text.len() > MAX_FILE_BYTES {
        out.diagnostics.push(Diagnostic {
            file: file.into(),
            line: 0,
            message: format!("file is larger than {MAX_FILE_BYTES} bytes"),
        });
        return;
    }
    for (start, chunk) in split_documents(text) {
        let value: Value = match serde_yaml::from_str(&chunk) {
            Ok(v) => v,
            Err(e) => {
                out.diagnostics.push(Diagnostic {
                    file: file.into(),
                    line: yaml_line(&e, start),
                    message: e.to_string(),
                });
                continue;
            }
        };
        let map = match value {
            Value::Null => continue,
            Value::Mapping(m) => m,
            _ => {
                out.diagnostics.push(Diagnostic {
                    file: file.into(),
                    line: start,
                    message: "a document must be a rule (a mapping with `id`) or `lists:`".into(),
                });
                continue;
            }
        };
        if map.contains_key("lists") && !map.contains_key("id") {
            match serde_yaml::from_str::<ListsDoc>(&chunk) {
                Ok(d) => {
                    for (name, entries) in d.lists.0 {
                        let line = locate(&chunk, start, &format!("{name}:")).unwrap_or(start);
                        out.lists.push(ParsedList {
                            name,
                            entries,
                            file: file.into(),
                            line,
                        });
                    }
                }
                Err(e) => out.diagnostics.push(Diagnostic {
                    file: file.into(),
                    line: yaml_line(&e, start),
                    message: e.to_string(),
                }),
            }
            continue;
        }
        match serde_yaml::from_str::<RuleDoc>(&chunk) {
            Ok(doc) => {
                let line = locate(&chunk, start, "id:").unwrap_or(start);
                out.rules.push(ParsedRule {
                    doc,
                    file: file.into(),
                    line,
                    chunk,
                });
            }
            Err(e) => {
                let id = map
                    .get("id")
                    .and_then(Value::as_str)
                    .map(|s| format!("rule `{s}`: "))
                    .unwrap_or_default();
                out.diagnostics.push(Diagnostic {
                    file: file.into(),
                    line: yaml_line(&e, start),
                    message: format!("{id}{e}"),
                });
            }
        }
    }
}

/// First line at or after the document start that contains `needle`.
fn locate(chunk: &str, start: usize, needle: &str) -> Option<usize> {
    chunk
        .lines()
        .position(|l| l.contains(needle))
        .map(|i| start + i)
}

fn read_path(path: &Path, out: &mut Vec<(String, String)>) -> Result<(), RulesError> {
    let io = |source| RulesError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir() || p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        entries.sort();
        for p in entries {
            read_path(&p, out)?;
        }
        return Ok(());
    }
    if meta.len() > MAX_FILE_BYTES as u64 {
        out.push((path.display().to_string(), String::new()));
        return Err(RulesError::Invalid(vec![Diagnostic {
            file: path.display().to_string(),
            line: 0,
            message: format!("file is larger than {MAX_FILE_BYTES} bytes"),
        }]));
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    out.push((path.display().to_string(), text));
    Ok(())
}

/// Reads and parses the default pack (rules only when `default_pack`; its
/// lists always, so user rules may name them) and every extra file or
/// directory (`*.yaml`, `*.yml`, recursively, in name order).
pub(crate) fn parse_all(default_pack: bool, extra_paths: &[PathBuf]) -> Result<Parsed, RulesError> {
    let mut parsed = Parsed::default();
    for (name, text) in DEFAULT_PACK {
        if default_pack || name.ends_with("/lists.yaml") {
            parse_text(name, text, &mut parsed);
        }
    }
    let mut files = Vec::new();
    for p in extra_paths {
        read_path(p, &mut files)?;
    }
    for (name, text) in &files {
        parse_text(name, text, &mut parsed);
    }
    Ok(parsed)
}

fn diag(rule: &ParsedRule, e: CondError) -> Diagnostic {
    let line = e
        .needle
        .as_deref()
        .and_then(|n| locate(&rule.chunk, rule.line_start(), n))
        .unwrap_or(rule.line);
    Diagnostic {
        file: rule.file.clone(),
        line,
        message: format!("rule `{}`: {}: {}", rule.doc.id, e.path, e.message),
    }
}

impl ParsedRule {
    /// First line of the document (the `id:` line is `self.line`).
    fn line_start(&self) -> usize {
        let offset = self
            .chunk
            .lines()
            .position(|l| l.contains("id:"))
            .unwrap_or(0);
        self.line - offset
    }
}

/// Named lists: pack and file lists (later files replace earlier ones), then
/// the user's config lists, each replacing the list of the same name.
pub(crate) fn build_lists(
    parsed: &Parsed,
    user: &Lists,
    diags: &mut Vec<Diagnostic>,
) -> HashMap<String, Arc<ListMatcher>> {
    let mut merged: BTreeMap<&str, (&[String], String, usize)> = BTreeMap::new();
    for l in &parsed.lists {
        merged.insert(&l.name, (&l.entries, l.file.clone(), l.line));
    }
    for (name, entries) in &user.0 {
        merged.insert(name, (entries, "vigil.yaml lists".into(), 0));
    }
    let mut out = HashMap::new();
    for (name, (entries, file, line)) in merged {
        match ListMatcher::compile(name, entries) {
            Ok(m) => {
                out.insert(name.to_string(), Arc::new(m));
            }
            Err(message) => diags.push(Diagnostic {
                file,
                line,
                message,
            }),
        }
    }
    out
}

/// Compiles parsed documents into a rule set; `only` keeps a single rule id.
pub(crate) fn compile_parsed(
    parsed: &Parsed,
    ctx: &RulesContext,
    only: Option<&str>,
) -> Result<RuleSet, Vec<Diagnostic>> {
    let mut diags = parsed.diagnostics.clone();
    let lists = build_lists(parsed, &ctx.lists, &mut diags);
    let mut rules = Vec::new();
    let mut seen: HashMap<&str, (&str, usize)> = HashMap::new();
    for r in &parsed.rules {
        if only.is_some_and(|id| id != r.doc.id) {
            continue;
        }
        if let Some((file, line)) = seen.insert(&r.doc.id, (&r.file, r.line)) {
            diags.push(Diagnostic {
                file: r.file.clone(),
                line: r.line,
                message: format!(
                    "duplicate rule id `{}` (first defined at {file}:{line})",
                    r.doc.id
                ),
            });
            continue;
        }
        match compile_rule(&r.doc, &r.file, r.line, &lists) {
            Ok(mut c) => {
                c.fingerprint = xxhash_rust::xxh3::xxh3_64(r.chunk.as_bytes());
                rules.push(c)
            }
            Err(e) => diags.push(diag(r, e)),
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    // The config's lists no loaded rule reads: a misspelt name leaves the
    // list it meant at its default (and a rule that needs it inactive).
    let read_lists = |name: &str| {
        lists.get(name).is_some_and(|m| Arc::strong_count(m) > 1)
            || parsed
                .rules
                .iter()
                .filter(|r| only.is_none_or(|id| id == r.doc.id))
                .any(|r| r.doc.requires_lists.iter().any(|l| l == name))
    };
    let mut unread_lists: Vec<String> = ctx
        .lists
        .0
        .keys()
        .filter(|name| !read_lists(name))
        .cloned()
        .collect();
    unread_lists.sort();
    let mut read: Vec<String> = lists.keys().filter(|n| read_lists(n)).cloned().collect();
    read.sort();
    // Entries pasted as a URL or `host:port` count by their host: said, so
    // that whoever wrote them knows what is compared.
    let list_notes = read
        .iter()
        .flat_map(|name| {
            lists[name]
                .host_forms
                .iter()
                .filter(|(raw, _)| {
                    // Buckets (`s3://name`, `name.s3.amazonaws.com`) are meant so.
                    let r = raw.to_ascii_lowercase();
                    r.contains(['/', ':']) && !r.starts_with("s3://") && !r.starts_with("gs://")
                })
                .map(move |(raw, host)| {
                    format!("list `{name}`: entry {raw:?} is compared as the host name {host:?} where a rule reads the list as hosts")
                })
        })
        .collect();
    // What the set is made of: each rule's text, every list's entries (files
    // and config), the business hours. Equal digests: the same detections.
    let digest = {
        let mut text = String::new();
        for r in &rules {
            text.push_str(&format!("{}:{:016x}\n", r.info.id, r.fingerprint));
        }
        for l in &parsed.lists {
            text.push_str(&format!("{}={:?}\n", l.name, l.entries));
        }
        text.push_str(&serde_json::to_string(&ctx.lists).unwrap_or_default());
        text.push_str(&serde_json::to_string(&ctx.business_hours).unwrap_or_default());
        xxhash_rust::xxh3::xxh3_64(text.as_bytes())
    };
    // Every `attrs.<key>` a rule's text names (conditions, keys, summaries):
    // the engine keeps only these attributes of the events it holds.
    let attr_refs = parsed
        .rules
        .iter()
        .filter(|r| only.is_none_or(|id| id == r.doc.id))
        .flat_map(|r| attr_names(&r.chunk))
        .collect();
    let named_fields: std::collections::HashSet<&'static str> = parsed
        .rules
        .iter()
        .filter(|r| only.is_none_or(|id| id == r.doc.id))
        .flat_map(|r| field_names(&r.chunk))
        .collect();
    Ok(RuleSet {
        rules: rules.into(),
        schedule: Arc::new(Schedule::new(&ctx.business_hours)),
        attr_refs: Arc::new(attr_refs),
        named_fields: Arc::new(named_fields),
        unread_lists: Arc::new((unread_lists, read)),
        list_notes: Arc::new(list_notes),
        digest,
    })
}

/// The attribute names a rule document mentions as `attrs.<name>`. A superset
/// is harmless (an attribute kept for nothing); missing one is not, so this
/// reads the document's text rather than trusting any one place a field appears.
fn attr_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let name_end = |tail: &str| {
        tail.find(|c: char| {
            !(c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '/' | '@' | ':'))
        })
        .unwrap_or(tail.len())
    };
    let mut rest = text;
    while let Some(i) = rest.find("attrs.") {
        let tail = &rest[i + "attrs.".len()..];
        let end = name_end(tail);
        // A YAML mapping key ends in ':'; names may contain ':' only inside.
        let name = tail[..end].trim_end_matches([':', '.']);
        if !name.is_empty() {
            out.push(name.to_string());
        }
        rest = &tail[end..];
    }
    // `args.<member>`, short for `attrs.args.<member>` (a word of its own:
    // not the end of `attrs.args.` or of another name).
    let mut at = 0;
    while let Some(i) = text[at..].find("args.") {
        let start = at + i;
        let tail = &text[start + "args.".len()..];
        let end = name_end(tail);
        let own_word = text[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || matches!(c, '_' | '.' | '-')));
        let name = tail[..end].trim_end_matches([':', '.']);
        if own_word && !name.is_empty() {
            out.push(format!("args.{name}"));
        }
        at = start + "args.".len() + end;
    }
    out
}

/// Event columns the engine reads whatever the rules say: ordering and keys
/// (`time`, `event_id`, `tenant`, `kind`), what every alert carries (`user`,
/// `session`, `host`, business hours per user), and the evidence fields.
pub(crate) const ALWAYS_READ: &[&str] = &[
    "time", "event_id", "tenant", "kind", "user", "session", "host", "action", "tool", "path",
    "domain", "command",
];

/// Of [`ALWAYS_READ`], what conditions read whatever the rules say: time
/// and kind, and tenant and user for business hours.
pub(crate) const CONDITIONS_READ: &[&str] = &["time", "kind", "tenant", "user"];

/// The event columns a rule document names, as whole words. A superset is
/// harmless (a column read for nothing), as for [`attr_names`].
fn field_names(text: &str) -> Vec<&'static str> {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    event::EVENT_FIELDS
        .iter()
        .copied()
        .filter(|name| {
            text.match_indices(name).any(|(i, _)| {
                let before = text[..i].chars().next_back();
                let after = text[i + name.len()..].chars().next();
                !before.is_some_and(word) && !after.is_some_and(word)
            })
        })
        .collect()
}

/// A compiled, immutable set of rules; cheap to clone.
#[derive(Clone)]
pub struct RuleSet {
    pub(crate) rules: Arc<[CompiledRule]>,
    pub(crate) schedule: Arc<Schedule>,
    /// Attribute names any rule reads; the rest are not kept in engine state.
    pub(crate) attr_refs: Arc<std::collections::HashSet<String>>,
    /// Event columns the rules' text names (a superset of what their
    /// conditions read); with [`ALWAYS_READ`], all that replay reads.
    pub(crate) named_fields: Arc<std::collections::HashSet<&'static str>>,
    /// The config's lists no loaded rule reads, and the lists rules do read.
    pub(crate) unread_lists: Arc<(Vec<String>, Vec<String>)>,
    /// What a list's entries came to, where that is not what they say.
    pub(crate) list_notes: Arc<Vec<String>>,
    /// See [`RuleSet::digest`].
    pub(crate) digest: u64,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.rules.iter().map(|r| &r.info.id))
            .finish()
    }
}

impl RuleSet {
    /// Loads the default pack (when `default_pack`) and the rule files or
    /// directories in `extra_paths`, compiled against `ctx`.
    pub fn load(
        default_pack: bool,
        extra_paths: &[PathBuf],
        ctx: &RulesContext,
    ) -> Result<RuleSet, RulesError> {
        let parsed = parse_all(default_pack, extra_paths)?;
        compile_parsed(&parsed, ctx, None).map_err(RulesError::Invalid)
    }

    /// [`RuleSet::load`] keeping only the rule `id`, compiled as it is in
    /// the whole set (the same lists and business hours): one rule alone,
    /// to see what it costs. No rule of that id leaves the set empty.
    pub fn load_one(
        default_pack: bool,
        extra_paths: &[PathBuf],
        ctx: &RulesContext,
        id: &str,
    ) -> Result<RuleSet, RulesError> {
        let parsed = parse_all(default_pack, extra_paths)?;
        compile_parsed(&parsed, ctx, Some(id)).map_err(RulesError::Invalid)
    }

    /// A hash of everything the set was compiled from (rule texts, lists,
    /// business hours): two sets with the same digest detect the same, so a
    /// reload that changed nothing need not rebuild any state.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Lists given in the configuration that no loaded rule reads (most
    /// likely a misspelt name), and the names the rules do read.
    pub fn unread_config_lists(&self) -> (&[String], &[String]) {
        (&self.unread_lists.0, &self.unread_lists.1)
    }

    /// List entries read otherwise than written: a URL or `host:port` in a
    /// list rules read as hosts counts by its host name.
    pub fn list_notes(&self) -> &[String] {
        &self.list_notes
    }

    /// Every loaded rule, in load order (disabled and inactive ones included).
    pub fn rules(&self) -> Vec<RuleInfo> {
        self.rules.iter().map(|r| r.info.clone()).collect()
    }

    /// Number of rules loaded.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when no rule is loaded.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// Same as [`RuleSet::load`].
pub fn load(
    default_pack: bool,
    extra_paths: &[PathBuf],
    ctx: &RulesContext,
) -> Result<RuleSet, RulesError> {
    RuleSet::load(default_pack, extra_paths, ctx)
}

/// Validates rule files without running them: every parse and compile
/// problem, and every malformed test, as located diagnostics
/// ([`RulesError::Invalid`]); on success, the rule set that would load.
pub fn check(
    default_pack: bool,
    extra_paths: &[PathBuf],
    ctx: &RulesContext,
) -> Result<RuleSet, RulesError> {
    let parsed = parse_all(default_pack, extra_paths)?;
    let mut diags = Vec::new();
    let set = match compile_parsed(&parsed, ctx, None) {
        Ok(s) => Some(s),
        Err(d) => {
            diags.extend(d);
            None
        }
    };
    let mut seen = HashSet::new();
    for r in &parsed.rules {
        if !seen.insert((&r.file, r.line)) {
            continue;
        }
        for t in &r.doc.tests {
            if let Err(message) = crate::testing::validate_test(t) {
                // The test's line, or further down the line of what the
                // message quotes (`usr`: an event's unknown field).
                let start = r.line_start();
                let named = locate(&r.chunk, start, &t.name);
                let quoted = message.split('`').nth(1).filter(|q| !q.is_empty());
                let line = named
                    .and_then(|n| {
                        let q = quoted?;
                        let below = r.chunk.lines().skip(n - start);
                        let key = format!("{q}:");
                        let at = |pat: &str| below.clone().position(|l| l.contains(pat));
                        at(&key).or_else(|| at(q)).map(|i| n + i)
                    })
                    .or(named)
                    .unwrap_or(r.line);
                diags.push(Diagnostic {
                    file: r.file.clone(),
                    line,
                    message: format!("rule `{}`: test `{}`: {message}", r.doc.id, t.name),
                });
            }
        }
    }
    match (set, diags.is_empty()) {
        (Some(s), true) => Ok(s),
        _ => Err(RulesError::Invalid(diags)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<RuleSet, Vec<Diagnostic>> {
        let mut p = Parsed::default();
        parse_text(
            "<default>/lists.yaml",
            include_str!("../default/lists.yaml"),
            &mut p,
        );
        parse_text("my.yaml", text, &mut p);
        compile_parsed(&p, &RulesContext::default(), None)
    }

    fn first_error(text: &str) -> Diagnostic {
        load_text(text)
            .unwrap_err()
            .into_iter()
            .next()
            .expect("an error")
    }

    const GOOD: &str = "id: a\ntitle: A\nseverity: low\ncondition: {kind: file_read}\n";

    #[test]
    fn load_one_keeps_that_rule_alone_with_only_the_attributes_it_reads() {
        let ctx = RulesContext::default();
        let all = RuleSet::load(true, &[], &ctx).expect("the default pack loads");
        let ids: Vec<String> = all.rules().into_iter().map(|r| r.id).collect();
        assert!(ids.len() > 1);
        for id in &ids {
            let one = RuleSet::load_one(true, &[], &ctx, id).expect("loads");
            let kept: Vec<String> = one.rules().into_iter().map(|r| r.id).collect();
            assert_eq!(kept, vec![id.clone()]);
            assert!(one.attr_refs.is_subset(&all.attr_refs));
        }
        assert!(RuleSet::load_one(true, &[], &ctx, "no-such-rule")
            .expect("loads")
            .is_empty());
    }

    #[test]
    fn default_pack_loads_and_has_the_required_ids() {
        let set = RuleSet::load(true, &[], &RulesContext::default()).unwrap();
        let ids: Vec<String> = set.rules().into_iter().map(|r| r.id).collect();
        for id in [
            "scheduled-task-created",
            "mcp-unapproved-server",
            "connector-write-off-hours",
            "connector-write-burst",
            "sensitive-file-read",
            "unattended-session",
            "bypass-permissions-enabled",
            "exfiltration-chain",
        ] {
            assert!(ids.iter().any(|i| i == id), "{id} missing from {ids:?}");
        }
        let mcp = set
            .rules()
            .into_iter()
            .find(|r| r.id == "mcp-unapproved-server")
            .unwrap();
        assert!(
            !mcp.is_active(),
            "inactive until approved_mcp_domains is configured"
        );
    }

    #[test]
    fn config_lists_no_rule_reads_are_named() {
        let mut ctx = RulesContext::default();
        ctx.lists
            .0
            .insert("approved_mcp_domain".into(), vec!["*.slack.com".into()]);
        ctx.lists
            .0
            .insert("internal_domains".into(), vec!["*.corp.example".into()]);
        let set = RuleSet::load(true, &[], &ctx).unwrap();
        let (unread, read) = set.unread_config_lists();
        assert_eq!(unread, ["approved_mcp_domain"]);
        assert!(read.iter().any(|l| l == "approved_mcp_domains"), "{read:?}");
        assert!(read.iter().any(|l| l == "internal_domains"), "{read:?}");
    }

    #[test]
    fn several_documents_per_file_with_lines() {
        let text = format!(
            "{GOOD}---\nid: b\ntitle: B\nseverity: high\ncondition: {{kind: [file_write]}}\n"
        );
        let set = load_text(&text).unwrap();
        let infos = set.rules();
        assert_eq!(infos.len(), 2);
        assert_eq!((infos[0].line, infos[1].line), (1, 6));
    }

    #[test]
    fn unknown_rule_field_is_reported_with_its_line() {
        let d = first_error("id: a\ntitle: A\nseverity: low\nconditon: {kind: file_read}\n");
        assert_eq!((d.file.as_str(), d.line), ("my.yaml", 4), "{d}");
        assert!(d.message.contains("conditon"), "{d}");
        let d = first_error(&format!(
            "{GOOD}---\nid: b\ntitle: B\nseverity: urgent\ncondition: {{kind: file_read}}\n"
        ));
        assert_eq!(d.line, 8, "{d}");
        assert!(d.to_string().starts_with("my.yaml:8: rule `b`"), "{d}");
    }

    #[test]
    fn attributes_named_by_rules_include_the_arguments_they_read() {
        let text = "condition: {args.to: {exists: true}, attrs.tool_parameters.x: 1, attrs.args.cc: 2}\nsummary: '{args.message.toRecipients}' # not my_args.x nor cargs.y";
        let mut names = attr_names(text);
        names.sort();
        assert_eq!(
            names,
            [
                "args.cc",
                "args.message.toRecipients",
                "args.to",
                "tool_parameters.x"
            ]
        );
    }

    #[test]
    fn compile_errors_name_file_line_rule_and_field() {
        let d = first_error("id: a\ntitle: A\nseverity: low\ncondition:\n  all:\n    - kind: tool_call\n    - command: {regex: 'a(b'}\n");
        assert_eq!(d.line, 7, "{d}");
        assert!(
            d.message
                .contains("rule `a`: condition.all[1].command.regex: bad regex"),
            "{d}"
        );
        let d = first_error(
            "id: a\ntitle: A\nseverity: low\ncondition:\n  domain: {in_list: nosuch}\n",
        );
        assert_eq!(d.line, 5, "{d}");
        assert!(d.message.contains("unknown list `nosuch`"));
        let d = first_error(
            "id: a\ntitle: A\nseverity: low\nkey: [usr]\ncondition: {kind: file_read}\n",
        );
        assert!(d.message.contains("unknown field `usr`"), "{d}");
        let d = first_error(&format!("{GOOD}---\n{GOOD}"));
        assert!(d.message.contains("duplicate rule id `a`"), "{d}");
        assert_eq!(d.line, 6);
        let d = first_error(
            "id: a\ntitle: A\nseverity: low\nkind: threshold\ncondition: {kind: file_read}\n",
        );
        assert!(d.message.contains("needs a `threshold:` block"), "{d}");
        let d = first_error(
            "id: a\ntitle: A\nseverity: low\nsummary: 'x {nope}'\ncondition: {kind: file_read}\n",
        );
        assert!(d.message.contains("unknown field `nope`"), "{d}");
        let d = first_error(
            "id: a\ntitle: A\nseverity: low\nkey: [session]\nkind: inactivity\ninactivity:\n  after: 2h\n  reset: {kind: user_prompt}\n  activity: {kind: tool_call}\n  start: {sourc: agent}\n",
        );
        assert!(
            d.message.contains("inactivity.start.sourc: unknown field"),
            "{d}"
        );
        // A bad duration is reported at its own line, with its key.
        let d = first_error(
            "id: a\ntitle: A\nseverity: low\nkey: [user]\nkind: threshold\ncondition: {kind: file_read}\nthreshold:\n  count: 3\n  window: 5\n",
        );
        assert_eq!(d.line, 9, "{d}");
        assert!(
            d.message
                .contains("threshold.window: invalid duration \"5\""),
            "{d}"
        );
    }

    #[test]
    fn oversized_regexes_are_refused_and_catastrophic_ones_run_in_linear_time() {
        let d = first_error(
            "id: a\ntitle: A\nseverity: low\ncondition:\n  command: {regex: 'a{1000}{1000}'}\n",
        );
        assert!(
            d.message.contains("bad regex") && d.message.contains("size limit"),
            "{}",
            d.message
        );
        // `(a+)+$` against "aaaa...!" takes exponential time in a backtracking
        // engine (this test would never finish); the regex crate is linear.
        let mut p = Parsed::default();
        parse_text(
            "t.yaml",
            "id: a\ntitle: A\nseverity: low\ncondition:\n  command: {regex: '^(a+)+$'}\n",
            &mut p,
        );
        let set = compile_parsed(&p, &RulesContext::default(), None).expect("compiles");
        let mut engine = crate::Engine::new(set, crate::EngineConfig::default());
        let mut e = event::Event {
            kind: event::EventKind::ProcessStart,
            tenant: "default".into(),
            user: Some("u".into()),
            session: Some("s".into()),
            host: Some("h".into()),
            command: Some(format!("{}!", "a".repeat(100_000)).into()),
            ..Default::default()
        };
        e.event_id = e.compute_id();
        let mut alerts = engine.push(vec![e.clone()]);
        alerts.extend(engine.finish());
        assert!(alerts.is_empty(), "the trailing ! never matches");
        e.command = Some("a".repeat(100_000).into());
        e.time += 60_000_000_000;
        e.event_id = e.compute_id();
        let mut alerts = engine.push(vec![e]);
        alerts.extend(engine.finish());
        assert_eq!(alerts.len(), 1);
    }

    #[test]
    fn yaml_bombs_and_huge_files_are_refused() {
        let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n";
        let d = first_error(bomb);
        assert!(
            d.message.contains("repetition limit") || d.message.contains("recursion"),
            "{d}"
        );
        let deep = format!("id: {}{}\n", "[".repeat(200), "]".repeat(200));
        assert!(load_text(&deep).is_err());
        let mut p = Parsed::default();
        parse_text("big.yaml", &" ".repeat(MAX_FILE_BYTES + 1), &mut p);
        assert!(p.diagnostics[0].message.contains("larger than"));
    }

    #[test]
    fn user_files_and_directories_load_in_name_order() {
        let dir = std::env::temp_dir().join(format!("vigil-rules-load-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("b.yaml"), GOOD.replace("id: a", "id: b")).unwrap();
        std::fs::write(dir.join("sub/a.yml"), GOOD).unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let set =
            RuleSet::load(false, std::slice::from_ref(&dir), &RulesContext::default()).unwrap();
        let ids: Vec<String> = set.rules().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, vec!["b", "a"]);
        let err = RuleSet::load(false, &[dir.join("missing.yaml")], &RulesContext::default())
            .unwrap_err();
        assert!(err.to_string().contains("missing.yaml"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_lists_replace_pack_lists() {
        let mut p = Parsed::default();
        parse_text(
            "<default>/lists.yaml",
            include_str!("../default/lists.yaml"),
            &mut p,
        );
        let mut user = Lists::default();
        user.0
            .insert("sensitive_paths".into(), vec!["*/secret.txt".into()]);
        let mut diags = vec![];
        let lists = build_lists(&p, &user, &mut diags);
        assert!(diags.is_empty());
        assert!(lists["sensitive_paths"].matches("/x/secret.txt"));
        assert!(!lists["sensitive_paths"].matches("/x/.ssh/id_rsa"));
        assert!(lists["approved_mcp_domains"].is_empty());
    }
}
