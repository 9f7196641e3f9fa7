//! Reads OTLP/JSON log and trace requests into the borrowed model of
//! [`crate::otlp`], as [`crate::wire`] does for protobuf: strings borrow from
//! the body where they have no escapes, and the few that do (a JSON string
//! inside an attribute, Claude Code's `tool_parameters`) are unescaped into
//! an arena that lives as long as the body.
//!
//! The reference is opentelemetry-proto's serde decoding into prost types,
//! which allocates every string, key and value, and buffers each `AnyValue`
//! (it is a flattened struct) before reading it. This reader accepts only
//! what it reads exactly as the reference does and answers `None` for
//! anything else (a `null`, a repeated key, an id with a `0x`, a
//! string-table index, any malformed input); the caller then decodes
//! with the reference, which yields the same request or the error a sender
//! is told. Tests compare the two on generated and corrupted requests.

use std::fmt;

/// The arena the unescaped strings of a request live in: one per request.
pub use bumpalo::Bump;
use serde::de::{
    DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use crate::otlp::{
    AnyRef, KvRef, LogRecordRef, LogsRef, RequestRef, ResourceRef, ScopeRef, SpanRef, TracesRef,
};

/// Decodes an OTLP/JSON `ExportLogsServiceRequest`; `None` when the reference must decide.
pub fn decode_logs<'a>(body: &'a [u8], arena: &'a Bump) -> Option<LogsRef<'a>> {
    request(body, Level::new(arena, true)).map(|r| {
        r.map_records(|r| match r {
            Record::Log(l) => Some(l),
            Record::Span(_) => None,
        })
    })?
}

/// Decodes an OTLP/JSON `ExportTraceServiceRequest`; `None` when the reference must decide.
pub fn decode_traces<'a>(body: &'a [u8], arena: &'a Bump) -> Option<TracesRef<'a>> {
    request(body, Level::new(arena, false)).map(|r| {
        r.map_records(|r| match r {
            Record::Span(s) => Some(s),
            Record::Log(_) => None,
        })
    })?
}

/// Reads an OTLP/JSON log body with this reader, else with the reference
/// (calling `by_reference` then), and hands the request to `f`. The error is
/// the reference's, for the sender.
pub fn with_logs<T>(
    body: &[u8],
    by_reference: impl FnOnce(),
    f: impl FnOnce(LogsRef<'_>) -> T,
) -> Result<T, String> {
    let arena = Bump::new();
    if let Some(req) = decode_logs(body, &arena) {
        return Ok(f(req));
    }
    let decoded: ExportLogsServiceRequest = crate::json_decode(body)?;
    by_reference();
    Ok(f(LogsRef::from_prost(&decoded)))
}

/// [`with_logs`] for an OTLP/JSON trace body.
pub fn with_traces<T>(
    body: &[u8],
    by_reference: impl FnOnce(),
    f: impl FnOnce(TracesRef<'_>) -> T,
) -> Result<T, String> {
    let arena = Bump::new();
    if let Some(req) = decode_traces(body, &arena) {
        return Ok(f(req));
    }
    let decoded: ExportTraceServiceRequest = crate::json_decode(body)?;
    by_reference();
    Ok(f(TracesRef::from_prost(&decoded)))
}

fn request<'a>(body: &'a [u8], level: Level<'a>) -> Option<RequestRef<'a, Record<'a>>> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let req = Seed(level, Part::Request).deserialize(&mut de).ok()?;
    de.end().ok()?;
    match req {
        Parsed::Request(r) => Some(r),
        _ => None,
    }
}

/// A log record or a span, while the levels above them are read alike.
#[derive(Debug)]
enum Record<'a> {
    Log(LogRecordRef<'a>),
    Span(SpanRef<'a>),
}

impl<'a> RequestRef<'a, Record<'a>> {
    fn map_records<R>(self, f: impl Fn(Record<'a>) -> Option<R>) -> Option<RequestRef<'a, R>> {
        let mut resources = Vec::with_capacity(self.resources.len());
        for r in self.resources {
            let mut scopes = Vec::with_capacity(r.scopes.len());
            for s in r.scopes {
                let records = s.records.into_iter().map(&f).collect::<Option<Vec<R>>>()?;
                scopes.push(ScopeRef {
                    name: s.name,
                    version: s.version,
                    records,
                });
            }
            resources.push(ResourceRef {
                attributes: r.attributes,
                scopes,
            });
        }
        Some(RequestRef { resources })
    }
}

/// The names of one signal's levels, and the arena.
#[derive(Clone, Copy)]
struct Level<'a> {
    arena: &'a Bump,
    resources: &'static str,
    scopes: &'static str,
    records: &'static str,
    logs: bool,
}

impl<'a> Level<'a> {
    fn new(arena: &'a Bump, logs: bool) -> Self {
        let (resources, scopes, records) = if logs {
            ("resourceLogs", "scopeLogs", "logRecords")
        } else {
            ("resourceSpans", "scopeSpans", "spans")
        };
        Level {
            arena,
            resources,
            scopes,
            records,
            logs,
        }
    }
}

/// What a [`Seed`] reads.
#[derive(Clone, Copy)]
enum Part {
    Request,
    Resources,
    Scopes,
    Records,
    Resource,
    Scope,
}

enum Parsed<'a> {
    Request(RequestRef<'a, Record<'a>>),
    Resources(Vec<ResourceRef<'a, Record<'a>>>),
    Scopes(Vec<ScopeRef<'a, Record<'a>>>),
    Records(Vec<Record<'a>>),
    Resource(Vec<KvRef<'a>>),
    Scope(&'a str, &'a str),
}

/// Reads one part of a request.
struct Seed<'a>(Level<'a>, Part);

impl<'de: 'a, 'a> DeserializeSeed<'de> for Seed<'a> {
    type Value = Parsed<'a>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Parsed<'a>, D::Error> {
        match self.1 {
            Part::Resources | Part::Scopes | Part::Records => d.deserialize_seq(self),
            _ => d.deserialize_map(self),
        }
    }
}

impl<'de: 'a, 'a> Visitor<'de> for Seed<'a> {
    type Value = Parsed<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an OTLP/JSON request")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parsed<'a>, A::Error> {
        let Seed(level, part) = self;
        let hint = seq.size_hint().unwrap_or(0).min(4096);
        Ok(match part {
            Part::Resources => {
                let mut out = Vec::with_capacity(hint);
                while let Some(r) = seq.next_element_seed(Owner(level, true))? {
                    out.push(r.into_resource());
                }
                Parsed::Resources(out)
            }
            Part::Scopes => {
                let mut out = Vec::with_capacity(hint);
                while let Some(s) = seq.next_element_seed(Owner(level, false))? {
                    out.push(s.into_scope());
                }
                Parsed::Scopes(out)
            }
            Part::Records => {
                let mut out = Vec::with_capacity(hint);
                if level.logs {
                    while let Some(r) = seq.next_element_seed(LogSeed(level.arena))? {
                        out.push(Record::Log(r));
                    }
                } else {
                    while let Some(s) = seq.next_element_seed(SpanSeed(level.arena))? {
                        out.push(Record::Span(s));
                    }
                }
                Parsed::Records(out)
            }
            _ => return Err(A::Error::custom("not a list")),
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed<'a>, A::Error> {
        let Seed(level, part) = self;
        let mut seen = Seen::default();
        match part {
            Part::Request => {
                let mut resources = Vec::new();
                while let Some(key) = map.next_key_seed(Text(level.arena))? {
                    if key == level.resources {
                        seen.once::<A::Error>(0)?;
                        if let Parsed::Resources(r) =
                            map.next_value_seed(Seed(level, Part::Resources))?
                        {
                            resources = r;
                        }
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Parsed::Request(RequestRef { resources }))
            }
            Part::Resource => {
                let mut attributes = Vec::new();
                while let Some(key) = map.next_key_seed(Text(level.arena))? {
                    match key {
                        "attributes" => {
                            seen.once::<A::Error>(0)?;
                            attributes = map.next_value_seed(Kvs(level.arena))?;
                        }
                        "droppedAttributesCount" => {
                            seen.once::<A::Error>(1)?;
                            map.next_value::<u32>()?;
                        }
                        "entityRefs" => {
                            seen.once::<A::Error>(2)?;
                            map.next_value_seed(Empty)?;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Parsed::Resource(attributes))
            }
            Part::Scope => {
                let (mut name, mut version) = ("", "");
                while let Some(key) = map.next_key_seed(Text(level.arena))? {
                    match key {
                        "name" => {
                            seen.once::<A::Error>(0)?;
                            name = map.next_value_seed(Text(level.arena))?;
                        }
                        "version" => {
                            seen.once::<A::Error>(1)?;
                            version = map.next_value_seed(Text(level.arena))?;
                        }
                        "attributes" => {
                            seen.once::<A::Error>(2)?;
                            map.next_value_seed(Kvs(level.arena))?;
                        }
                        "droppedAttributesCount" => {
                            seen.once::<A::Error>(3)?;
                            map.next_value::<u32>()?;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Parsed::Scope(name, version))
            }
            _ => Err(A::Error::custom("not an object")),
        }
    }
}

/// A resource with its scopes (`ResourceLogs`), or a scope with its records (`ScopeLogs`).
struct Owner<'a>(Level<'a>, bool);

enum Owned<'a> {
    Resource(ResourceRef<'a, Record<'a>>),
    Scope(ScopeRef<'a, Record<'a>>),
}

impl<'a> Owned<'a> {
    fn into_resource(self) -> ResourceRef<'a, Record<'a>> {
        match self {
            Owned::Resource(r) => r,
            Owned::Scope(_) => unreachable!("resources are read as resources"),
        }
    }

    fn into_scope(self) -> ScopeRef<'a, Record<'a>> {
        match self {
            Owned::Scope(s) => s,
            Owned::Resource(_) => unreachable!("scopes are read as scopes"),
        }
    }
}

impl<'de: 'a, 'a> DeserializeSeed<'de> for Owner<'a> {
    type Value = Owned<'a>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Owned<'a>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for Owner<'a> {
    type Value = Owned<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a resource or scope object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Owned<'a>, A::Error> {
        let Owner(level, resource) = self;
        let (head, items) = if resource {
            ("resource", level.scopes)
        } else {
            ("scope", level.records)
        };
        let mut seen = Seen::default();
        let (mut attributes, mut name, mut version) = (Vec::new(), "", "");
        let (mut scopes, mut records) = (Vec::new(), Vec::new());
        while let Some(key) = map.next_key_seed(Text(level.arena))? {
            if key == head {
                seen.once::<A::Error>(0)?;
                let part = if resource {
                    Part::Resource
                } else {
                    Part::Scope
                };
                match map.next_value_seed(Nullable(Seed(level, part)))? {
                    Some(Parsed::Resource(a)) => attributes = a,
                    Some(Parsed::Scope(n, v)) => (name, version) = (n, v),
                    None => {}
                    Some(_) => return Err(A::Error::custom("unexpected part")),
                }
            } else if key == items {
                seen.once::<A::Error>(1)?;
                let part = if resource {
                    Part::Scopes
                } else {
                    Part::Records
                };
                match map.next_value_seed(Seed(level, part))? {
                    Parsed::Scopes(s) => scopes = s,
                    Parsed::Records(r) => records = r,
                    _ => return Err(A::Error::custom("unexpected part")),
                }
            } else if key == "schemaUrl" {
                seen.once::<A::Error>(2)?;
                map.next_value_seed(Text(level.arena))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(if resource {
            Owned::Resource(ResourceRef { attributes, scopes })
        } else {
            Owned::Scope(ScopeRef {
                name,
                version,
                records,
            })
        })
    }
}

/// An optional message that may be `null`, which the reference reads as absent.
struct Nullable<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Nullable<S> {
    type Value = Option<S::Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for Nullable<S> {
    type Value = Option<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object or null")
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(d).map(Some)
    }
}

/// Keys already read in one object: the reference refuses a repeated field.
#[derive(Default)]
struct Seen(u32);

impl Seen {
    fn once<E: serde::de::Error>(&mut self, bit: u32) -> Result<(), E> {
        if self.0 & (1 << bit) != 0 {
            return Err(E::custom("repeated key"));
        }
        self.0 |= 1 << bit;
        Ok(())
    }
}

/// A string: borrowed from the body, or unescaped into the arena.
#[derive(Clone, Copy)]
struct Text<'a>(&'a Bump);

impl<'de: 'a, 'a> DeserializeSeed<'de> for Text<'a> {
    type Value = &'a str;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<&'a str, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for Text<'a> {
    type Value = &'a str;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<&'a str, E> {
        Ok(s)
    }

    fn visit_str<E>(self, s: &str) -> Result<&'a str, E> {
        Ok(self.0.alloc_str(s))
    }
}

/// Hex bytes (trace and span ids): even length, hex digits only.
#[derive(Clone, Copy)]
struct Hex<'a>(&'a Bump);

impl<'de: 'a, 'a> DeserializeSeed<'de> for Hex<'a> {
    type Value = &'a [u8];

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<&'a [u8], D::Error> {
        let text = Text(self.0).deserialize(d)?;
        let digits = text.as_bytes();
        if digits.len() % 2 != 0 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(D::Error::custom("not plain hex"));
        }
        let nibble = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
        Ok(self.0.alloc_slice_fill_iter(
            digits
                .chunks_exact(2)
                .map(|p| nibble(p[0]) << 4 | nibble(p[1])),
        ))
    }
}

