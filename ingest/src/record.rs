//! A flat view of one OTLP record (log record, span or metric data point)
//! with its resource and scope, that mapping files address by key.
//!
//! Keys: attribute names as sent (nested maps flattened with `.`), resource
//! attributes as `resource.<name>`, and the record's own fields under fixed
//! names (`body`, `body.<key>` for a map body, `event_name`, `severity_text`,
//! `span.name`, `span.kind`, `span.status`, `metric.name`, `metric.value`, ...).
//! Derived values that mappings compute start with `@` and never reach `attrs`.

use hashbrown::HashTable;
use std::borrow::Cow;
use std::hash::BuildHasher;
use std::sync::Arc;

use crate::otlp::{AnyRef, KvRef};

/// Deepest nesting of maps and arrays that is flattened; deeper content is
/// kept as a marker so hostile input cannot make normalization recurse without end.
pub const MAX_DEPTH: usize = 16;

/// One scalar value of the view. Arrays and over-deep values are rendered as JSON text.
/// Strings borrow from the request where they can.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Double(f64),
    Bool(bool),
}

impl Val<'_> {
    pub fn as_text(&self) -> String {
        let mut out = String::new();
        self.write_text(&mut out);
        out
    }

    /// Appends the value as text to `out`: numbers in decimal (a double
    /// as Rust prints it, `NaN` and `inf` included: JSON has neither, and
    /// this keeps what was sent, readably), booleans as `true`/`false`.
    pub fn write_text(&self, out: &mut String) {
        use std::fmt::Write as _;
        match self {
            Val::Str(s) => out.push_str(s),
            Val::Int(i) => out.push_str(itoa::Buffer::new().format(*i)),
            Val::Double(d) => {
                let _ = write!(out, "{d}");
            }
            Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        }
    }

    /// About how many bytes [`Val::write_text`] appends: exact for a string,
    /// room for most numbers otherwise.
    pub fn text_len_hint(&self) -> usize {
        match self {
            Val::Str(s) => s.len(),
            Val::Int(_) => 20,
            Val::Double(_) => 24,
            Val::Bool(_) => 5,
        }
    }

    /// The value as text, borrowed when it is a string.
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Val::Str(s) => Cow::Borrowed(s),
            other => Cow::Owned(other.as_text()),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Integer value; strings holding integers (a common exporter quirk) count.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            Val::Double(d) if d.is_finite() && d.fract() == 0.0 => Some(*d as i64),
            Val::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// Boolean value; `"true"`/`"false"` strings (Claude Code's `success`) count.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Val::Bool(b) => Some(*b),
            Val::Str(s) if s.eq_ignore_ascii_case("true") => Some(true),
            Val::Str(s) if s.eq_ignore_ascii_case("false") => Some(false),
            Val::Int(i) => Some(*i != 0),
            _ => None,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            Val::Str(s) => serde_json::Value::String(s.to_string()),
            Val::Int(i) => (*i).into(),
            Val::Double(d) => serde_json::Number::from_f64(*d)
                .map(serde_json::Value::Number)
                .unwrap_or_else(|| serde_json::Value::String(d.to_string())),
            Val::Bool(b) => (*b).into(),
        }
    }
}

/// Which argument names hold the objects one call acts on (`messageIds`,
/// `file_ids`, `paths`): the mapping files' `items:` table. A call whose
/// arguments hold such a list of N values stands for N actions
/// (`attrs["vigil.items"]`), as a batch delete of 400 mails is 400 deletes.
#[derive(Debug, Clone)]
pub struct ItemLists {
    /// Names of lists of plain values (ids, paths).
    names: regex::Regex,
    /// Names of lists of objects, one per object acted on (Dropbox's batch
    /// `entries`, Salesforce DML's `records`).
    objects: Option<regex::Regex>,
    except: Option<regex::Regex>,
}

impl ItemLists {
    /// A table from its regexes: `names` for lists of plain values,
    /// `objects` for lists of objects, `except` for names that list
    /// something else.
    pub fn new(
        names: &str,
        objects: Option<&str>,
        except: Option<&str>,
    ) -> Result<ItemLists, regex::Error> {
        Ok(ItemLists {
            names: regex::Regex::new(names)?,
            objects: objects.map(regex::Regex::new).transpose()?,
            except: except.map(regex::Regex::new).transpose()?,
        })
    }

