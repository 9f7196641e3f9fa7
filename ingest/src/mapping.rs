//! Declarative mappings from what a source sends to vigil's event columns.
//!
//! A mapping file (YAML) holds `mappings:` (how to recognise a source family
//! and fill the columns from its attributes), and optionally `verbs:` and
//! `connectors:` (the tables that decide whether an MCP tool call writes and
//! which SaaS it reaches). The default pack in `ingest/mappings/` is embedded
//! in the binary; users add their own files with `--mappings DIR`. A user
//! mapping with the name of a default one replaces it. docs/mappings.md is the
//! reference.

use std::collections::BTreeMap;

use std::path::{Path, PathBuf};

use event::{Event, EventKind, Outcome, Source, ARGS_ATTR, ARGS_PREFIX};
use regex::Regex;
use serde::Deserialize;
use smallvec::SmallVec;

use crate::pattern::Pattern;
use crate::record::{ItemLists, Key, Origin, RecordView, Val};
use event::Text;

/// The default mapping pack, embedded at build time.
pub const DEFAULT_PACK: &[(&str, &str)] = &[
    (
        "claude_code.yaml",
        include_str!("../mappings/claude_code.yaml"),
    ),
    (
        "gemini_cli.yaml",
        include_str!("../mappings/gemini_cli.yaml"),
    ),
    ("codex.yaml", include_str!("../mappings/codex.yaml")),
    (
        "genai_gateway.yaml",
        include_str!("../mappings/genai_gateway.yaml"),
    ),
    (
        "mcp_gateway.yaml",
        include_str!("../mappings/mcp_gateway.yaml"),
    ),
    ("endpoint.yaml", include_str!("../mappings/endpoint.yaml")),
    ("generic.yaml", include_str!("../mappings/generic.yaml")),
    ("verbs.yaml", include_str!("../mappings/verbs.yaml")),
];

/// Largest mapping file read; a mapping is a few KiB, so anything far larger is a mistake.
const MAX_FILE_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: mapping `{mapping}`: {message}")]
    Invalid {
        file: String,
        mapping: String,
        message: String,
    },
}

/// Which OTLP signal a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    Log,
    Span,
    Metric,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Log => "log",
            Signal::Span => "span",
            Signal::Metric => "metric",
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    /// Source-family mappings.
    #[serde(default)]
    mappings: Vec<MappingSpec>,
    /// Verb table: which tool-name words mean which action.
    #[serde(default)]
    verbs: Vec<VerbSpec>,
    /// Which argument names list the objects one call acts on; a later
    /// file's table replaces an earlier one's.
    #[serde(default)]
    items: Option<ItemsSpec>,
    /// Connector table: which SaaS a domain or tool name belongs to.
    #[serde(default)]
    connectors: Vec<ConnectorSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingSpec {
    /// Unique name; a user mapping with a default mapping's name replaces it.
    name: String,
    /// What `source` column the events get.
    source: Source,
    /// Signals this mapping applies to.
    signals: Vec<Signal>,
    /// Higher is tried first (ties by name). The generic fallback uses 0.
    #[serde(default = "default_priority")]
    priority: i32,
    /// When the mapping applies to a record.
    #[serde(default)]
    when: Option<PredSpec>,
    /// Attributes whose string value is a JSON object, expanded into `<attr>.<member>`.
    #[serde(default)]
    expand_json: Vec<String>,
    /// Attributes holding a tool call's arguments as a JSON object: the
    /// first present is expanded into `args.<member>`, whatever the source
    /// names it (any other as `expand_json` does), and `vigil.args` names it.
    #[serde(default)]
    arguments: Vec<String>,
    /// Helper values, available to later steps as `@<name>`.
    #[serde(default)]
    derive: BTreeMap<String, Vec<SourceSpec>>,
    /// Column name -> candidate sources, first present wins.
    #[serde(default)]
    columns: BTreeMap<String, Vec<SourceSpec>>,
    /// Kind decision: first matching case wins; none matching gives `other`.
    #[serde(default)]
    kinds: Vec<KindCase>,
    /// Outcome decision: first matching case wins; none gives `unknown`.
    #[serde(default)]
    outcome: Vec<OutcomeCase>,
    /// A human acted when this holds (besides kind cases marked `interactive`).
    #[serde(default)]
    interactive: Option<PredSpec>,
}

fn default_priority() -> i32 {
    50
}

#[derive(Debug)]
enum SourceSpec {
    Key(String),
    Full(SourceFull),
}

