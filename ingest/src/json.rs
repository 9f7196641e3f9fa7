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
use std::marker::PhantomData;

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
    read(
        body,
        obj(Request(Level::new(arena, &LOGS, LogRecord(arena)))),
    )
}

/// Decodes an OTLP/JSON `ExportTraceServiceRequest`; `None` when the reference must decide.
pub fn decode_traces<'a>(body: &'a [u8], arena: &'a Bump) -> Option<TracesRef<'a>> {
    read(body, obj(Request(Level::new(arena, &TRACES, Span(arena)))))
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
    let decoded: ExportLogsServiceRequest = decode_or_repair(body)?;
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
    let decoded: ExportTraceServiceRequest = decode_or_repair(body)?;
    by_reference();
    Ok(f(TracesRef::from_prost(&decoded)))
}

/// The reference decoder's reading of `body`, or of its [`repair_text`]
/// when only text that is not Unicode stood in the way; else the first
/// error, which says what the sender did wrong.
fn decode_or_repair<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, String> {
    crate::json_decode(body).or_else(|e| {
        let fixed = repair_text(body).ok_or_else(|| e.clone())?;
        let decoded = crate::json_decode(&fixed).map_err(|_| e)?;
        tracing::warn!(
            "an OTLP/JSON request held text that is not Unicode (a lone surrogate escape or bytes that are not UTF-8): taken with U+FFFD and '?' in its place rather than refused whole"
        );
        Ok(decoded)
    })
}

/// A copy of a JSON body with every byte that is not UTF-8 replaced by `?`
/// and every `\u` escape of a lone surrogate (half of a character, as a
/// JavaScript exporter cutting a string can leave) by `\ufffd`; `None` when
/// there is neither. Lengths do not matter in JSON, but these keep them.
pub fn repair_text(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = body.to_vec();
    let mut changed = crate::wire::question_marks_for_invalid_utf8(&mut out);
    let hex = |b: &[u8]| -> Option<u16> {
        u16::from_str_radix(std::str::from_utf8(b.get(..4)?).ok()?, 16).ok()
    };
    let mut i = 0;
    while i + 1 < out.len() {
        if out[i] != b'\\' {
            i += 1;
            continue;
        }
        if out[i + 1] != b'u' {
            i += 2; // `\\`, `\"` and the other escapes
            continue;
        }
        match hex(&out[i + 2..]) {
            Some(0xD800..=0xDBFF) => {
                let pair = out.get(i + 6..i + 8) == Some(&b"\\u"[..])
                    && matches!(hex(&out[i + 8..]), Some(0xDC00..=0xDFFF));
                if pair {
                    i += 12;
                    continue;
                }
            }
            Some(0xDC00..=0xDFFF) => {}
            _ => {
                i += 2;
                continue;
            }
        }
        out[i..i + 6].copy_from_slice(b"\\ufffd");
        changed = true;
        i += 6;
    }
    changed.then_some(out)
}

/// The whole body as `seed` reads it, with nothing but whitespace after.
fn read<'a, S: DeserializeSeed<'a>>(body: &'a [u8], seed: S) -> Option<S::Value> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = seed.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(value)
}

/// One JSON object of a request, read key by key into `Out`.
trait Object<'a>: Copy {
    type Out;
    /// What the object is, for serde's messages.
    const WHAT: &'static str;
    fn read<'de: 'a, A: MapAccess<'de>>(self, map: A) -> Result<Self::Out, A::Error>;
}

/// One JSON list of a request, read item by item into `Out`.
trait List<'a>: Copy {
    type Out;
    const WHAT: &'static str;
    fn read<'de: 'a, A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Out, A::Error>;
}

/// The serde seed of an [`Object`].
struct Obj<'a, O>(O, PhantomData<&'a ()>);

fn obj<'a, O: Object<'a>>(o: O) -> Obj<'a, O> {
    Obj(o, PhantomData)
}

impl<'de: 'a, 'a, O: Object<'a>> DeserializeSeed<'de> for Obj<'a, O> {
    type Value = O::Out;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<O::Out, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de: 'a, 'a, O: Object<'a>> Visitor<'de> for Obj<'a, O> {
    type Value = O::Out;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(O::WHAT)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<O::Out, A::Error> {
        self.0.read(map)
    }
}