    /// Whether an argument of this name, a list of plain values (`scalars`)
    /// or of anything else, lists objects acted on.
    pub fn counts(&self, name: &str, scalars: bool) -> bool {
        let named = if scalars {
            self.names.is_match(name)
        } else {
            self.objects.as_ref().is_some_and(|o| o.is_match(name))
        };
        named && !self.except.as_ref().is_some_and(|x| x.is_match(name))
    }
}

/// Where a key of the view came from; decides how it is named in `attrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A record attribute (or a value parsed out of one): kept under its own name.
    Attribute,
    /// A resource attribute: kept as `resource.<name>`.
    Resource,
    /// A field of the record itself (body, span name, ids): kept under its view name.
    Record,
    /// Computed by a mapping (`@name`): never kept.
    Derived,
}

/// The hash of a view key; [`Key`] keeps it with the name so that lookups
/// of the mapping's fixed keys hash nothing.
pub(crate) fn hash_key(key: &str) -> u64 {
    rustc_hash::FxBuildHasher.hash_one(key)
}

/// A key a mapping looks up in every record, hashed once when it is compiled.
#[derive(Debug, Clone)]
pub struct Key {
    name: String,
    hash: u64,
}

impl Key {
    pub fn new(name: impl Into<String>) -> Key {
        let name = name.into();
        let hash = hash_key(&name);
        Key { name, hash }
    }
}

#[derive(Debug, Clone)]
struct Entry<'a> {
    key: Cow<'a, str>,
    hash: u64,
    val: Val<'a>,
    origin: Origin,
}

/// The flat view of one record. Keys are unique per level; `for_each`
/// visits them in the tables' order (what the view feeds, `attrs`, is sorted
/// by key).
///
/// A view may sit on a shared parent (the resource and scope of a batch of
/// records), so what every record of a request has in common is built once.
/// A lookup hashes its key once for all levels (and not at all for a
/// [`Key`]): most lookups miss the record's own level and go on to its
/// scope's and resource's.
#[derive(Debug, Default, Clone)]
pub struct RecordView<'a> {
    parent: Option<Arc<RecordView<'a>>>,
    values: HashTable<Entry<'a>>,
    /// One bit per key's hash ([`bloom_bit`]): most lookups miss most
    /// levels, and this turns nearly all of those misses away unprobed.
    bloom: u64,
}

/// The bit of a key's hash in a level's `bloom` (from the hash's top bits).
fn bloom_bit(hash: u64) -> u64 {
    1 << (hash >> 58)
}

impl<'a> RecordView<'a> {
    /// An empty view on top of `parent`.
    /// With room for about `capacity` keys: growing the map while a record
    /// is read was a visible cost.
    pub fn on(parent: Arc<RecordView<'a>>, capacity: usize) -> Self {
        RecordView {
            parent: Some(parent),
            values: HashTable::with_capacity(capacity),
            bloom: 0,
        }
    }

    /// Forgets this view's own keys (not the parent's), keeping the room it has.
    pub fn clear(&mut self) {
        self.values.clear();
        self.bloom = 0;
    }

    /// Puts this view on another parent (the next resource or scope).
    pub fn set_parent(&mut self, parent: Arc<RecordView<'a>>) {
        self.parent = Some(parent);
    }