/// A u64 as a number or a decimal string (`timeUnixNano`), as the reference reads it.
struct Nanos;

impl<'de> DeserializeSeed<'de> for Nanos {
    type Value = u64;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Nanos {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a u64 integer or a string containing one")
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(E::custom)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
        v.parse().map_err(E::custom)
    }
}

/// An i64 as a number or a decimal string (`intValue`), as the reference reads it.
struct Int;

impl<'de> DeserializeSeed<'de> for Int {
    type Value = i64;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<i64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Int {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an i64 integer or a string containing one")
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(E::custom)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<i64, E> {
        v.parse().map_err(E::custom)
    }
}

/// A list that must be empty (a resource's entity refs: not read here).
struct Empty;

impl<'de> DeserializeSeed<'de> for Empty {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Empty {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an empty list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        match seq.next_element::<IgnoredAny>()? {
            None => Ok(()),
            Some(_) => Err(A::Error::custom("not read here")),
        }
    }
}

/// A list of key-values.
#[derive(Clone, Copy)]
struct Kvs<'a>(&'a Bump);

impl<'de: 'a, 'a> DeserializeSeed<'de> for Kvs<'a> {
    type Value = Vec<KvRef<'a>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<KvRef<'a>>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for Kvs<'a> {
    type Value = Vec<KvRef<'a>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of key-values")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<KvRef<'a>>, A::Error> {
        kvs(self.0, seq)
    }
}