/// The serde seed of a [`List`].
struct Seq<'a, L>(L, PhantomData<&'a ()>);

fn seq<'a, L: List<'a>>(l: L) -> Seq<'a, L> {
    Seq(l, PhantomData)
}

impl<'de: 'a, 'a, L: List<'a>> DeserializeSeed<'de> for Seq<'a, L> {
    type Value = L::Out;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<L::Out, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de: 'a, 'a, L: List<'a>> Visitor<'de> for Seq<'a, L> {
    type Value = L::Out;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(L::WHAT)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<L::Out, A::Error> {
        self.0.read(seq)
    }
}

/// A list of objects of one kind.
#[derive(Clone, Copy)]
struct Many<O>(O);

impl<'a, O: Object<'a>> List<'a> for Many<O> {
    type Out = Vec<O::Out>;
    const WHAT: &'static str = "a list";

    fn read<'de: 'a, A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Out, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element_seed(obj(self.0))? {
            out.push(item);
        }
        Ok(out)
    }
}

/// A list that must be empty (a resource's entity refs: not read here).
#[derive(Clone, Copy)]
struct Empty;

impl<'a> List<'a> for Empty {
    type Out = ();
    const WHAT: &'static str = "an empty list";

    fn read<'de: 'a, A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        match seq.next_element::<IgnoredAny>()? {
            None => Ok(()),
            Some(_) => Err(A::Error::custom("not read here")),
        }
    }
}

/// The key names of one signal's levels.
struct Names {
    resources: &'static str,
    scopes: &'static str,
    records: &'static str,
}

const LOGS: Names = Names {
    resources: "resourceLogs",
    scopes: "scopeLogs",
    records: "logRecords",
};

const TRACES: Names = Names {
    resources: "resourceSpans",
    scopes: "scopeSpans",
    records: "spans",
};

/// What every level of a request needs: the arena, the signal's key names,
/// and how its records are read (`R`: a log record or a span).
#[derive(Clone, Copy)]
struct Level<'a, R> {
    arena: &'a Bump,
    names: &'static Names,
    record: R,
}

impl<'a, R> Level<'a, R> {
    fn new(arena: &'a Bump, names: &'static Names, record: R) -> Self {
        Level {
            arena,
            names,
            record,
        }
    }
}

/// The request: `{"resourceLogs": [...]}` or `{"resourceSpans": [...]}`.
#[derive(Clone, Copy)]
struct Request<'a, R>(Level<'a, R>);

impl<'a, R: Object<'a>> Object<'a> for Request<'a, R> {
    type Out = RequestRef<'a, R::Out>;
    const WHAT: &'static str = "an OTLP/JSON request";

    fn read<'de: 'a, A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        let level = self.0;
        let mut seen = Seen::default();
        let mut resources = Vec::new();
        while let Some(key) = map.next_key_seed(Text(level.arena))? {
            if key == level.names.resources {
                seen.once::<A::Error>(0)?;
                resources = map.next_value_seed(seq(Many(Resource(level))))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(RequestRef { resources })
    }
}

/// `ResourceLogs` / `ResourceSpans`: a resource and its scopes.
#[derive(Clone, Copy)]
struct Resource<'a, R>(Level<'a, R>);

impl<'a, R: Object<'a>> Object<'a> for Resource<'a, R> {
    type Out = ResourceRef<'a, R::Out>;
    const WHAT: &'static str = "a resource object";

    fn read<'de: 'a, A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        let level = self.0;
        let mut seen = Seen::default();
        let (mut attributes, mut scopes) = (Vec::new(), Vec::new());
        while let Some(key) = map.next_key_seed(Text(level.arena))? {
            if key == "resource" {
                seen.once::<A::Error>(0)?;
                let head = map.next_value_seed(Nullable(obj(ResourceHead(level.arena))))?;
                attributes = head.unwrap_or_default();
            } else if key == level.names.scopes {
                seen.once::<A::Error>(1)?;
                scopes = map.next_value_seed(seq(Many(Scope(level))))?;
            } else if key == "schemaUrl" {
                seen.once::<A::Error>(2)?;
                map.next_value_seed(Text(level.arena))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(ResourceRef { attributes, scopes })
    }
}

/// `ScopeLogs` / `ScopeSpans`: a scope and its records.
#[derive(Clone, Copy)]
struct Scope<'a, R>(Level<'a, R>);