    /// The entry of `key` (whose hash is `hash`) at this level only.
    fn own(&self, key: &str, hash: u64) -> Option<&Entry<'a>> {
        if self.bloom & bloom_bit(hash) == 0 {
            return None;
        }
        self.values.find(hash, |e| e.key == key)
    }

    /// The entry of `key` (whose hash is `hash`) at this level or a parent's.
    fn find(&self, key: &str, hash: u64) -> Option<&Entry<'a>> {
        let mut view = self;
        loop {
            if let Some(e) = view.own(key, hash) {
                return Some(e);
            }
            view = view.parent.as_deref()?;
        }
    }

    pub fn get(&self, key: &str) -> Option<&Val<'a>> {
        self.find(key, hash_key(key)).map(|e| &e.val)
    }

    /// [`RecordView::get`] of a key hashed in advance.
    pub fn get_key(&self, key: &Key) -> Option<&Val<'a>> {
        self.find(&key.name, key.hash).map(|e| &e.val)
    }

    /// [`RecordView::get_key`] with the stored key equal to `key`.
    pub fn entry_of(&self, key: &Key) -> Option<(&str, &Val<'a>)> {
        self.find(&key.name, key.hash)
            .map(|e| (e.key.as_ref(), &e.val))
    }

    /// Duplicate attribute keys: the last one wins, as in the OTel SDKs.
    pub fn insert(&mut self, key: Cow<'a, str>, val: Val<'a>, origin: Origin) {
        let hash = hash_key(&key);
        self.bloom |= bloom_bit(hash);
        match self
            .values
            .entry(hash, |e| e.key == key, |e: &Entry<'a>| e.hash)
        {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                let e = o.get_mut();
                e.val = val;
                e.origin = origin;
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(Entry {
                    key,
                    hash,
                    val,
                    origin,
                });
            }
        }
    }

    /// Calls `f` with each key of this view and its parents (the parents'
    /// first), its hash, value and origin; a key set at a lower level hides
    /// a parent's. The order is the tables': it repeats for records whose
    /// keys are the same and were added in the same order.
    pub fn for_each<'s>(&'s self, mut f: impl FnMut(&'s str, u64, &'s Val<'a>, Origin)) {
        self.visit(&|_, _| false, &mut |e| f(&e.key, e.hash, &e.val, e.origin));
    }

    /// [`RecordView::for_each`] of the entries not `hidden` by a lower level.
    fn visit<'s>(&'s self, hidden: &dyn Fn(&str, u64) -> bool, f: &mut dyn FnMut(&'s Entry<'a>)) {
        if let Some(parent) = &self.parent {
            let below = |k: &str, h: u64| hidden(k, h) || self.own(k, h).is_some();
            parent.visit(&below, f);
        }
        for e in &self.values {
            if !hidden(&e.key, e.hash) {
                f(e);
            }
        }
    }

    /// Adds OTLP attributes under `prefix` (empty for record attributes).
    pub fn add_attributes(&mut self, prefix: &str, attrs: &[KvRef<'a>], origin: Origin) {
        for kv in attrs {
            let key = if prefix.is_empty() {
                Cow::Borrowed(kv.key)
            } else {
                Cow::Owned(joined(prefix, "", kv.key))
            };
            self.add_any(key, kv.value.as_ref(), origin, 0);
        }
    }

    /// Adds an AnyValue, flattening maps with `.` and `[name, value]` pair lists
    /// (the Windows event log receiver's `event_data`) into `key.<name>`.
    pub fn add_any(
        &mut self,
        key: Cow<'a, str>,
        value: Option<&AnyRef<'a>>,
        origin: Origin,
        depth: usize,
    ) {
        let Some(value) = value else {
            return;
        };
        if depth >= MAX_DEPTH {
            self.insert(key, Val::Str("<nested too deep>".into()), origin);
            return;
        }
        match value {
            AnyRef::Str(s) => self.insert(key, Val::Str(Cow::Borrowed(s)), origin),
            AnyRef::Bool(b) => self.insert(key, Val::Bool(*b), origin),
            AnyRef::Int(i) => self.insert(key, Val::Int(*i), origin),
            AnyRef::Double(d) => self.insert(key, Val::Double(*d), origin),
            AnyRef::Bytes(b) => self.insert(key, Val::Str(hex::encode(b).into()), origin),
            AnyRef::Strindex(i) => self.insert(key, Val::Int(*i as i64), origin),
            AnyRef::Kvlist(list) => {
                for kv in list {
                    self.add_any(
                        joined(&key, ".", kv.key).into(),
                        kv.value.as_ref(),
                        origin,
                        depth + 1,
                    );
                }
            }
            AnyRef::Array(values) => {
                if let Some(pairs) = name_value_pairs(values) {
                    for (name, v) in pairs {
                        self.add_any(joined(&key, ".", name).into(), v, origin, depth + 1);
                    }
                } else {
                    let json = serde_json::Value::Array(
                        values
                            .iter()
                            .map(|v| any_to_json(v.as_ref(), depth + 1))
                            .collect(),
                    );
                    self.insert(key, Val::Str(json.to_string().into()), origin);
                }
            }
        }
    }

    /// Parses a JSON-string value (Claude Code's `tool_parameters`) and adds its
    /// members as `key.<member>`. Returns `None` when the value is not a JSON
    /// object; otherwise the length of its longest list of objects acted on
    /// (members that `items` names: a batch call's `messageIds`), 0 when it
    /// has none.
    pub fn expand_json(&mut self, key: &str, items: Option<&ItemLists>) -> Option<usize> {
        self.expand_json_as(key, key, items)
    }

    /// [`Self::expand_json`], the members added as `prefix.<member>`: a
    /// tool call's arguments go under `args` whatever the source names them.
    pub fn expand_json_as(
        &mut self,
        key: &str,
        prefix: &str,
        items: Option<&ItemLists>,
    ) -> Option<usize> {
        let Some(Entry {
            val: Val::Str(text),
            origin,
            ..
        }) = self.find(key, hash_key(key))
        else {
            return None;
        };
        let origin = *origin;
        let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(text)
        else {
            return None;
        };
        let mut most = 0;
        for (k, v) in map {
            let found = self.add_json(joined(prefix, ".", &k).into(), &k, &v, origin, 0, items);
            most = most.max(found);
        }
        Some(most)
    }

    /// Adds one JSON member (named `name`, kept as `key`); returns the
    /// longest list of objects acted on within it (see [`Self::expand_json`]).
    fn add_json(
        &mut self,
        key: Cow<'a, str>,
        name: &str,
        v: &serde_json::Value,
        origin: Origin,
        depth: usize,
        items: Option<&ItemLists>,
    ) -> usize {
        use serde_json::Value as J;
        if depth >= MAX_DEPTH {
            self.insert(key, Val::Str("<nested too deep>".into()), origin);
            return 0;
        }
        match v {
            J::Null => {}
            J::Bool(b) => self.insert(key, Val::Bool(*b), origin),
            J::Number(n) => {
                let val = n
                    .as_i64()
                    .map(Val::Int)
                    .unwrap_or_else(|| Val::Double(n.as_f64().unwrap_or(f64::NAN)));
                self.insert(key, val, origin)
            }
            J::String(s) => self.insert(key, Val::Str(s.clone().into()), origin),
            J::Array(list) => {
                self.insert(key, Val::Str(v.to_string().into()), origin);
                let scalars = list
                    .iter()
                    .all(|x| matches!(x, J::String(_) | J::Number(_)));
                if items.is_some_and(|i| i.counts(name, scalars)) {
                    return list.len();
                }
            }
            J::Object(map) => {
                let mut most = 0;
                for (k, inner) in map {
                    let found = self.add_json(
                        joined(&key, ".", k).into(),
                        k,
                        inner,
                        origin,
                        depth + 1,
                        items,
                    );
                    most = most.max(found);
                }
                return most;
            }
        }
        0
    }
}