fn kvs<'de: 'a, 'a, A: SeqAccess<'de>>(
    arena: &'a Bump,
    mut seq: A,
) -> Result<Vec<KvRef<'a>>, A::Error> {
    let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(8).min(256));
    while let Some(kv) = seq.next_element_seed(Kv(arena))? {
        out.push(kv);
    }
    Ok(out)
}

/// One key-value: `key` is required, as the reference has it.
#[derive(Clone, Copy)]
struct Kv<'a>(&'a Bump);

impl<'de: 'a, 'a> DeserializeSeed<'de> for Kv<'a> {
    type Value = KvRef<'a>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<KvRef<'a>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for Kv<'a> {
    type Value = KvRef<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key-value object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KvRef<'a>, A::Error> {
        let mut seen = Seen::default();
        let (mut key, mut value) = (None, None);
        while let Some(k) = map.next_key_seed(Text(self.0))? {
            match k {
                "key" => {
                    seen.once::<A::Error>(0)?;
                    key = Some(map.next_value_seed(Text(self.0))?);
                }
                "value" => {
                    seen.once::<A::Error>(1)?;
                    value = map.next_value_seed(Nullable(Value(self.0)))?.flatten();
                }
                "keyStrindex" => {
                    seen.once::<A::Error>(2)?;
                    map.next_value::<i32>()?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let key = key.ok_or_else(|| A::Error::custom("missing key"))?;
        Ok(KvRef { key, value })
    }
}

/// An `AnyValue` object with one known key, or none (an empty value).
#[derive(Clone, Copy)]
struct Value<'a>(&'a Bump);