impl<'a, R: Object<'a>> Object<'a> for Scope<'a, R> {
    type Out = ScopeRef<'a, R::Out>;
    const WHAT: &'static str = "a scope object";

    fn read<'de: 'a, A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        let level = self.0;
        let mut seen = Seen::default();
        let ((mut name, mut version), mut records) = (("", ""), Vec::new());
        while let Some(key) = map.next_key_seed(Text(level.arena))? {
            if key == "scope" {
                seen.once::<A::Error>(0)?;
                let head = map.next_value_seed(Nullable(obj(ScopeHead(level.arena))))?;
                (name, version) = head.unwrap_or(("", ""));
            } else if key == level.names.records {
                seen.once::<A::Error>(1)?;
                records = map.next_value_seed(seq(Many(level.record)))?;
            } else if key == "schemaUrl" {
                seen.once::<A::Error>(2)?;
                map.next_value_seed(Text(level.arena))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(ScopeRef {
            name,
            version,
            records,
        })
    }
}

/// A `Resource`: its attributes.
#[derive(Clone, Copy)]
struct ResourceHead<'a>(&'a Bump);

impl<'a> Object<'a> for ResourceHead<'a> {
    type Out = Vec<KvRef<'a>>;
    const WHAT: &'static str = "a resource";

    fn read<'de: 'a, A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        let mut seen = Seen::default();
        let mut attributes = Vec::new();
        while let Some(key) = map.next_key_seed(Text(self.0))? {
            match key {
                "attributes" => {
                    seen.once::<A::Error>(0)?;
                    attributes = map.next_value_seed(seq(Many(Kv(self.0))))?;
                }
                "droppedAttributesCount" => {
                    seen.once::<A::Error>(1)?;
                    map.next_value::<u32>()?;
                }
                "entityRefs" => {
                    seen.once::<A::Error>(2)?;
                    map.next_value_seed(seq(Empty))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(attributes)
    }
}

/// An `InstrumentationScope`: its name and version.
#[derive(Clone, Copy)]
struct ScopeHead<'a>(&'a Bump);