/// `a`, `sep` and `b` in one string of their exact size (`format!` was a
/// visible cost for the keys of every nested value).
fn joined(a: &str, sep: &str, b: &str) -> String {
    let mut out = String::with_capacity(a.len() + sep.len() + b.len());
    out.push_str(a);
    out.push_str(sep);
    out.push_str(b);
    out
}

/// `[{name: A, value: 1}, {name: B, value: 2}]` as pairs, when every element has that shape,
/// or `[{A: 1}, {B: 2}]`, when every element has one entry and no name repeats (the Windows
/// Event Log receiver's `event_data.data`). A pair whose value is unset adds nothing, like any
/// unset value.
type Pair<'v, 'a> = (&'a str, Option<&'v AnyRef<'a>>);

fn name_value_pairs<'v, 'a>(values: &'v [Option<AnyRef<'a>>]) -> Option<Vec<Pair<'v, 'a>>> {
    if values.is_empty() {
        return None;
    }
    named_pairs(values).or_else(|| single_entries(values))
}

fn single_entries<'v, 'a>(values: &'v [Option<AnyRef<'a>>]) -> Option<Vec<Pair<'v, 'a>>> {
    // Event data has a few dozen names; a longer list is data, and kept as
    // JSON (the repeat check below is quadratic).
    if values.len() > 64 {
        return None;
    }
    let mut out: Vec<Pair<'v, 'a>> = Vec::with_capacity(values.len());
    for v in values {
        let Some(AnyRef::Kvlist(list)) = v else {
            return None;
        };
        let [kv] = list.as_slice() else {
            return None;
        };
        if out.iter().any(|(name, _)| *name == kv.key) {
            return None;
        }
        out.push((kv.key, kv.value.as_ref()));
    }
    Some(out)
}