/// A key, or the full form, whose own errors (an unknown field, a bad
/// condition) are reported as such rather than as "no variant matched".
impl<'de> Deserialize<'de> for SourceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::String(key) => Ok(SourceSpec::Key(key)),
            full => SourceFull::deserialize(full)
                .map(SourceSpec::Full)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceFull {
    /// Key to read.
    #[serde(default)]
    field: Option<String>,
    /// A literal value instead of a key.
    #[serde(default)]
    value: Option<String>,
    /// Keep only this regex's `value` group (or the whole match).
    #[serde(default)]
    regex: Option<String>,
    /// Lower-case the result.
    #[serde(default)]
    lower: bool,
    /// Use this source only when the record matches (`host.os.type` is windows).
    #[serde(default)]
    when: Option<Box<PredSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KindCase {
    #[serde(default)]
    when: Option<PredSpec>,
    /// An event kind, or `from_verb` (connector_action when the tool's verb writes, else tool_call).
    kind: String,
    /// Literal action for this case.
    #[serde(default)]
    action: Option<String>,
    /// This case is a human acting.
    #[serde(default)]
    interactive: bool,
    /// Column overrides for this case.
    #[serde(default)]
    set: BTreeMap<String, Vec<SourceSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutcomeCase {
    #[serde(default)]
    when: Option<PredSpec>,
    value: Outcome,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PredSpec {
    #[serde(default)]
    all: Option<Vec<PredSpec>>,
    #[serde(default)]
    any: Option<Vec<PredSpec>>,
    #[serde(default)]
    not: Option<Box<PredSpec>>,
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    eq: Option<String>,
    #[serde(default, rename = "in")]
    in_: Option<Vec<String>>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    contains: Option<String>,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    exists: Option<bool>,
    /// Compare case-insensitively.
    #[serde(default)]
    nocase: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerbSpec {
    action: String,
    /// True when this verb changes something outside (a connector write).
    writes: bool,
    words: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemsSpec {
    /// Regex over an argument's name (the last part of its path): lists of
    /// plain values.
    names: String,
    /// The same for lists of objects.
    #[serde(default)]
    objects: Option<String>,
    /// Names that match `names` but list something else (labels, recipients).
    #[serde(default)]
    except: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectorSpec {
    name: String,
    /// Case-insensitive regexes tried on the domain, the MCP server and the tool name.
    patterns: Vec<String>,
}

// ---------------------------------------------------------------------------
// Compiled form

#[derive(Debug)]
enum Pred {
    All(Vec<Pred>),
    Any(Vec<Pred>),
    Not(Box<Pred>),
    Field { key: Key, test: Test, nocase: bool },
    True,
}

#[derive(Debug)]
enum Test {
    Exists(bool),
    Eq(String),
    In(Vec<String>),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

impl Pred {
    fn eval(&self, view: &RecordView<'_>) -> bool {
        match self {
            Pred::True => true,
            Pred::All(ps) => ps.iter().all(|p| p.eval(view)),
            Pred::Any(ps) => ps.iter().any(|p| p.eval(view)),
            Pred::Not(p) => !p.eval(view),
            Pred::Field { key, test, nocase } => {
                let val = view.get_key(key);
                if let Test::Exists(want) = test {
                    return val.is_some() == *want;
                }
                let Some(val) = val else { return false };
                // Patterns of `nocase` tests are lower-cased at compile time.
                let text = val.text();
                // Most values have no capital letter: lower-case only those that do.
                let text: std::borrow::Cow<'_, str> =
                    if *nocase && text.chars().any(char::is_uppercase) {
                        std::borrow::Cow::Owned(text.to_lowercase())
                    } else {
                        text
                    };
                let text = text.as_ref();
                match test {
                    Test::Exists(_) => unreachable!("handled above"),
                    Test::Eq(s) => text == s || array_has(text, |e| e == s),
                    Test::In(list) => {
                        list.iter().any(|s| text == s)
                            || array_has(text, |e| list.iter().any(|s| e == s))
                    }
                    Test::Prefix(s) => text.starts_with(s.as_str()),
                    Test::Suffix(s) => text.ends_with(s.as_str()),
                    Test::Contains(s) => text.contains(s.as_str()),
                    Test::Regex(re) => re.is_match(text),
                }
            }
        }
    }
}

/// The elements of an array value: the view renders arrays as JSON text
/// (`["crontab","/tmp/x"]`); `None` for any other value, or elements not of type `T`.
fn rendered_array<T: serde::de::DeserializeOwned>(text: &str) -> Option<Vec<T>> {
    if !(text.starts_with('[') && text.ends_with(']')) {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// The words of an argument vector (ECS `process.args`) joined by spaces;
/// `None` for an empty one, which stays as it came.
fn joined_args(text: &str) -> Option<String> {
    rendered_array::<String>(text)
        .filter(|words| !words.is_empty())
        .map(|words| words.join(" "))
}

/// True when `text` is an array value (ECS sends `event.category:
/// ["process"]`, `event.type: ["change", "creation"]`) and one of its scalar
/// elements satisfies `hit`: `eq` and `in` match any element, as they would
/// the scalar.
fn array_has(text: &str, mut hit: impl FnMut(&str) -> bool) -> bool {
    let Some(items) = rendered_array::<serde_json::Value>(text) else {
        return false;
    };
    items.iter().any(|v| match v {
        serde_json::Value::String(s) => hit(s),
        serde_json::Value::Number(n) => hit(&n.to_string()),
        serde_json::Value::Bool(b) => hit(if *b { "true" } else { "false" }),
        _ => false,
    })
}

#[derive(Debug)]
struct ValueSource {
    field: Option<Key>,
    literal: Option<String>,
    pattern: Option<Pattern>,
    lower: bool,
    when: Option<Pred>,
}

impl ValueSource {
    /// The value and, when it came whole from a view key, that key (it is then
    /// taken by the column and not repeated in `attrs`).
    fn extract<'v>(&self, view: &'v RecordView<'_>) -> Option<(Text, Option<&'v str>)> {
        if self.when.as_ref().is_some_and(|w| !w.eval(view)) {
            return None;
        }
        if let Some(lit) = &self.literal {
            return Some((Text::from(lit.as_str()), None));
        }
        let key = self.field.as_ref()?;
        let (stored, val) = view.entry_of(key)?;
        // Borrowed until the value is known to be kept: most sources miss.
        let mut text = val.text();
        let mut whole = true;
        if let Some(pattern) = &self.pattern {
            text = match text {
                std::borrow::Cow::Borrowed(t) => std::borrow::Cow::Borrowed(pattern.value(t)?),
                std::borrow::Cow::Owned(t) => std::borrow::Cow::Owned(pattern.value(&t)?.into()),
            };
            whole = false;
        }
        if text.is_empty() {
            return None;
        }
        // Lower-casing never empties a string: the check above holds for both.
        // Short values (most) stay inline in the event: no allocation.
        let text = if self.lower {
            Text::from(text.to_lowercase())
        } else {
            Text::from(text.as_ref())
        };
        let taken = whole.then_some(stored);
        Some((text, taken))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KindChoice {
    Fixed(EventKind),
    FromVerb,
}

#[derive(Debug)]
struct CompiledCase {
    when: Pred,
    kind: KindChoice,
    action: Option<String>,
    interactive: bool,
    set: Vec<(Column, Vec<ValueSource>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Product,
    Action,
    User,
    Session,
    Host,
    Tool,
    McpServer,
    Connector,
    Target,
    Domain,
    Path,
    Command,
    Model,
    TokensIn,
    TokensOut,
}

impl Column {
    fn parse(name: &str) -> Option<Column> {
        Some(match name {
            "product" => Column::Product,
            "action" => Column::Action,
            "user" => Column::User,
            "session" => Column::Session,
            "host" => Column::Host,
            "tool" => Column::Tool,
            "mcp_server" => Column::McpServer,
            "connector" => Column::Connector,
            "target" => Column::Target,
            "domain" => Column::Domain,
            "path" => Column::Path,
            "command" => Column::Command,
            "model" => Column::Model,
            "tokens_in" => Column::TokensIn,
            "tokens_out" => Column::TokensOut,
            _ => return None,
        })
    }

    fn set(self, ev: &mut Event, value: Text) {
        let slot = match self {
            Column::Product => &mut ev.product,
            Column::Action => &mut ev.action,
            Column::User => &mut ev.user,
            Column::Session => &mut ev.session,
            Column::Host => &mut ev.host,
            Column::Tool => &mut ev.tool,
            Column::McpServer => &mut ev.mcp_server,
            Column::Connector => &mut ev.connector,
            Column::Target => &mut ev.target,
            Column::Domain => &mut ev.domain,
            Column::Path => &mut ev.path,
            Column::Command => {
                // An argument vector (ECS `process.args`) reads as the command line it was.
                ev.command = Some(joined_args(&value).map_or(value, Text::from));
                return;
            }
            Column::Model => &mut ev.model,
            Column::TokensIn | Column::TokensOut => {
                // Numbers sometimes arrive as strings or doubles; keep the raw
                // text in attrs when it is not a number.
                if let Some(n) = Val::Str(value.as_str().into())
                    .as_i64()
                    .or_else(|| value.parse::<f64>().ok().map(|f| f as i64))
                {
                    if self == Column::TokensIn {
                        ev.tokens_in = Some(n);
                    } else {
                        ev.tokens_out = Some(n);
                    }
                } else {
                    let name = if self == Column::TokensIn {
                        "tokens_in"
                    } else {
                        "tokens_out"
                    };
                    ev.attrs.insert(name, value);
                }
                return;
            }
        };
        *slot = Some(value);
    }
}

/// One compiled source-family mapping.
#[derive(Debug)]
pub struct Mapping {
    pub name: String,
    pub file: String,
    source: Source,
    signals: Vec<Signal>,
    priority: i32,
    when: Pred,
    expand_json: Vec<String>,
    arguments: Vec<String>,
    /// Derived values by their view key (`@name`).
    derive: Vec<(String, Vec<ValueSource>)>,
    columns: Vec<(Column, Vec<ValueSource>)>,
    kinds: Vec<CompiledCase>,
    outcome: Vec<(Pred, Outcome)>,
    interactive: Option<Pred>,
}

#[derive(Debug)]
struct Verb {
    action: String,
    writes: bool,
}

/// All mappings plus the verb and connector tables, ready to apply.
#[derive(Debug)]
pub struct MappingSet {
    mappings: Vec<Mapping>,
    verbs: BTreeMap<String, Verb>,
    connectors: Vec<(String, Regex)>,
    items: Option<ItemLists>,
}

/// The attribute that says how many objects one call acts on (see [`ItemLists`]).
pub const ITEMS_ATTR: &str = "vigil.items";

/// What the mapping step decided for one record.
pub struct Applied<'m> {
    pub mapping: &'m str,
}

impl MappingSet {
    /// The embedded default pack plus every `*.yaml`/`*.yml` file in `extra` (files or directories).
    pub fn load(extra: &[PathBuf]) -> Result<MappingSet, MappingError> {
        let mut files: Vec<(String, String)> = DEFAULT_PACK
            .iter()
            .map(|(n, t)| (format!("<default>/{n}"), t.to_string()))
            .collect();
        for path in extra {
            for file in yaml_files(path)? {
                let name = file.display().to_string();
                let meta = std::fs::metadata(&file).map_err(|e| MappingError::Io {
                    file: name.clone(),
                    source: e,
                })?;
                if meta.len() as usize > MAX_FILE_BYTES {
                    return Err(MappingError::Invalid {
                        file: name,
                        mapping: String::new(),
                        message: format!("file is {} bytes, more than the {MAX_FILE_BYTES} a mapping file may have", meta.len()),
                    });
                }
                let text = std::fs::read_to_string(&file).map_err(|e| MappingError::Io {
                    file: name.clone(),
                    source: e,
                })?;
                files.push((name, text));
            }
        }
        Self::from_texts(&files)
    }

    /// Compiles mapping files given as (name, YAML text); later files override earlier ones by mapping name.
    pub fn from_texts(files: &[(String, String)]) -> Result<MappingSet, MappingError> {
        let mut by_name: BTreeMap<String, Mapping> = BTreeMap::new();
        let mut verbs = BTreeMap::new();
        let mut connectors = Vec::new();
        let mut items = None;
        for (file, text) in files {
            let spec: FileSpec = serde_yaml::from_str(text).map_err(|e| {
                let loc = e.location();
                MappingError::Parse {
                    file: file.clone(),
                    line: loc.as_ref().map_or(0, |l| l.line()),
                    column: loc.as_ref().map_or(0, |l| l.column()),
                    message: e.to_string(),
                }
            })?;
            for m in spec.mappings {
                let compiled = compile_mapping(file, m).map_err(|e| at_line(e, text))?;
                by_name.insert(compiled.name.clone(), compiled);
            }
            for v in spec.verbs {
                for w in v.words {
                    verbs.insert(
                        w.to_lowercase(),
                        Verb {
                            action: v.action.clone(),
                            writes: v.writes,
                        },
                    );
                }
            }
            if let Some(i) = spec.items {
                let table = ItemLists::new(&i.names, i.objects.as_deref(), i.except.as_deref());
                items = Some(table.map_err(|e| MappingError::Invalid {
                    file: file.clone(),
                    mapping: "items".into(),
                    message: e.to_string(),
                })?);
            }
            for c in spec.connectors {
                for p in c.patterns {
                    let re =
                        Regex::new(&format!("(?i){p}")).map_err(|e| MappingError::Invalid {
                            file: file.clone(),
                            mapping: format!("connector {}", c.name),
                            message: e.to_string(),
                        })?;
                    connectors.push((c.name.clone(), re));
                }
            }
        }
        let mut mappings: Vec<Mapping> = by_name.into_values().collect();
        mappings.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.name.cmp(&b.name))
        });
        Ok(MappingSet {
            mappings,
            verbs,
            connectors,
            items,
        })
    }

    pub fn mappings(&self) -> impl Iterator<Item = &Mapping> {
        self.mappings.iter()
    }

    /// Fills `ev` from the view with the first mapping that applies. Returns the mapping's name.
    pub fn apply<'m>(
        &'m self,
        signal: Signal,
        view: &mut RecordView<'m>,
        ev: &mut Event,
    ) -> Option<Applied<'m>> {
        let mapping = self
            .mappings
            .iter()
            .find(|m| m.signals.contains(&signal) && m.when.eval(view))?;
        mapping.fill(self, view, ev);
        Some(Applied {
            mapping: &mapping.name,
        })
    }

    /// The action of a tool name by its first verb word, and whether it writes.
    /// A third-person verb followed by more words is also found
    /// (`SLACK_SENDS_A_MESSAGE`, `GMAIL_DELETES_DRAFT`); a plural at the end
    /// (`list_posts`, `user_tweets`) and participles (`shared_with_me`,
    /// `trashed_files`) are nouns and adjectives, not verbs.
    ///
    /// Tools generated from an HTTP API name the method first (Notion's
    /// `API-post-search`, `API-post-database-query`): after `api`, a method
    /// followed by a reading verb is a read, and so is `submit` followed by
    /// one (`submit_query`).
    ///
    /// Tools generated from resource-oriented APIs name the method last
    /// (`commentThreads.list`, `posts_list`, `drafts_get`), and the resource
    /// may be a verb's word: a `get` at the end, or a reading method (`list`,
    /// `search`, `retrieve`, ...) after a plural, reads (a `list` after a
    /// singular is the noun: `create_task_list`). In a dotted name
    /// (`views.publish`, `gmail.users.messages.send`) the last segment is the
    /// method and is looked at first.
    pub fn verb_of(&self, tool: &str) -> Option<(&str, bool)> {
        // Dotted names (`chat.postMessage`, `views.publish`,
        // `gmail.users.messages.send`) are API methods: the last segment
        // names the method, the segments before it the resource.
        if let Some((resource, method)) = tool.rsplit_once('.') {
            if !resource.is_empty() {
                if let Some(v) = self.verb_of_words(&words(method)) {
                    return Some(v);
                }
            }
        }
        self.verb_of_words(&words(tool))
    }

    fn verb_of_words(&self, words: &[String]) -> Option<(&str, bool)> {
        let last = words.len().saturating_sub(1);
        if last >= 1 {
            let before = words[last - 1].as_str();
            let plural = before.len() >= 4 && before.ends_with('s') && !before.ends_with("ss");
            let method = match words[last].as_str() {
                "get" => true,
                "list" | "search" | "retrieve" | "query" | "find" | "count" | "read" | "fetch"
                | "lookup" | "describe" => plural,
                _ => false,
            };
            if let Some(read) = self
                .verbs
                .get(words[last].as_str())
                .filter(|v| method && !v.writes)
            {
                return Some((read.action.as_str(), false));
            }
        }
        if words.len() > 2
            && words[0] == "api"
            && matches!(words[1].as_str(), "post" | "put" | "patch")
        {
            if let Some(read) = words[2..]
                .iter()
                .find_map(|w| self.verbs.get(w.as_str()).filter(|v| !v.writes))
            {
                return Some((read.action.as_str(), false));
            }
        }
        let (i, verb) = words.iter().enumerate().find_map(|(i, w)| {
            self.verbs
                .get(w.as_str())
                .or_else(|| {
                    if i == last || w.len() < 5 {
                        return None;
                    }
                    [w.strip_suffix("es"), w.strip_suffix('s')]
                        .into_iter()
                        .flatten()
                        .find_map(|s| self.verbs.get(s))
                })
                .map(|v| (i, v))
        })?;
        // A submitted query or search reads (`submit_query`: an asynchronous
        // SELECT); submitting anything else (a form, a review) writes.
        if verb.action == "submit" {
            if let Some(read) = words
                .get(i + 1)
                .and_then(|w| self.verbs.get(w.as_str()))
                .filter(|v| !v.writes)
            {
                return Some((read.action.as_str(), false));
            }
        }
        Some((verb.action.as_str(), verb.writes))
    }

    fn connector_of(&self, candidates: &[Option<&str>]) -> Option<&str> {
        for text in candidates.iter().flatten() {
            if let Some((name, _)) = self.connectors.iter().find(|(_, re)| re.is_match(text)) {
                return Some(name);
            }
        }
        None
    }
}

impl Mapping {
    fn fill<'m>(&'m self, set: &MappingSet, view: &mut RecordView<'m>, ev: &mut Event) {
        // Keys borrowed, not copied: this runs for every record.
        // A handful of keys each: a list scan beats hashing.
        let mut expanded: Vec<&str> = Vec::new();
        let mut items = 0;
        for key in &self.expand_json {
            if let Some(n) = view.expand_json(key, set.items.as_ref()) {
                expanded.push(key);
                items = items.max(n);
            }
        }
        // The first attribute holding the call's arguments gives `args.*`.
        let mut args_from = None;
        for key in &self.arguments {
            if expanded.contains(&key.as_str()) {
                continue;
            }
            let prefix = if args_from.is_none() {
                ARGS_PREFIX
            } else {
                key
            };
            if let Some(n) = view.expand_json_as(key, prefix, set.items.as_ref()) {
                args_from.get_or_insert(key.as_str());
                expanded.push(key);
                items = items.max(n);
            }
        }
        if items > 0 {
            view.insert(ITEMS_ATTR.into(), Val::Int(items as i64), Origin::Attribute);
        }
        if let Some(from) = args_from {
            view.insert(ARGS_ATTR.into(), Val::Str(from.into()), Origin::Attribute);
        }
        for (key, sources) in &self.derive {
            if let Some((v, _)) = sources.iter().find_map(|s| s.extract(view)) {
                view.insert(key.as_str().into(), Val::Str(v.into()), Origin::Derived);
            }
        }
        let view: &RecordView<'_> = view;
        ev.source = self.source;
        let mut taken: Vec<&str> = Vec::with_capacity(self.columns.len());
        let mut fill_column = |col: Column, sources: &[ValueSource], ev: &mut Event| {
            if let Some((value, key)) = sources.iter().find_map(|s| s.extract(view)) {
                if let Some(k) = key {
                    taken.push(k);
                }
                col.set(ev, value);
            }
        };
        for (col, sources) in &self.columns {
            fill_column(*col, sources, ev);
        }
        let case = self.kinds.iter().find(|c| c.when.eval(view));
        let mut interactive = self.interactive.as_ref().is_some_and(|p| p.eval(view));
        if let Some(case) = case {
            for (col, sources) in &case.set {
                fill_column(*col, sources, ev);
            }
            if let Some(a) = &case.action {
                ev.action = Some(Text::from(a.as_str()));
            }
            interactive |= case.interactive;
            ev.kind = match case.kind {
                KindChoice::Fixed(k) => k,
                KindChoice::FromVerb => {
                    let verb = ev.tool.as_deref().and_then(|t| set.verb_of(t));
                    if ev.action.is_none() {
                        ev.action = verb.map(|(a, _)| Text::from(a));
                    }
                    if verb.is_some_and(|(_, writes)| writes) {
                        EventKind::ConnectorAction
                    } else {
                        EventKind::ToolCall
                    }
                }
            };
        }
        ev.interactive = interactive;
        if let Some((_, o)) = self.outcome.iter().find(|(p, _)| p.eval(view)) {
            ev.outcome = *o;
        }

        // Generic completion that every source family wants.
        // An e-mail address names one person however a source writes it
        // (`Raj.Patel@Contoso.IO` in a gateway's `enduser.id`, lower-case in
        // the agent's `user.email`): one key for both. Account names keep
        // their case (Linux and macOS accounts differ by it).
        if let Some(u) = &mut ev.user {
            if u.contains('@') && u.chars().any(char::is_uppercase) {
                *u = Text::from(u.to_lowercase());
            }
        }
        if ev.domain.is_none() {
            ev.domain = ev.target.as_deref().and_then(host_of).map(Text::from);
        }
        if let Some(d) = &mut ev.domain {
            let t = d.trim_end_matches('.');
            if t.len() != d.len() || t.bytes().any(|b| b.is_ascii_uppercase()) {
                *d = Text::from(t.to_ascii_lowercase());
            }
        }
        let names_a_connector = ev.kind == EventKind::ConnectorAction
            || (ev.mcp_server.is_some()
                && matches!(ev.kind, EventKind::ToolCall | EventKind::McpConnect));
        if ev.connector.is_none() && names_a_connector {
            ev.connector = set
                .connector_of(&[
                    ev.domain.as_deref(),
                    ev.mcp_server.as_deref(),
                    ev.tool.as_deref(),
                ])
                .map(Text::from);
        }
        if ev.product.is_none() {
            if let Some(Val::Str(s)) = view.get("resource.service.name") {
                ev.product = Some(Text::from(s.as_ref()));
            }
        }

        // The kept keys and values become the event's attributes, in key order.
        let pre = std::mem::take(&mut ev.attrs);
        let mut entries: SmallVec<[(&str, AttrValue<'_, '_>); 32]> = SmallVec::new();
        let mut shape = Shape::default();
        for (key, value) in &pre {
            shape.add(key, crate::record::hash_key(key), value.len());
            entries.push((key, AttrValue::Text(value)));
        }
        view.for_each(|key, hash, val, origin| {
            if origin != Origin::Derived && !taken.contains(&key) && !expanded.contains(&key) {
                shape.add(key, hash, val.text_len_hint());
                entries.push((key, AttrValue::View(val)));
            }
        });
        ev.attrs = sorted_attrs(&entries, shape);
    }
}

/// A value of an event's attributes: one set by a column, or one of the view.
#[derive(Clone, Copy)]
enum AttrValue<'v, 'a> {
    Text(&'v str),
    View(&'v Val<'a>),
}

impl AttrValue<'_, '_> {
    fn write(self, out: &mut String) {
        match self {
            AttrValue::Text(t) => out.push_str(t),
            AttrValue::View(v) => v.write_text(out),
        }
    }
}

/// What the attributes of a record look like: a fingerprint of their keys'
/// hashes in the order the view visits them, and the bytes they need.
#[derive(Default, Clone, Copy)]
struct Shape {
    print: u64,
    bytes: usize,
}

impl Shape {
    fn add(&mut self, key: &str, hash: u64, value_len: usize) {
        self.print = (self.print.rotate_left(5) ^ hash).wrapping_mul(0x517c_c1b7_2722_0a95);
        self.bytes += key.len() + value_len;
    }
}

/// Sorting orders remembered per shape, in a few slots by fingerprint.
const ORDER_SLOTS: usize = 16;
/// Records with more attributes than this are sorted every time.
const MAX_REMEMBERED: usize = 256;

#[derive(Default)]
struct Order {
    print: u64,
    len: usize,
    /// Indices into the entries, in key order, repeated keys left out.
    perm: Vec<u32>,
}

/// The entries (the first of repeated keys set by a column, then the
/// view's, whose keys are unique) as attributes in key order; of repeated
/// keys the last wins.
///
/// Records of one shape (a source's event type) visit their keys in the
/// same order, so the order that sorted the last record of that shape is
/// tried first. `Attrs::from_ascending` checks it key by key as it builds,
/// so a wrong guess (a fingerprint collision) costs a sort, never a wrong
/// map: most records are not sorted at all.
fn sorted_attrs(entries: &[(&str, AttrValue<'_, '_>)], shape: Shape) -> event::Attrs {
    thread_local! {
        static ORDERS: std::cell::RefCell<Vec<Order>> = std::cell::RefCell::new(
            (0..ORDER_SLOTS).map(|_| Order::default()).collect(),
        );
    }
    let build = |perm: &[u32]| {
        event::Attrs::from_ascending(
            perm.iter().map(|&i| entries[i as usize]),
            shape.bytes,
            AttrValue::write,
        )
    };
    ORDERS.with_borrow_mut(|orders| {
        let slot = &mut orders[shape.print as usize % ORDER_SLOTS];
        if slot.print == shape.print && slot.len == entries.len() {
            if let Some(attrs) = build(&slot.perm) {
                return attrs;
            }
        }
        let mut perm: Vec<u32> = (0..entries.len() as u32).collect();
        event::attrs::sort_last_wins(&mut perm, |i| entries[*i as usize].0);
        let attrs = build(&perm).expect("sorted keys without repeats are ascending");
        if entries.len() <= MAX_REMEMBERED {
            *slot = Order {
                print: shape.print,
                len: entries.len(),
                perm,
            };
        }
        attrs
    })
}

/// Splits a tool name into lower-case words: `chat.postMessage` -> chat, post, message.
pub fn words(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for ch in name.chars() {
        if !ch.is_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if ch.is_uppercase() && prev_lower && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        prev_lower = ch.is_lowercase() || ch.is_ascii_digit();
        cur.extend(ch.to_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Host of a URL (`https://files.example.net:8443/x` -> `files.example.net`), or of `host:port`.
pub fn host_of(target: &str) -> Option<String> {
    let t = target.trim();
    let rest = match t.find("://") {
        Some(i) => &t[i + 3..],
        None => t,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let host = if let Some(stripped) = host_port.strip_prefix('[') {
        stripped.split(']').next()?
    } else {
        host_port.split(':').next()?
    };
    (!host.is_empty() && !host.contains(char::is_whitespace)).then(|| host.to_ascii_lowercase())
}

fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, MappingError> {
    let io = |e| MappingError::Io {
        file: path.display().to_string(),
        source: e,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// A compile error with the line it is about, as far as the text shows it:
/// the first line, from the mapping's `name:` on, that holds the value the
/// message quotes in backticks (`pth`, `user_prmpt`), else the `name:` line.
fn at_line(e: MappingError, text: &str) -> MappingError {
    let MappingError::Invalid {
        file,
        mapping,
        message,
    } = e
    else {
        return e;
    };
    let lines: Vec<&str> = text.lines().collect();
    let named = |l: &&str| {
        let l = l.trim_start().trim_start_matches("- ");
        l.strip_prefix("name:")
            .is_some_and(|v| v.trim().trim_matches(['"', '\'']) == mapping)
    };
    let start = lines.iter().position(named);
    let quoted = message.split('`').nth(1).filter(|q| !q.is_empty());
    let line = start.map(|s| {
        // Up to the next mapping's name, not into it.
        let end = lines[s + 1..]
            .iter()
            .position(|l| l.trim_start().starts_with("- name:"))
            .map_or(lines.len(), |n| s + 1 + n);
        quoted
            .and_then(|q| lines[s..end].iter().position(|l| l.contains(q)))
            .map_or(s, |i| s + i)
            + 1
    });
    MappingError::Invalid {
        file: match line {
            Some(l) => format!("{file}:{l}"),
            None => file,
        },
        mapping,
        message,
    }
}

fn compile_mapping(file: &str, m: MappingSpec) -> Result<Mapping, MappingError> {
    let invalid = |message: String| MappingError::Invalid {
        file: file.to_string(),
        mapping: m.name.clone(),
        message,
    };
    let when = match &m.when {
        Some(p) => compile_pred(p).map_err(&invalid)?,
        None => Pred::True,
    };
    let sources = |list: &[SourceSpec]| -> Result<Vec<ValueSource>, String> {
        list.iter().map(compile_source).collect()
    };
    let mut derive = Vec::new();
    for (name, list) in &m.derive {
        derive.push((format!("@{name}"), sources(list).map_err(&invalid)?));
    }
    let columns_of = |map: &BTreeMap<String, Vec<SourceSpec>>| -> Result<Vec<(Column, Vec<ValueSource>)>, String> {
        map.iter()
            .map(|(name, list)| {
                let col = Column::parse(name).ok_or_else(|| format!("unknown column `{name}`"))?;
                Ok((col, sources(list)?))
            })
            .collect()
    };
    let columns = columns_of(&m.columns).map_err(&invalid)?;
    let mut kinds = Vec::new();
    for c in &m.kinds {
        let kind = if c.kind == "from_verb" {
            KindChoice::FromVerb
        } else {
            KindChoice::Fixed(
                EventKind::parse(&c.kind)
                    .ok_or_else(|| invalid(format!("unknown kind `{}`", c.kind)))?,
            )
        };
        kinds.push(CompiledCase {
            when: c
                .when
                .as_ref()
                .map(compile_pred)
                .transpose()
                .map_err(&invalid)?
                .unwrap_or(Pred::True),
            kind,
            action: c.action.clone(),
            interactive: c.interactive,
            set: columns_of(&c.set).map_err(&invalid)?,
        });
    }
    let mut outcome = Vec::new();
    for o in &m.outcome {
        outcome.push((
            o.when
                .as_ref()
                .map(compile_pred)
                .transpose()
                .map_err(&invalid)?
                .unwrap_or(Pred::True),
            o.value,
        ));
    }
    let interactive = m
        .interactive
        .as_ref()
        .map(compile_pred)
        .transpose()
        .map_err(&invalid)?;
    if m.signals.is_empty() {
        return Err(invalid("`signals` is empty".into()));
    }
    Ok(Mapping {
        name: m.name.clone(),
        file: file.to_string(),
        source: m.source,
        signals: m.signals.clone(),
        priority: m.priority,
        when,
        expand_json: m.expand_json.clone(),
        arguments: m.arguments.clone(),
        derive,
        columns,
        kinds,
        outcome,
        interactive,
    })
}

fn compile_source(s: &SourceSpec) -> Result<ValueSource, String> {
    Ok(match s {
        SourceSpec::Key(k) => ValueSource {
            field: Some(Key::new(k.as_str())),
            literal: None,
            pattern: None,
            lower: false,
            when: None,
        },
        SourceSpec::Full(f) => {
            if f.field.is_some() == f.value.is_some() {
                return Err("a source needs exactly one of `field` or `value`".into());
            }
            ValueSource {
                field: f.field.as_deref().map(Key::new),
                literal: f.value.clone(),
                pattern: f
                    .regex
                    .as_deref()
                    .map(Pattern::new)
                    .transpose()
                    .map_err(|e| e.to_string())?,
                lower: f.lower,
                when: f.when.as_deref().map(compile_pred).transpose()?,
            }
        }
    })
}

fn compile_pred(p: &PredSpec) -> Result<Pred, String> {
    let mut parts = Vec::new();
    if let Some(all) = &p.all {
        parts.push(Pred::All(
            all.iter().map(compile_pred).collect::<Result<_, _>>()?,
        ));
    }
    if let Some(any) = &p.any {
        parts.push(Pred::Any(
            any.iter().map(compile_pred).collect::<Result<_, _>>()?,
        ));
    }
    if let Some(not) = &p.not {
        parts.push(Pred::Not(Box::new(compile_pred(not)?)));
    }
    let mut tests = Vec::new();
    let fold = |v: &String| {
        if p.nocase {
            v.to_lowercase()
        } else {
            v.clone()
        }
    };
    if let Some(v) = p.exists {
        tests.push(Test::Exists(v));
    }
    if let Some(v) = &p.eq {
        tests.push(Test::Eq(fold(v)));
    }
    if let Some(v) = &p.in_ {
        tests.push(Test::In(v.iter().map(fold).collect()));
    }
    if let Some(v) = &p.prefix {
        tests.push(Test::Prefix(fold(v)));
    }
    if let Some(v) = &p.suffix {
        tests.push(Test::Suffix(fold(v)));
    }
    if let Some(v) = &p.contains {
        tests.push(Test::Contains(fold(v)));
    }
    if let Some(v) = &p.regex {
        let re = if p.nocase {
            format!("(?i){v}")
        } else {
            v.clone()
        };
        tests.push(Test::Regex(Regex::new(&re).map_err(|e| e.to_string())?));
    }
    match (&p.field, tests.is_empty()) {
        (Some(field), false) => {
            for test in tests {
                parts.push(Pred::Field {
                    key: Key::new(field.as_str()),
                    test,
                    nocase: p.nocase,
                });
            }
        }
        (Some(field), true) => {
            return Err(format!(
            "condition on `{field}` has no test (eq, in, prefix, suffix, contains, regex, exists)"
        ))
        }
        (None, false) => return Err("a test (eq, in, ...) needs a `field`".into()),
        (None, true) => {}
    }
    Ok(match parts.len() {
        0 => return Err("empty condition".into()),
        1 => parts.pop().expect("one element"),
        _ => Pred::All(parts),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A remembered order that does not fit (as after a fingerprint
    /// collision) is caught and the entries are sorted; repeated keys keep
    /// the last value.
    #[test]
    fn attributes_come_out_sorted_whatever_order_was_remembered() {
        let one = Val::Int(1);
        let two = Val::Str("2".into());
        let shape = Shape {
            print: 42,
            bytes: 0,
        };
        let pairs = |a: event::Attrs| {
            a.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
        };
        let first = [
            ("b", AttrValue::View(&one)),
            ("a", AttrValue::Text("x")),
            ("c", AttrValue::View(&two)),
        ];
        assert_eq!(pairs(sorted_attrs(&first, shape)), ["a=x", "b=1", "c=2"]);
        // Same fingerprint and length, other keys in another order.
        let second = [
            ("z", AttrValue::Text("26")),
            ("y", AttrValue::View(&one)),
            ("m", AttrValue::Text("13")),
        ];
        assert_eq!(pairs(sorted_attrs(&second, shape)), ["m=13", "y=1", "z=26"]);
        assert_eq!(pairs(sorted_attrs(&first, shape)), ["a=x", "b=1", "c=2"]);
        let repeated = [
            ("k", AttrValue::Text("column")),
            ("a", AttrValue::View(&one)),
            ("k", AttrValue::View(&two)),
        ];
        for _ in 0..2 {
            assert_eq!(pairs(sorted_attrs(&repeated, shape)), ["a=1", "k=2"]);
        }
    }

    #[test]
    fn every_optional_event_column_can_be_set_by_a_mapping() {
        // Mappings set the optional text and number columns; the rest (time,
        // ids, tenant, source, kind, outcome, interactive, attrs) have their
        // own mapping keys. A new optional column must be added here too.
        let own_keys = [
            "time",
            "observed_time",
            "event_id",
            "tenant",
            "source",
            "kind",
            "outcome",
            "interactive",
            "attrs",
        ];
        for name in event::EVENT_FIELDS {
            if !own_keys.contains(name) {
                assert!(
                    Column::parse(name).is_some(),
                    "mappings cannot set `{name}`"
                );
            }
        }
    }

    #[test]
    fn words_split_snake_camel_and_dots() {
        assert_eq!(words("chat.postMessage"), ["chat", "post", "message"]);
        assert_eq!(words("slack_post_message"), ["slack", "post", "message"]);
        assert_eq!(
            words("mcp__gmail__send-email"),
            ["mcp", "gmail", "send", "email"]
        );
        assert_eq!(words("HTTPGet"), ["httpget"]);
    }

    #[test]
    fn hosts_come_out_of_urls_and_addresses() {
        assert_eq!(
            host_of("https://files.Anon-Share.net/upload?x=1").as_deref(),
            Some("files.anon-share.net")
        );
        assert_eq!(
            host_of("http://user:pw@h.example.com:8080/").as_deref(),
            Some("h.example.com")
        );
        assert_eq!(host_of("mcp.slack.com").as_deref(), Some("mcp.slack.com"));
        assert_eq!(host_of("http://[::1]:4318/v1").as_deref(), Some("::1"));
        assert_eq!(host_of("not a url"), None);
    }

    #[test]
    fn default_pack_compiles() {
        let set = MappingSet::from_texts(
            &DEFAULT_PACK
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect::<Vec<_>>(),
        )
        .expect("default pack compiles");
        assert!(set.mappings().count() >= 5);
        assert_eq!(set.verb_of("slack_post_message"), Some(("post", true)));
        assert_eq!(set.verb_of("delete_email"), Some(("delete", true)));
        assert_eq!(
            set.verb_of("slack_get_channel_history"),
            Some(("read", false))
        );
        assert_eq!(set.verb_of("chat.postMessage"), Some(("post", true)));
        assert_eq!(set.verb_of("gmail_trash_message"), Some(("delete", true)));
        // A submitted query reads; a submitted form or review writes.
        assert_eq!(set.verb_of("submit_query"), Some(("read", false)));
        assert_eq!(
            set.verb_of("snowflake_submit_search"),
            Some(("read", false))
        );
        assert_eq!(set.verb_of("submit_form"), Some(("submit", true)));
        // The method last (resource-oriented APIs), the resource a verb's word.
        for read in [
            "comment_threads_list",
            "posts_list",
            "drafts_get",
            "commentThreads.list",
            "posts_search",
            "schedules_retrieve",
            "gmail.users.drafts.get",
            "conversations.history",
        ] {
            assert_eq!(set.verb_of(read), Some(("read", false)), "{read}");
        }
        // A dotted name's last segment is its method.
        for (write, action) in [
            ("views.publish", "post"),
            ("checks.create", "create"),
            ("checks.update", "update"),
            ("reactions.add", "create"),
            ("gmail.users.messages.send", "send"),
            ("calendar.events.delete", "delete"),
        ] {
            assert_eq!(set.verb_of(write), Some((action, true)), "{write}");
        }
        for write in [
            "create_task_list",
            "add_to_list",
            "delete_list",
            "share_list",
        ] {
            assert_eq!(set.verb_of(write).map(|v| v.1), Some(true), "{write}");
        }
        assert_eq!(
            set.verb_of("submit_pull_request_review"),
            Some(("submit", true))
        );
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let err = MappingSet::from_texts(&[(
            "m.yaml".into(),
            "mappings:\n  - name: x\n    source: agent\n    signals: [log]\n    colums: {}\n"
                .into(),
        )])
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("m.yaml:5:"), "{err}");
        assert!(err.contains("colums"), "{err}");
        let err = MappingSet::from_texts(&[(
            "m.yaml".into(),
            "mappings:\n  - name: x\n    source: agent\n    signals: [log]\n    columns: {usr: [user.email]}\n".into(),
        )])
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown column `usr`"), "{err}");
        assert!(err.starts_with("m.yaml:5: mapping `x`"), "{err}");
        // A source's condition is checked like any other.
        let err = MappingSet::from_texts(&[(
            "m.yaml".into(),
            "mappings:\n  - name: x\n    source: agent\n    signals: [log]\n    columns:\n      user:\n        - {field: user.name, when: {feild: os.type, eq: windows}}\n".into(),
        )])
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("m.yaml:"), "{err}");
        assert!(err.contains("unknown field `feild`"), "{err}");
        // The second mapping of a file: its own line, not the first's.
        let err = MappingSet::from_texts(&[(
            "m.yaml".into(),
            "mappings:\n  - name: a\n    source: agent\n    signals: [log]\n    kinds:\n      - {kind: user_prompt}\n  - name: b\n    source: agent\n    signals: [log]\n    kinds:\n      - {kind: user_prmpt}\n".into(),
        )])
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("m.yaml:11: mapping `b`: unknown kind `user_prmpt`"),
            "{err}"
        );
    }
}