impl<'de: 'a, 'a> DeserializeSeed<'de> for Value<'a> {
    type Value = Option<AnyRef<'a>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<AnyRef<'a>>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for Value<'a> {
    type Value = Option<AnyRef<'a>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an AnyValue object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<AnyRef<'a>>, A::Error> {
        let arena = self.0;
        let Some(key) = map.next_key_seed(Text(arena))? else {
            return Ok(None);
        };
        let value = match key {
            "stringValue" => AnyRef::Str(map.next_value_seed(Text(arena))?),
            "boolValue" => AnyRef::Bool(map.next_value::<bool>()?),
            "intValue" => AnyRef::Int(map.next_value_seed(Int)?),
            "doubleValue" => AnyRef::Double(map.next_value::<f64>()?),
            "arrayValue" => AnyRef::Array(map.next_value_seed(List(arena, false))?.0),
            "kvlistValue" => AnyRef::Kvlist(map.next_value_seed(List(arena, true))?.1),
            "bytesValue" => {
                // The reference's decoding: base64's standard alphabet, padded.
                use base64::Engine as _;
                let text = map.next_value_seed(Text(arena))?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(A::Error::custom)?;
                AnyRef::Bytes(arena.alloc_slice_copy(&bytes))
            }
            _ => return Err(A::Error::custom("left to the reference")),
        };
        // Two keys in one value: the reference keeps the last; left to it.
        if map.next_key::<IgnoredAny>()?.is_some() {
            return Err(A::Error::custom("more than one key"));
        }
        Ok(Some(value))
    }
}

/// `{"values": [...]}` of an array (values) or a key-value list (key-values).
struct List<'a>(&'a Bump, bool);

type ListValues<'a> = (Vec<Option<AnyRef<'a>>>, Vec<KvRef<'a>>);

impl<'de: 'a, 'a> DeserializeSeed<'de> for List<'a> {
    type Value = ListValues<'a>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ListValues<'a>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for List<'a> {
    type Value = ListValues<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ListValues<'a>, A::Error> {
        let List(arena, kvlist) = self;
        let mut out = None;
        while let Some(k) = map.next_key_seed(Text(arena))? {
            if k != "values" {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if out.is_some() {
                return Err(A::Error::custom("repeated key"));
            }
            out = Some(if kvlist {
                (Vec::new(), map.next_value_seed(Kvs(arena))?)
            } else {
                (map.next_value_seed(Values(arena))?, Vec::new())
            });
        }
        out.ok_or_else(|| A::Error::custom("missing values"))
    }
}

/// The values of an array value.
struct Values<'a>(&'a Bump);

impl<'de: 'a, 'a> DeserializeSeed<'de> for Values<'a> {
    type Value = Vec<Option<AnyRef<'a>>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for Values<'a> {
    type Value = Vec<Option<AnyRef<'a>>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of values")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Value(self.0))? {
            out.push(v);
        }
        Ok(out)
    }
}