fn named_pairs<'v, 'a>(values: &'v [Option<AnyRef<'a>>]) -> Option<Vec<Pair<'v, 'a>>> {
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        let Some(AnyRef::Kvlist(list)) = v else {
            return None;
        };
        let mut name = None;
        let mut value = None;
        for kv in list {
            match kv.key {
                "name" | "Name" => match &kv.value {
                    Some(AnyRef::Str(s)) => name = Some(*s),
                    _ => return None,
                },
                "value" | "Value" => value = Some(kv.value.as_ref()),
                _ => return None,
            }
        }
        out.push((name?, value?));
    }
    Some(out)
}

fn any_to_json(v: Option<&AnyRef<'_>>, depth: usize) -> serde_json::Value {
    use serde_json::Value as J;
    if depth >= MAX_DEPTH {
        return J::String("<nested too deep>".into());
    }
    match v {
        None => J::Null,
        Some(AnyRef::Str(s)) => J::String(s.to_string()),
        Some(AnyRef::Bool(b)) => J::Bool(*b),
        Some(AnyRef::Int(i)) => (*i).into(),
        Some(AnyRef::Double(d)) => Val::Double(*d).to_json(),
        Some(AnyRef::Bytes(b)) => J::String(hex::encode(b)),
        Some(AnyRef::Strindex(i)) => (*i).into(),
        Some(AnyRef::Array(a)) => J::Array(
            a.iter()
                .map(|x| any_to_json(x.as_ref(), depth + 1))
                .collect(),
        ),
        Some(AnyRef::Kvlist(l)) => J::Object(
            l.iter()
                .map(|kv| {
                    (
                        kv.key.to_string(),
                        any_to_json(kv.value.as_ref(), depth + 1),
                    )
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp;
    use opentelemetry_proto::tonic::common::v1::{
        any_value, AnyValue, ArrayValue, KeyValue, KeyValueList,
    };

    fn s(v: &str) -> AnyValue {
        AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }
    }
    fn kv(k: &str, v: AnyValue) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(v),
            ..Default::default()
        }
    }
    fn map(kvs: Vec<KeyValue>) -> AnyValue {
        AnyValue {
            value: Some(any_value::Value::KvlistValue(KeyValueList { values: kvs })),
        }
    }

    #[test]
    fn flattens_maps_and_name_value_lists() {
        let event_data = AnyValue {
            value: Some(any_value::Value::ArrayValue(ArrayValue {
                values: vec![
                    map(vec![kv("name", s("TaskName")), kv("value", s("\\Evil"))]),
                    map(vec![
                        kv("name", s("SubjectUserName")),
                        kv("value", s("bob")),
                    ]),
                ],
            })),
        };
        let body = map(vec![
            kv("channel", s("Security")),
            kv("event_data", event_data),
        ]);
        let body = otlp::any(Some(&body));
        let mut view = RecordView::default();
        view.add_any("body".into(), body.as_ref(), Origin::Record, 0);
        assert_eq!(view.get("body.channel"), Some(&Val::Str("Security".into())));
        assert_eq!(
            view.get("body.event_data.TaskName"),
            Some(&Val::Str("\\Evil".into()))
        );
        assert_eq!(
            view.get("body.event_data.SubjectUserName"),
            Some(&Val::Str("bob".into()))
        );
    }

    #[test]
    fn lists_of_one_entry_maps_flatten_unless_a_name_repeats() {
        let list = |entries: &[(&str, &str)]| AnyValue {
            value: Some(any_value::Value::ArrayValue(ArrayValue {
                values: entries
                    .iter()
                    .map(|(k, v)| map(vec![kv(k, s(v))]))
                    .collect(),
            })),
        };
        let data = list(&[("SubjectUserName", "dave"), ("CommandLine", "whoami")]);
        let repeated = list(&[("text", "a"), ("text", "b")]);
        let (data, repeated) = (otlp::any(Some(&data)), otlp::any(Some(&repeated)));
        let mut view = RecordView::default();
        view.add_any("d".into(), data.as_ref(), Origin::Record, 0);
        assert_eq!(
            view.get("d.SubjectUserName"),
            Some(&Val::Str("dave".into()))
        );
        assert_eq!(view.get("d.CommandLine"), Some(&Val::Str("whoami".into())));
        // A repeated name is data, not a record's fields: kept whole as JSON.
        let mut view = RecordView::default();
        view.add_any("d".into(), repeated.as_ref(), Origin::Record, 0);
        assert_eq!(
            view.get("d"),
            Some(&Val::Str(r#"[{"text":"a"},{"text":"b"}]"#.into()))
        );
    }

    #[test]
    fn deep_nesting_stops_at_the_limit() {
        let mut v = s("leaf");
        // Deeper than prost decodes from the wire (100), shallow enough to drop on a test stack.
        for _ in 0..200 {
            v = map(vec![kv("k", v)]);
        }
        let v = otlp::any(Some(&v));
        let mut view = RecordView::default();
        view.add_any("a".into(), v.as_ref(), Origin::Attribute, 0);
        let entries = entries(&view);
        assert_eq!(entries.len(), 1);
        let (key, val, _) = &entries[0];
        assert_eq!(key.matches(".k").count(), MAX_DEPTH);
        assert_eq!(val, &Val::Str("<nested too deep>".into()));
    }

    #[test]
    fn json_strings_expand_and_quirky_types_convert() {
        let mut view = RecordView::default();
        view.insert(
            "tool_parameters".into(),
            Val::Str(
                r#"{"file_path": "/x/.env", "timeout": 30, "dangerouslyDisableSandbox": true}"#
                    .into(),
            ),
            Origin::Attribute,
        );
        assert_eq!(view.expand_json("tool_parameters", None), Some(0));
        assert_eq!(
            view.get("tool_parameters.file_path").and_then(Val::as_str),
            Some("/x/.env")
        );
        assert_eq!(
            view.get("tool_parameters.timeout").and_then(Val::as_i64),
            Some(30)
        );
        assert_eq!(
            view.get("tool_parameters.dangerouslyDisableSandbox")
                .and_then(Val::as_bool),
            Some(true)
        );
        assert_eq!(Val::Str("false".into()).as_bool(), Some(false));
        assert_eq!(Val::Str(" 1200".into()).as_i64(), Some(1200));
        view.insert(
            "broken".into(),
            Val::Str("{not json".into()),
            Origin::Attribute,
        );
        assert_eq!(view.expand_json("broken", None), None);
    }

    #[test]
    fn lists_of_objects_acted_on_are_counted() {
        let items =
            ItemLists::new("(?i)^ids$|[a-z]Ids$", Some("^entries$"), Some("(?i)label")).unwrap();
        let args = |text: &str| {
            let mut view = RecordView::default();
            view.insert(
                "args".into(),
                Val::Str(text.to_string().into()),
                Origin::Attribute,
            );
            let n = view.expand_json("args", Some(&items));
            (n, view.get("args.messageIds").cloned())
        };
        // The longest list named as objects acted on, nested ones too; the list
        // itself is still kept as its JSON text.
        let (n, kept) = args(r#"{"messageIds": ["a", "b", "c"], "params": {"ids": [1, 2, 3, 4]}}"#);
        assert_eq!(n, Some(4));
        assert_eq!(kept, Some(Val::Str(r#"["a","b","c"]"#.into())));
        // Labels, lists of objects and other names are not objects acted on.
        assert_eq!(
            args(r#"{"addLabelIds": ["x", "y"], "to": ["a", "b"]}"#).0,
            Some(0)
        );
        assert_eq!(args(r#"{"ids": [{"id": 1}, {"id": 2}]}"#).0, Some(0));
        // ... unless their name says they are (Dropbox's batch `entries`).
        assert_eq!(
            args(r#"{"entries": [{"path": "/a"}, {"path": "/b"}]}"#).0,
            Some(2)
        );
        assert_eq!(args(r#"{"entries": ["/a", "/b", "/c"]}"#).0, Some(0));
        // Without a table nothing is counted.
        let mut view = RecordView::default();
        view.insert(
            "args".into(),
            Val::Str(r#"{"ids": [1, 2]}"#.into()),
            Origin::Attribute,
        );
        assert_eq!(view.expand_json("args", None), Some(0));
    }

    #[test]
    fn duplicate_keys_keep_the_last_value_once() {
        let attrs = [kv("a", s("1")), kv("a", s("2"))];
        let mut view = RecordView::default();
        view.add_attributes("", &otlp::kvs(&attrs), Origin::Attribute);
        assert_eq!(entries(&view).len(), 1);
        assert_eq!(view.get("a"), Some(&Val::Str("2".into())));
    }

    fn entries<'a>(view: &RecordView<'a>) -> Vec<(String, Val<'a>, Origin)> {
        let mut out = Vec::new();
        view.for_each(|k, h, v, o| {
            assert_eq!(h, hash_key(k), "{k}");
            out.push((k.to_string(), v.clone(), o));
        });
        out
    }

    /// A level reused record after record acts as a map whose last insert
    /// wins, and a parent's keys are found through it unless it hides them.
    #[test]
    fn a_reused_level_acts_as_a_map() {
        let mut rng = crate::test_rng::Rng(0x71e3);
        let mut resource = RecordView::default();
        resource.insert("shared".into(), Val::Int(-1), Origin::Resource);
        resource.insert("resource.only".into(), Val::Int(-2), Origin::Resource);
        let mut view = RecordView::on(Arc::new(resource), 4);
        for round in 0..60 {
            view.clear();
            let mut model: std::collections::BTreeMap<String, i64> = Default::default();
            let pool = 1 + rng.below(100);
            for _ in 0..rng.below(150) {
                let key = match rng.below(10) {
                    0 => "shared".to_string(),
                    _ => format!("k{}", rng.below(pool)),
                };
                let v = rng.below(1000) as i64;
                model.insert(key.clone(), v);
                view.insert(key.into(), Val::Int(v), Origin::Attribute);
            }
            let mut seen = std::collections::BTreeMap::new();
            view.for_each(|k, _, v, _| {
                let Val::Int(i) = v else { panic!("{v:?}") };
                assert!(seen.insert(k.to_string(), *i).is_none(), "{k} twice");
            });
            let mut want = model.clone();
            want.entry("shared".into()).or_insert(-1);
            want.insert("resource.only".into(), -2);
            assert_eq!(seen, want, "round {round}");
            for (k, v) in &want {
                assert_eq!(view.get(k), Some(&Val::Int(*v)), "round {round}: {k}");
                assert_eq!(view.get_key(&Key::new(k.as_str())), Some(&Val::Int(*v)));
            }
            for absent in ["absent", "k-1", "resource.other"] {
                assert_eq!(view.get(absent), None);
            }
        }
    }

    #[test]
    fn every_level_is_visited_once_and_lower_levels_hide_higher_ones() {
        let mut resource = RecordView::default();
        resource.insert("host".into(), Val::Str("r".into()), Origin::Resource);
        resource.insert("shared".into(), Val::Str("r".into()), Origin::Resource);
        let mut scope = RecordView::on(Arc::new(resource), 2);
        scope.insert("shared".into(), Val::Str("s".into()), Origin::Record);
        scope.insert("scope.name".into(), Val::Str("s".into()), Origin::Record);
        let mut record = RecordView::on(Arc::new(scope), 4);
        record.insert("scope.name".into(), Val::Int(1), Origin::Attribute);
        record.insert("own".into(), Val::Bool(true), Origin::Attribute);
        let mut got = entries(&record);
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            [
                ("host".to_string(), Val::Str("r".into()), Origin::Resource),
                ("own".to_string(), Val::Bool(true), Origin::Attribute),
                ("scope.name".to_string(), Val::Int(1), Origin::Attribute),
                ("shared".to_string(), Val::Str("s".into()), Origin::Record),
            ]
        );
        // Parents come first: the record's own keys are the last two.
        let order = entries(&record);
        assert!(order[2..].iter().all(|(_, _, o)| *o == Origin::Attribute));
    }
}