impl<'a> Object<'a> for ScopeHead<'a> {
    type Out = (&'a str, &'a str);
    const WHAT: &'static str = "a scope";

    fn read<'de: 'a, A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        let mut seen = Seen::default();
        let (mut name, mut version) = ("", "");
        while let Some(key) = map.next_key_seed(Text(self.0))? {
            match key {
                "name" => {
                    seen.once::<A::Error>(0)?;
                    name = map.next_value_seed(Text(self.0))?;
                }
                "version" => {
                    seen.once::<A::Error>(1)?;
                    version = map.next_value_seed(Text(self.0))?;
                }
                "attributes" => {
                    seen.once::<A::Error>(2)?;
                    map.next_value_seed(seq(Many(Kv(self.0))))?;
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
        Ok((name, version))
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

/// An integer sent as a number or as a decimal string, as the reference
/// reads it: `timeUnixNano` and the like as u64, `intValue` as i64.
struct Number<T>(PhantomData<T>);

/// A u64 time (`timeUnixNano`).
const NANOS: Number<u64> = Number(PhantomData);
/// An i64 (`intValue`).
const INT: Number<i64> = Number(PhantomData);

impl<'de, T> DeserializeSeed<'de> for Number<T>
where
    T: TryFrom<u64> + TryFrom<i64> + std::str::FromStr,
    <T as TryFrom<u64>>::Error: fmt::Display,
    <T as TryFrom<i64>>::Error: fmt::Display,
    <T as std::str::FromStr>::Err: fmt::Display,
{
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T> Visitor<'de> for Number<T>
where
    T: TryFrom<u64> + TryFrom<i64> + std::str::FromStr,
    <T as TryFrom<u64>>::Error: fmt::Display,
    <T as TryFrom<i64>>::Error: fmt::Display,
    <T as std::str::FromStr>::Err: fmt::Display,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer, or a string holding one")
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
        T::try_from(v).map_err(E::custom)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}

/// One key-value: `key` is required, as the reference has it.
#[derive(Clone, Copy)]
struct Kv<'a>(&'a Bump);

impl<'a> Object<'a> for Kv<'a> {
    type Out = KvRef<'a>;
    const WHAT: &'static str = "a key-value object";

    fn read<'de: 'a, A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
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
                    value = map.next_value_seed(Nullable(obj(Value(self.0))))?.flatten();
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

impl<'a> Object<'a> for Value<'a> {
    type Out = Option<AnyRef<'a>>;
    const WHAT: &'static str = "an AnyValue object";

    fn read<'de: 'a, A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        let arena = self.0;
        let Some(key) = map.next_key_seed(Text(arena))? else {
            return Ok(None);
        };
        let value = match key {
            "stringValue" => AnyRef::Str(map.next_value_seed(Text(arena))?),
            "boolValue" => AnyRef::Bool(map.next_value::<bool>()?),
            "intValue" => AnyRef::Int(map.next_value_seed(INT)?),
            "doubleValue" => AnyRef::Double(map.next_value::<f64>()?),
            "arrayValue" => AnyRef::Array(map.next_value_seed(obj(Values(arena, Value(arena))))?),
            "kvlistValue" => AnyRef::Kvlist(map.next_value_seed(obj(Values(arena, Kv(arena))))?),
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

/// `{"values": [...]}`: an array value's values or a key-value list's
/// entries. An empty list is `{}`: the protobuf JSON mapping omits empty
/// repeated fields, and the Collector and protobuf's own printers write it
/// so (the reference, opentelemetry-proto's serde, refuses it).
#[derive(Clone, Copy)]
struct Values<'a, O>(&'a Bump, O);

impl<'a, O: Object<'a>> Object<'a> for Values<'a, O> {
    type Out = Vec<O::Out>;
    const WHAT: &'static str = "an object with values";

    fn read<'de: 'a, A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        let mut out = None;
        while let Some(k) = map.next_key_seed(Text(self.0))? {
            if k != "values" {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if out.is_some() {
                return Err(A::Error::custom("repeated key"));
            }
            out = Some(map.next_value_seed(seq(Many(self.1)))?);
        }
        Ok(out.unwrap_or_default())
    }
}

/// A log record.
#[derive(Clone, Copy)]
struct LogRecord<'a>(&'a Bump);

impl<'a> Object<'a> for LogRecord<'a> {
    type Out = LogRecordRef<'a>;
    const WHAT: &'static str = "a log record object";

    fn read<'de: 'a, A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        let arena = self.0;
        let mut seen = Seen::default();
        let mut r = LogRecordRef::default();
        while let Some(key) = map.next_key_seed(Text(arena))? {
            match key {
                "timeUnixNano" => {
                    seen.once::<A::Error>(0)?;
                    r.time_unix_nano = map.next_value_seed(NANOS)?;
                }
                "observedTimeUnixNano" => {
                    seen.once::<A::Error>(1)?;
                    r.observed_time_unix_nano = map.next_value_seed(NANOS)?;
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
                    r.body = map.next_value_seed(Nullable(obj(Value(arena))))?.flatten();
                }
                "attributes" => {
                    seen.once::<A::Error>(5)?;
                    r.attributes = map.next_value_seed(seq(Many(Kv(arena))))?;
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
#[derive(Clone, Copy)]
struct Span<'a>(&'a Bump);

impl<'a> Object<'a> for Span<'a> {
    type Out = SpanRef<'a>;
    const WHAT: &'static str = "a span object";

    fn read<'de: 'a, A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
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
                    s.start_time_unix_nano = map.next_value_seed(NANOS)?;
                }
                "endTimeUnixNano" => {
                    seen.once::<A::Error>(8)?;
                    s.end_time_unix_nano = map.next_value_seed(NANOS)?;
                }
                "attributes" => {
                    seen.once::<A::Error>(9)?;
                    s.attributes = map.next_value_seed(seq(Many(Kv(arena))))?;
                }
                "droppedAttributesCount" => {
                    seen.once::<A::Error>(10)?;
                    map.next_value::<u32>()?;
                }
                "events" => {
                    seen.once::<A::Error>(11)?;
                    map.next_value_seed(seq(Many(Checked(arena, Nested::Event))))?;
                }
                "droppedEventsCount" => {
                    seen.once::<A::Error>(12)?;
                    map.next_value::<u32>()?;
                }
                "links" => {
                    seen.once::<A::Error>(13)?;
                    map.next_value_seed(seq(Many(Checked(arena, Nested::Link))))?;
                }
                "droppedLinksCount" => {
                    seen.once::<A::Error>(14)?;
                    map.next_value::<u32>()?;
                }
                "status" => {
                    seen.once::<A::Error>(15)?;
                    if let Some(status) = map.next_value_seed(Nullable(obj(Status(arena))))? {
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

/// A span event or link: read as the reference reads it (so that what it
/// refuses is declined here too), then dropped.
#[derive(Clone, Copy)]
struct Checked<'a>(&'a Bump, Nested);

impl<'a> Object<'a> for Checked<'a> {
    type Out = ();
    const WHAT: &'static str = "a span event or link object";

    fn read<'de: 'a, A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Checked(arena, nested) = self;
        let mut seen = Seen::default();
        while let Some(key) = map.next_key_seed(Text(arena))? {
            match (nested, key) {
                (_, "attributes") => {
                    seen.once::<A::Error>(0)?;
                    map.next_value_seed(seq(Many(Kv(arena))))?;
                }
                (_, "droppedAttributesCount") => {
                    seen.once::<A::Error>(1)?;
                    map.next_value::<u32>()?;
                }
                (Nested::Event, "timeUnixNano") => {
                    seen.once::<A::Error>(2)?;
                    map.next_value_seed(NANOS)?;
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
#[derive(Clone, Copy)]
struct Status<'a>(&'a Bump);

impl<'a> Object<'a> for Status<'a> {
    type Out = (i32, &'a str);
    const WHAT: &'static str = "a status object";

    fn read<'de: 'a, A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
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
            r#"{"body":{"bytesValue":"aGk"}}"#,
        ] {
            let body = record(r);
            assert!(declined(&body) && !reference_ok(&body), "{r}");
        }
        // An empty array or list omits its `values`, as the protobuf JSON
        // mapping writes it (opentelemetry-proto's serde alone refuses it;
        // `json_decode` gives it): read here and there alike.
        for (r, want) in [
            (r#"{"body":{"arrayValue":{}}}"#, "Array([])"),
            (r#"{"body":{"kvlistValue":{}}}"#, "Kvlist([])"),
        ] {
            let body = record(r);
            assert_eq!(logs_agree(body.as_bytes()), Some(true), "{r}");
            let arena = Bump::new();
            let read = format!("{:?}", decode_logs(body.as_bytes(), &arena).expect(r));
            assert!(read.contains(want), "{r}: {read}");
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

    #[test]
    fn text_that_is_not_unicode_is_repaired_not_refused() {
        let body = |value: &str| {
            format!(
                r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"timeUnixNano":"1773154800000000000","body":{{"stringValue":"{value}"}}}}]}}]}}]}}"#
            )
        };
        let read = |b: &[u8]| {
            with_logs(
                b,
                || {},
                |r| {
                    r.resources[0].scopes[0].records[0]
                        .body
                        .as_ref()
                        .map(|v| format!("{v:?}"))
                },
            )
        };
        // A lone high surrogate (a cut emoji), a lone low one, and a pair.
        let lone = body(r"cut \ud83d here \udc00 and \ud83d\ude00 kept");
        assert!(crate::json_decode::<ExportLogsServiceRequest>(lone.as_bytes()).is_err());
        let text = read(lone.as_bytes()).expect("repaired").expect("a body");
        assert!(
            text.contains("cut \u{fffd} here \u{fffd} and \u{1f600} kept"),
            "{text}"
        );
        // Bytes that are not UTF-8 become '?'.
        let mut raw = body("caf_").into_bytes();
        let at = raw.iter().position(|b| *b == b'_').unwrap();
        raw[at] = 0xc3;
        let text = read(&raw).expect("repaired").expect("a body");
        assert!(text.contains("caf?"), "{text}");
        // Escaped backslashes are not escapes; valid bodies are not copied.
        assert_eq!(repair_text(br#"{"a":"\\ud83d"}"#), None);
        assert_eq!(repair_text(body("fine").as_bytes()), None);
        // Other mistakes are still refused, with the reference's words.
        assert!(read(br#"{"resourceLogs": [}"#).is_err());
    }
}