/// A log record.
struct LogSeed<'a>(&'a Bump);

impl<'de: 'a, 'a> DeserializeSeed<'de> for LogSeed<'a> {
    type Value = LogRecordRef<'a>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<LogRecordRef<'a>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for LogSeed<'a> {
    type Value = LogRecordRef<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a log record object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LogRecordRef<'a>, A::Error> {
        let arena = self.0;
        let mut seen = Seen::default();
        let mut r = LogRecordRef::default();
        while let Some(key) = map.next_key_seed(Text(arena))? {
            match key {
                "timeUnixNano" => {
                    seen.once::<A::Error>(0)?;
                    r.time_unix_nano = map.next_value_seed(Nanos)?;
                }
                "observedTimeUnixNano" => {
                    seen.once::<A::Error>(1)?;
                    r.observed_time_unix_nano = map.next_value_seed(Nanos)?;
                }
                "severityNumber" => {
                    seen.once::<A::Error>(2)?;
                    r.severity_number = map.next_value::<i32>()?;
                }
                "severityText" => {
                    seen.once::<A::Error>(3)?;
                    r.severity_text = map.next_value_seed(Text(arena))?;
                }
                "body" => {
                    seen.once::<A::Error>(4)?;
                    r.body = map.next_value_seed(Nullable(Value(arena)))?.flatten();
                }
                "attributes" => {
                    seen.once::<A::Error>(5)?;
                    r.attributes = map.next_value_seed(Kvs(arena))?;
                }
                "droppedAttributesCount" => {
                    seen.once::<A::Error>(6)?;
                    map.next_value::<u32>()?;
                }
                "flags" => {
                    seen.once::<A::Error>(7)?;
                    map.next_value::<u32>()?;
                }
                "traceId" => {
                    seen.once::<A::Error>(8)?;
                    r.trace_id = map.next_value_seed(Hex(arena))?;
                }
                "spanId" => {
                    seen.once::<A::Error>(9)?;
                    r.span_id = map.next_value_seed(Hex(arena))?;
                }
                "eventName" => {
                    seen.once::<A::Error>(10)?;
                    r.event_name = map.next_value_seed(Text(arena))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(r)
    }
}

/// A span (its events and links are checked, not kept).
struct SpanSeed<'a>(&'a Bump);

impl<'de: 'a, 'a> DeserializeSeed<'de> for SpanSeed<'a> {
    type Value = SpanRef<'a>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<SpanRef<'a>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for SpanSeed<'a> {
    type Value = SpanRef<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a span object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SpanRef<'a>, A::Error> {
        let arena = self.0;
        let mut seen = Seen::default();
        let mut s = SpanRef::default();
        while let Some(key) = map.next_key_seed(Text(arena))? {
            match key {
                "traceId" => {
                    seen.once::<A::Error>(0)?;
                    s.trace_id = map.next_value_seed(Hex(arena))?;
                }
                "spanId" => {
                    seen.once::<A::Error>(1)?;
                    s.span_id = map.next_value_seed(Hex(arena))?;
                }
                "traceState" => {
                    seen.once::<A::Error>(2)?;
                    map.next_value_seed(Text(arena))?;
                }
                "parentSpanId" => {
                    seen.once::<A::Error>(3)?;
                    s.parent_span_id = map.next_value_seed(Hex(arena))?;
                }
                "flags" => {
                    seen.once::<A::Error>(4)?;
                    map.next_value::<u32>()?;
                }
                "name" => {
                    seen.once::<A::Error>(5)?;
                    s.name = map.next_value_seed(Text(arena))?;
                }
                "kind" => {
                    seen.once::<A::Error>(6)?;
                    s.kind = map.next_value::<i32>()?;
                }
                "startTimeUnixNano" => {
                    seen.once::<A::Error>(7)?;
                    s.start_time_unix_nano = map.next_value_seed(Nanos)?;
                }
                "endTimeUnixNano" => {
                    seen.once::<A::Error>(8)?;
                    s.end_time_unix_nano = map.next_value_seed(Nanos)?;
                }
                "attributes" => {
                    seen.once::<A::Error>(9)?;
                    s.attributes = map.next_value_seed(Kvs(arena))?;
                }
                "droppedAttributesCount" => {
                    seen.once::<A::Error>(10)?;
                    map.next_value::<u32>()?;
                }
                "events" => {
                    seen.once::<A::Error>(11)?;
                    map.next_value_seed(Checked(arena, Nested::Event))?;
                }
                "droppedEventsCount" => {
                    seen.once::<A::Error>(12)?;
                    map.next_value::<u32>()?;
                }
                "links" => {
                    seen.once::<A::Error>(13)?;
                    map.next_value_seed(Checked(arena, Nested::Link))?;
                }
                "droppedLinksCount" => {
                    seen.once::<A::Error>(14)?;
                    map.next_value::<u32>()?;
                }
                "status" => {
                    seen.once::<A::Error>(15)?;
                    if let Some(status) = map.next_value_seed(Nullable(StatusSeed(arena)))? {
                        (s.status_code, s.status_message) = status;
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(s)
    }
}

/// What a span holds that normalization does not read.
#[derive(Clone, Copy)]
enum Nested {
    Event,
    Link,
}

/// A span's events or links: read as the reference reads them (so that what
/// it refuses is declined here too), then dropped.
#[derive(Clone, Copy)]
struct Checked<'a>(&'a Bump, Nested);

impl<'de: 'a, 'a> DeserializeSeed<'de> for Checked<'a> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for Checked<'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of span events or links")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(CheckedItem(self))?.is_some() {}
        Ok(())
    }
}

/// One span event or link.
struct CheckedItem<'a>(Checked<'a>);

impl<'de: 'a, 'a> DeserializeSeed<'de> for CheckedItem<'a> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for CheckedItem<'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a span event or link object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Checked(arena, nested) = self.0;
        let mut seen = Seen::default();
        while let Some(key) = map.next_key_seed(Text(arena))? {
            match (nested, key) {
                (_, "attributes") => {
                    seen.once::<A::Error>(0)?;
                    map.next_value_seed(Kvs(arena))?;
                }
                (_, "droppedAttributesCount") => {
                    seen.once::<A::Error>(1)?;
                    map.next_value::<u32>()?;
                }
                (Nested::Event, "timeUnixNano") => {
                    seen.once::<A::Error>(2)?;
                    map.next_value_seed(Nanos)?;
                }
                (Nested::Event, "name") | (Nested::Link, "traceState") => {
                    seen.once::<A::Error>(3)?;
                    map.next_value_seed(Text(arena))?;
                }
                (Nested::Link, "traceId") => {
                    seen.once::<A::Error>(4)?;
                    map.next_value_seed(Hex(arena))?;
                }
                (Nested::Link, "spanId") => {
                    seen.once::<A::Error>(5)?;
                    map.next_value_seed(Hex(arena))?;
                }
                (Nested::Link, "flags") => {
                    seen.once::<A::Error>(6)?;
                    map.next_value::<u32>()?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// A span's status: code and message.
struct StatusSeed<'a>(&'a Bump);

impl<'de: 'a, 'a> DeserializeSeed<'de> for StatusSeed<'a> {
    type Value = (i32, &'a str);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(i32, &'a str), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for StatusSeed<'a> {
    type Value = (i32, &'a str);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a status object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(i32, &'a str), A::Error> {
        let mut seen = Seen::default();
        let (mut code, mut message) = (0, "");
        while let Some(key) = map.next_key_seed(Text(self.0))? {
            match key {
                "code" => {
                    seen.once::<A::Error>(0)?;
                    code = map.next_value::<i32>()?;
                }
                "message" => {
                    seen.once::<A::Error>(1)?;
                    message = map.next_value_seed(Text(self.0))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok((code, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};

    use crate::test_rng::Rng;
    use crate::wire::tests::{damage, request, traces};

    /// This reader's reading of `body` agrees with the reference's, or it
    /// declined: never a different request. Compared as Debug text (so NaN
    /// doubles compare equal).
    fn logs_agree(body: &[u8]) -> Option<bool> {
        let arena = Bump::new();
        let fast = decode_logs(body, &arena)?;
        let reference: ExportLogsServiceRequest = crate::json_decode(body).unwrap_or_else(|e| {
            panic!(
                "read what the reference refuses ({e}): {}",
                String::from_utf8_lossy(body)
            )
        });
        Some(format!("{fast:?}") == format!("{:?}", LogsRef::from_prost(&reference)))
    }

    fn traces_agree(body: &[u8]) -> Option<bool> {
        let arena = Bump::new();
        let fast = decode_traces(body, &arena)?;
        let reference: ExportTraceServiceRequest = crate::json_decode(body).unwrap_or_else(|e| {
            panic!(
                "read what the reference refuses ({e}): {}",
                String::from_utf8_lossy(body)
            )
        });
        Some(format!("{fast:?}") == format!("{:?}", TracesRef::from_prost(&reference)))
    }

    /// String-table indexes are left to the reference: most of them become
    /// strings here, so that most requests are read.
    fn mostly_readable(rng: &mut Rng, kvs: &mut [KeyValue]) {
        fn value(rng: &mut Rng, v: &mut AnyValue) {
            use any_value::Value as V;
            match &mut v.value {
                Some(V::StringValueStrindex(_)) if rng.below(8) != 0 => {
                    v.value = Some(V::StringValue("was bytes".into()));
                }
                Some(V::ArrayValue(a)) => a.values.iter_mut().for_each(|v| value(rng, v)),
                Some(V::KvlistValue(l)) => mostly_readable(rng, &mut l.values),
                _ => {}
            }
        }
        for kv in kvs {
            if let Some(v) = &mut kv.value {
                value(rng, v);
            }
        }
    }

    fn logs_body(rng: &mut Rng) -> Vec<u8> {
        let mut req = request(rng);
        for r in &mut req.resource_logs {
            if let Some(res) = &mut r.resource {
                mostly_readable(rng, &mut res.attributes);
            }
            for rec in r.scope_logs.iter_mut().flat_map(|s| &mut s.log_records) {
                mostly_readable(rng, &mut rec.attributes);
                if let Some(body) = rec.body.take() {
                    let mut kv = [KeyValue {
                        value: Some(body),
                        ..Default::default()
                    }];
                    mostly_readable(rng, &mut kv);
                    rec.body = kv[0].value.take();
                }
            }
        }
        serde_json::to_vec(&req).expect("serializes")
    }

    fn traces_body(rng: &mut Rng) -> Vec<u8> {
        let mut req = traces(rng);
        for r in &mut req.resource_spans {
            if let Some(res) = &mut r.resource {
                mostly_readable(rng, &mut res.attributes);
            }
        }
        for s in req
            .resource_spans
            .iter_mut()
            .flat_map(|r| &mut r.scope_spans)
        {
            for span in &mut s.spans {
                mostly_readable(rng, &mut span.attributes);
                for e in &mut span.events {
                    mostly_readable(rng, &mut e.attributes);
                }
                for l in &mut span.links {
                    mostly_readable(rng, &mut l.attributes);
                }
            }
        }
        serde_json::to_vec(&req).expect("serializes")
    }

    /// Runs `agree` over `n` bodies; every body read must agree. Returns how
    /// many were read and how many declined.
    fn count(
        n: u32,
        mut body: impl FnMut() -> Vec<u8>,
        agree: fn(&[u8]) -> Option<bool>,
    ) -> (u32, u32) {
        let (mut read, mut declined) = (0, 0);
        for i in 0..n {
            let body = body();
            match agree(&body) {
                Some(same) => {
                    assert!(
                        same,
                        "body {i} read differently: {}",
                        String::from_utf8_lossy(&body)
                    );
                    read += 1;
                }
                None => declined += 1,
            }
        }
        (read, declined)
    }

    #[test]
    fn generated_requests_read_exactly_as_the_reference_reads_them() {
        let mut rng = Rng(0x150e);
        let (read, declined) = count(2000, || logs_body(&mut rng), logs_agree);
        assert!(read > 1000, "read {read}, declined {declined}");
        let mut rng = Rng(0x7ace);
        let (read, declined) = count(2000, || traces_body(&mut rng), traces_agree);
        assert!(read > 1000, "read {read}, declined {declined}");
    }

    #[test]
    fn damaged_requests_are_read_as_the_reference_reads_them_or_left_to_it() {
        let mut rng = Rng(0xda3a);
        let mut rng2 = Rng(0x1234);
        let (read, declined) = count(
            4000,
            || {
                let mut body = logs_body(&mut rng);
                let hits = 1 + rng2.below(2);
                damage(&mut rng2, &mut body, hits);
                body
            },
            logs_agree,
        );
        // Both branches ran: some damage leaves valid JSON (inside a string, say).
        assert!(
            read > 100 && declined > 100,
            "read {read}, declined {declined}"
        );
        let (read, declined) = count(
            4000,
            || {
                let mut body = traces_body(&mut rng);
                damage(&mut rng2, &mut body, 1);
                body
            },
            traces_agree,
        );
        assert!(
            read > 100 && declined > 100,
            "spans: read {read}, declined {declined}"
        );
    }

    /// A Claude Code `tool_result`, as an `http/json` exporter sends it.
    const CLAUDE_CODE: &str = r#"{"resourceLogs":[{"resource":{"attributes":[
        {"key":"service.name","value":{"stringValue":"claude-code"}},
        {"key":"host.arch","value":{"stringValue":"arm64"}}]},
      "scopeLogs":[{"scope":{"name":"com.anthropic.claude_code.events","version":"2.1.230"},
        "logRecords":[{"timeUnixNano":"1773154800123456789","observedTimeUnixNano":1773154800123456790,
          "severityNumber":9,"body":{"stringValue":"claude_code.tool_result"},
          "traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"eee19b7ec3c1b174",
          "attributes":[{"key":"event.name","value":{"stringValue":"tool_result"}},
            {"key":"tool_name","value":{"stringValue":"Read"}},
            {"key":"success","value":{"stringValue":"true"}},
            {"key":"duration_ms","value":{"intValue":"42"}},
            {"key":"event.sequence","value":{"intValue":7}},
            {"key":"ratio","value":{"doubleValue":0.5}},
            {"key":"tags","value":{"arrayValue":{"values":[{"stringValue":"a"},{}]}}},
            {"key":"tool_parameters","value":{"stringValue":"{\"file_path\":\"/Users/ana/.ssh/id_ed25519\",\"note\":\"tab\\there \u00fc\"}"}}],
          "someFutureField":{"x":[1,2]}}]}]}]}"#;

    #[test]
    fn a_claude_code_record_is_read_with_its_escaped_json_unescaped() {
        let body = CLAUDE_CODE.as_bytes();
        assert_eq!(logs_agree(body), Some(true));
        let arena = Bump::new();
        let req = decode_logs(body, &arena).expect("read");
        let rec = &req.resources[0].scopes[0].records[0];
        assert_eq!(rec.time_unix_nano, 1_773_154_800_123_456_789);
        assert_eq!(rec.observed_time_unix_nano, 1_773_154_800_123_456_790);
        assert_eq!(rec.trace_id.len(), 16);
        assert_eq!(rec.trace_id[0], 0x5b);
        let params = rec
            .attributes
            .iter()
            .find(|kv| kv.key == "tool_parameters")
            .and_then(|kv| kv.value.clone());
        assert_eq!(
            params,
            Some(AnyRef::Str(
                "{\"file_path\":\"/Users/ana/.ssh/id_ed25519\",\"note\":\"tab\\there ü\"}"
            ))
        );
        // Strings without escapes borrow from the body.
        let tool = rec
            .attributes
            .iter()
            .find(|kv| kv.key == "tool_name")
            .expect("tool");
        let Some(AnyRef::Str(tool)) = tool.value else {
            panic!("a string")
        };
        assert!(body.as_ptr_range().contains(&tool.as_ptr()));
    }

    #[test]
    fn what_the_reference_reads_differently_or_refuses_is_left_to_it() {
        let record =
            |r: &str| format!(r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{r}]}}]}}]}}"#);
        let reference_ok =
            |body: &str| crate::json_decode::<ExportLogsServiceRequest>(body.as_bytes()).is_ok();
        let declined = |body: &str| decode_logs(body.as_bytes(), &Bump::new()).is_none();
        // Read here, and the same as the reference.
        for r in [
            r#"{}"#,
            r#"{"timeUnixNano":12,"severityNumber":0}"#,
            r#"{"body":{"\u0073tringValue":"escaped key"}}"#,
            r#"{"attributes":[{"key":"k"}],"unknown":null}"#,
            r#"{"body":{"kvlistValue":{"values":[{"key":"a","value":{"boolValue":true}}]}}}"#,
        ] {
            assert_eq!(logs_agree(record(r).as_bytes()), Some(true), "{r}");
        }
        // Refused by the reference, declined here.
        for r in [
            r#"{"timeUnixNano":"1","timeUnixNano":"2"}"#,
            r#"{"attributes":[{"value":{"stringValue":"no key"}}]}"#,
            r#"{"traceId":"abc"}"#,
            r#"{"timeUnixNano":-1}"#,
            r#"{"body":{"intValue":1.5}}"#,
            r#"{"body":{"arrayValue":{}}}"#,
            r#"{"body":{"bytesValue":"aGk"}}"#,
        ] {
            let body = record(r);
            assert!(declined(&body) && !reference_ok(&body), "{r}");
        }
        // A message sent as null is absent, as the reference has it.
        for r in [
            r#"{"body":null}"#,
            r#"{"attributes":[{"key":"k","value":null}]}"#,
        ] {
            assert_eq!(logs_agree(record(r).as_bytes()), Some(true), "{r}");
        }
        // Accepted by the reference in ways not read here: declined, then read there.
        for r in [
            r#"{"severityText":null}"#,
            r#"{"body":{"stringValue":"a","intValue":"1"}}"#,
            r#"{"body":{"stringValue":"a","comment":"x"}}"#,
        ] {
            let body = record(r);
            assert!(declined(&body), "{r}");
        }
        assert!(declined(r#"{"resourceLogs":[]} trailing"#));
        assert!(decode_logs(b"{}", &Bump::new()).is_some_and(|r| r.resources.is_empty()));
        let spans = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"tools/call x","kind":3,
            "startTimeUnixNano":"5","status":{"code":2,"message":"boom"},"events":[],"links":[]}]}]}]}"#;
        assert_eq!(traces_agree(spans.as_bytes()), Some(true));
        // Events and links are checked as the reference checks them.
        let with_event = spans.replace(
            r#""events":[]"#,
            r#""events":[{"name":"gen_ai.content.prompt","timeUnixNano":"9","attributes":[{"key":"k","value":{"stringValue":"v"}}]}]"#,
        );
        assert_eq!(traces_agree(with_event.as_bytes()), Some(true));
        let bad_link = spans.replace(r#""links":[]"#, r#""links":[{"traceId":"abc"}]"#);
        assert!(decode_traces(bad_link.as_bytes(), &Bump::new()).is_none());
        assert!(crate::json_decode::<ExportTraceServiceRequest>(bad_link.as_bytes()).is_err());
    }
}
