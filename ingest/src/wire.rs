//! Reads OTLP log and trace requests from their protobuf bytes into the borrowed model
//! of [`crate::otlp`], without prost's allocation of every string, attribute
//! and value.
//!
//! This is the receivers' fast path, and prost stays the reference: the walk
//! accepts only what it can read exactly as prost would (same last-wins
//! scalars, same UTF-8 checks, unknown fields skipped) and answers `None` for
//! anything else, such as a singular message sent twice (prost merges those),
//! group wire types, nesting deeper than [`MAX_NESTING`] or any malformed
//! byte. The caller then decodes with prost, which yields the same request or
//! the error a sender is told. Tests compare the two on generated and
//! corrupted requests.

use crate::otlp::{
    AnyRef, KvRef, LogRecordRef, LogsRef, RequestRef, ResourceRef, ScopeRef, SpanRef, TracesRef,
};

/// Deepest nesting of values read here; deeper requests go to prost, which
/// allows 100 levels. Flattening stops at 16 ([`crate::record::MAX_DEPTH`]).
pub const MAX_NESTING: usize = 32;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// Decodes an `ExportLogsServiceRequest`; `None` when prost must decide.
pub fn decode_logs(buf: &[u8]) -> Option<LogsRef<'_>> {
    request(buf, log_record)
}

/// Decodes an `ExportTraceServiceRequest`; `None` when prost must decide.
pub fn decode_traces(buf: &[u8]) -> Option<TracesRef<'_>> {
    request(buf, span)
}

/// Where a walked buffer starts, and the strings in it that are not UTF-8
/// (offset, length).
type NotUtf8 = Option<(usize, Vec<(usize, usize)>)>;

thread_local! {
    /// Set while [`repair_utf8`] looks for the strings it repairs.
    static NOT_UTF8: std::cell::RefCell<NotUtf8> = const { std::cell::RefCell::new(None) };
}

/// A copy of a log or trace request (`traces` tells which) whose string
/// fields that are not UTF-8 have each invalid byte replaced by `?`, and how
/// many strings that took; `None` when every string is UTF-8 or the request
/// is malformed otherwise. Protobuf says strings are UTF-8 and prost refuses
/// the whole request for one that is not: a JavaScript exporter's lone
/// surrogate, or a command line cut in the middle of a character, would
/// lose every record sent with it. Bytes are replaced one for one, so every
/// length in the message stays right, and only inside string fields (ids
/// and bytes values are left as they are).
pub fn repair_utf8(buf: &[u8], traces: bool) -> Option<(Vec<u8>, usize)> {
    NOT_UTF8.with(|n| *n.borrow_mut() = Some((buf.as_ptr() as usize, Vec::new())));
    let read = if traces {
        decode_traces(buf).is_some()
    } else {
        decode_logs(buf).is_some()
    };
    let spans = NOT_UTF8.with(|n| n.borrow_mut().take()).map(|(_, v)| v)?;
    if !read || spans.is_empty() {
        return None;
    }
    let mut out = buf.to_vec();
    for &(start, len) in &spans {
        question_marks_for_invalid_utf8(&mut out[start..start + len]);
    }
    Some((out, spans.len()))
}

/// Replaces each byte of `text` that is not part of valid UTF-8 by `?`, one
/// for one; true when there was any.
pub(crate) fn question_marks_for_invalid_utf8(text: &mut [u8]) -> bool {
    let mut at = 0;
    let mut changed = false;
    while let Err(e) = std::str::from_utf8(&text[at..]) {
        let bad = at + e.valid_up_to();
        let n = e.error_len().unwrap_or(text.len() - bad);
        text[bad..bad + n].fill(b'?');
        at = bad + n;
        changed = true;
    }
    changed
}

/// The levels logs and traces share: request -> resource -> scope -> records
/// (the same field numbers in both).
fn request<'a, R>(buf: &'a [u8], record: fn(&'a [u8]) -> Option<R>) -> Option<RequestRef<'a, R>> {
    Some(RequestRef {
        resources: repeated(buf, |b| resource_records(b, record))?,
    })
}

/// A message whose one field is a repeated message (field 1): the request,
/// ArrayValue, KeyValueList.
fn repeated<'a, T>(buf: &'a [u8], item: impl Fn(&'a [u8]) -> Option<T>) -> Option<Vec<T>> {
    let mut out = Vec::new();
    let mut r = Reader(buf);
    while let Some((field, wire)) = r.tag()? {
        match (field, wire) {
            (1, LEN) => out.push(item(r.bytes()?)?),
            (1, _) => return None,
            _ => r.skip(wire)?,
        }
    }
    Some(out)
}

fn resource_records<'a, R>(
    buf: &'a [u8],
    record: fn(&'a [u8]) -> Option<R>,
) -> Option<ResourceRef<'a, R>> {
    let (attributes, scopes) = nest(buf, resource, |b| scope_records(b, record))?;
    Some(ResourceRef {
        attributes: attributes.unwrap_or_default(),
        scopes,
    })
}

/// ResourceLogs/ResourceSpans and ScopeLogs/ScopeSpans alike: a singular
/// head (field 1: resource or scope), repeated items (field 2) and a
/// schema_url (field 3).
fn nest<'a, H, I>(
    buf: &'a [u8],
    head: impl Fn(&'a [u8]) -> Option<H>,
    item: impl Fn(&'a [u8]) -> Option<I>,
) -> Option<(Option<H>, Vec<I>)> {
    let (mut first, mut items) = (None, Vec::new());
    let mut r = Reader(buf);
    while let Some((field, wire)) = r.tag()? {
        match (field, wire) {
            (1, LEN) if first.is_none() => first = Some(head(r.bytes()?)?),
            (2, LEN) => items.push(item(r.bytes()?)?),
            (3, LEN) => {
                r.str()?; // schema_url
            }
            (1..=3, _) => return None,
            _ => r.skip(wire)?,
        }
    }
    Some((first, items))
}

fn resource(buf: &[u8]) -> Option<Vec<KvRef<'_>>> {
    let mut attributes = Vec::new();
    let mut r = Reader(buf);
    while let Some((field, wire)) = r.tag()? {
        match (field, wire) {
            (1, LEN) => attributes.push(key_value(r.bytes()?, 0)?),
            (2, VARINT) => {
                r.varint()?; // dropped_attributes_count
            }
            // Entity references are not read; prost decides whether they are valid.
            (1..=3, _) => return None,
            _ => r.skip(wire)?,
        }
    }
    Some(attributes)
}

fn scope_records<'a, R>(
    buf: &'a [u8],
    record: fn(&'a [u8]) -> Option<R>,
) -> Option<ScopeRef<'a, R>> {
    let (scope, records) = nest(buf, scope, record)?;
    let (name, version) = scope.unwrap_or_default();
    Some(ScopeRef {
        name,
        version,
        records,
    })
}

fn scope(buf: &[u8]) -> Option<(&str, &str)> {
    let (mut name, mut version) = ("", "");
    let mut r = Reader(buf);
    while let Some((field, wire)) = r.tag()? {
        match (field, wire) {
            (1, LEN) => name = r.str()?,
            (2, LEN) => version = r.str()?,
            (4, VARINT) => {
                r.varint()?; // dropped_attributes_count
            }
            // Scope attributes are not read; prost decides whether they are valid.
            (1..=4, _) => return None,
            _ => r.skip(wire)?,
        }
    }
    Some((name, version))
}

fn log_record(buf: &[u8]) -> Option<LogRecordRef<'_>> {
    let mut out = LogRecordRef::default();
    let mut seen_body = false;
    let mut r = Reader(buf);
    while let Some((field, wire)) = r.tag()? {
        match (field, wire) {
            (1, FIXED64) => out.time_unix_nano = r.fixed64()?,
            (11, FIXED64) => out.observed_time_unix_nano = r.fixed64()?,
            (2, VARINT) => out.severity_number = r.varint()? as i32,
            (3, LEN) => out.severity_text = r.str()?,
            (5, LEN) if !seen_body => {
                seen_body = true;
                out.body = any_value(r.bytes()?, 0)?;
            }
            (6, LEN) => out.attributes.push(key_value(r.bytes()?, 0)?),
            (7, VARINT) => {
                r.varint()?; // dropped_attributes_count
            }
            (8, FIXED32) => {
                r.fixed32()?; // flags
            }
            (9, LEN) => out.trace_id = r.bytes()?,
            (10, LEN) => out.span_id = r.bytes()?,
            (12, LEN) => out.event_name = r.str()?,
            (1..=12, _) => return None,
            _ => r.skip(wire)?,
        }
    }
    Some(out)
}

fn span(buf: &[u8]) -> Option<SpanRef<'_>> {
    let mut out = SpanRef::default();
    let mut seen_status = false;
    let mut r = Reader(buf);
    while let Some((field, wire)) = r.tag()? {
        match (field, wire) {
            (1, LEN) => out.trace_id = r.bytes()?,
            (2, LEN) => out.span_id = r.bytes()?,
            (3, LEN) => {
                r.str()?; // trace_state
            }
            (4, LEN) => out.parent_span_id = r.bytes()?,
            (16, FIXED32) => {
                r.fixed32()?; // flags
            }
            (5, LEN) => out.name = r.str()?,
            (6, VARINT) => out.kind = r.varint()? as i32,
            (7, FIXED64) => out.start_time_unix_nano = r.fixed64()?,
            (8, FIXED64) => out.end_time_unix_nano = r.fixed64()?,
            (9, LEN) => out.attributes.push(key_value(r.bytes()?, 0)?),
            (10 | 12 | 14, VARINT) => {
                r.varint()?; // dropped counts
            }
            // Events and links are not normalized, but prost checks them.
            (11, LEN) => span_event(r.bytes()?)?,
            (13, LEN) => span_link(r.bytes()?)?,
            (15, LEN) if !seen_status => {
                seen_status = true;
                (out.status_code, out.status_message) = status(r.bytes()?)?;
            }
            (1..=16, _) => return None,
            _ => r.skip(wire)?,
        }
    }
    Some(out)
}

fn span_event(buf: &[u8]) -> Option<()> {
    let mut r = Reader(buf);
    while let Some((field, wire)) = r.tag()? {
        match (field, wire) {
            (1, FIXED64) => drop(r.fixed64()?),
            (2, LEN) => drop(r.str()?),
            (3, LEN) => drop(key_value(r.bytes()?, 0)?),
            (4, VARINT) => drop(r.varint()?),
            (1..=4, _) => return None,
            _ => r.skip(wire)?,
        }
    }
    Some(())
}

fn span_link(buf: &[u8]) -> Option<()> {
    let mut r = Reader(buf);
    while let Some((field, wire)) = r.tag()? {
        match (field, wire) {
            (1 | 2, LEN) => drop(r.bytes()?),
            (3, LEN) => drop(r.str()?),
            (4, LEN) => drop(key_value(r.bytes()?, 0)?),
            (5, VARINT) => drop(r.varint()?),
            (6, FIXED32) => drop(r.fixed32()?),
            (1..=6, _) => return None,
            _ => r.skip(wire)?,
        }
    }
    Some(())
}

fn status(buf: &[u8]) -> Option<(i32, &str)> {
    let (mut code, mut message) = (0, "");
    let mut r = Reader(buf);
    while let Some((field, wire)) = r.tag()? {
        match (field, wire) {
            (2, LEN) => message = r.str()?,
            (3, VARINT) => code = r.varint()? as i32,
            (2 | 3, _) => return None,
            _ => r.skip(wire)?,
        }
    }
    Some((code, message))
}

fn key_value(buf: &[u8], depth: usize) -> Option<KvRef<'_>> {
    let mut out = KvRef {
        key: "",
        value: None,
    };
    let mut seen_value = false;
    let mut r = Reader(buf);
    while let Some((field, wire)) = r.tag()? {
        match (field, wire) {
            (1, LEN) => out.key = r.str()?,
            (2, LEN) if !seen_value => {
                seen_value = true;
                out.value = any_value(r.bytes()?, depth)?;
            }
            (3, VARINT) => {
                r.varint()?; // key_strindex, for profiles only
            }
            (1..=3, _) => return None,
            _ => r.skip(wire)?,
        }
    }
    Some(out)
}

/// An `AnyValue`: `Some(None)` when no variant is set.
fn any_value(buf: &[u8], depth: usize) -> Option<Option<AnyRef<'_>>> {
    if depth >= MAX_NESTING {
        return None;
    }
    let mut out = None;
    let mut r = Reader(buf);
    while let Some((field, wire)) = r.tag()? {
        let value = match (field, wire) {
            (1, LEN) => AnyRef::Str(r.str()?),
            (2, VARINT) => AnyRef::Bool(r.varint()? != 0),
            (3, VARINT) => AnyRef::Int(r.varint()? as i64),
            (4, FIXED64) => AnyRef::Double(f64::from_bits(r.fixed64()?)),
            (5, LEN) => AnyRef::Array(repeated(r.bytes()?, |b| any_value(b, depth + 1))?),
            (6, LEN) => AnyRef::Kvlist(repeated(r.bytes()?, |b| key_value(b, depth + 1))?),
            (7, LEN) => AnyRef::Bytes(r.bytes()?),
            (8, VARINT) => AnyRef::Strindex(r.varint()? as i32),
            (1..=8, _) => return None,
            _ => {
                r.skip(wire)?;
                continue;
            }
        };
        // Two variants in one value: prost's oneof rules decide.
        if out.replace(value).is_some() {
            return None;
        }
    }
    Some(out)
}

/// A cursor over protobuf bytes; every method answers `None` on malformed input.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// The next field number and wire type, `Some(None)` at the end.
    fn tag(&mut self) -> Option<Option<(u32, u8)>> {
        if self.0.is_empty() {
            return Some(None);
        }
        let key = self.varint()?;
        // prost refuses keys past u32, whatever their field number.
        let key = u32::try_from(key).ok()?;
        let field = key >> 3;
        if field == 0 {
            return None;
        }
        Some(Some((field, (key & 7) as u8)))
    }

    #[inline]
    fn varint(&mut self) -> Option<u64> {
        // One byte: nearly every tag and length of a log record.
        if let Some((&byte, rest)) = self.0.split_first() {
            if byte < 0x80 {
                self.0 = rest;
                return Some(u64::from(byte));
            }
        }
        self.varint_long()
    }

    fn varint_long(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for (i, byte) in self.0.iter().take(10).enumerate() {
            // The tenth byte may only carry the top bit of a u64.
            if i == 9 && *byte > 1 {
                return None;
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Some(value);
            }
        }
        None
    }

    fn fixed64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_le_bytes(*head))
    }

    fn fixed32(&mut self) -> Option<u32> {
        let (head, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_le_bytes(*head))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        if len > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(head)
    }

    fn str(&mut self) -> Option<&'a str> {
        let bytes = self.bytes()?;
        // Keys and values are short and nearly always ASCII. The standard
        // validation goes byte by byte on strings this short (about 100
        // instructions each, a third of the walk); the ASCII check goes a
        // word at a time.
        if bytes.is_ascii() {
            // SAFETY: every ASCII byte sequence is valid UTF-8.
            return Some(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        match std::str::from_utf8(bytes) {
            Ok(s) => Some(s),
            // Looking for the strings to repair: note this one, read on.
            Err(_) => NOT_UTF8.with(|n| {
                let mut n = n.borrow_mut();
                let (base, spans) = n.as_mut()?;
                spans.push((bytes.as_ptr() as usize - *base, bytes.len()));
                Some("")
            }),
        }
    }

    /// Skips an unknown field as prost does; groups are left to prost.
    fn skip(&mut self, wire: u8) -> Option<()> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.fixed64().map(drop),
            LEN => self.bytes().map(drop),
            FIXED32 => self.fixed32().map(drop),
            _ => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
    };
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
    use prost::Message;

    use crate::test_rng::Rng;

    trait Texts {
        fn text(&mut self) -> String;
    }
    impl Texts for Rng {
        fn text(&mut self) -> String {
            const PARTS: &[&str] = &[
                "",
                "a",
                "session.id",
                "ü",
                "~/.ssh/id_rsa",
                "日本",
                " x ",
                "{\"q\": \"\\n\"}",
            ];
            (0..self.below(3))
                .map(|_| PARTS[self.below(PARTS.len() as u64) as usize])
                .collect()
        }
    }

    pub(crate) fn value(rng: &mut Rng, depth: usize) -> AnyValue {
        use any_value::Value as V;
        let pick = if depth > 3 {
            rng.below(5)
        } else {
            rng.below(9)
        };
        AnyValue {
            value: match pick {
                0 => Some(V::StringValue(rng.text())),
                1 => Some(V::BoolValue(rng.below(2) == 1)),
                2 => Some(V::IntValue(rng.next() as i64)),
                3 => Some(V::DoubleValue(rng.below(1000) as f64 / 7.0)),
                4 => Some(V::BytesValue(rng.text().into_bytes())),
                5 => Some(V::ArrayValue(ArrayValue {
                    values: (0..rng.below(3)).map(|_| value(rng, depth + 1)).collect(),
                })),
                6 => Some(V::KvlistValue(KeyValueList {
                    values: attributes(rng, depth + 1),
                })),
                7 => Some(V::StringValueStrindex(rng.below(50) as i32)),
                _ => None,
            },
        }
    }

    pub(crate) fn attributes(rng: &mut Rng, depth: usize) -> Vec<KeyValue> {
        (0..rng.below(5))
            .map(|_| KeyValue {
                key: rng.text(),
                value: (rng.below(8) != 0).then(|| value(rng, depth)),
                ..Default::default()
            })
            .collect()
    }

    pub(crate) fn resource(rng: &mut Rng) -> Option<Resource> {
        (rng.below(4) != 0).then(|| Resource {
            attributes: attributes(rng, 0),
            dropped_attributes_count: rng.below(2) as u32,
            ..Default::default()
        })
    }

    pub(crate) fn scope(rng: &mut Rng) -> Option<InstrumentationScope> {
        (rng.below(3) != 0).then(|| InstrumentationScope {
            name: rng.text(),
            version: rng.text(),
            ..Default::default()
        })
    }

    pub(crate) fn request(rng: &mut Rng) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: (0..1 + rng.below(2))
                .map(|_| ResourceLogs {
                    resource: resource(rng),
                    scope_logs: (0..1 + rng.below(2))
                        .map(|_| ScopeLogs {
                            scope: scope(rng),
                            log_records: (0..rng.below(4))
                                .map(|_| LogRecord {
                                    time_unix_nano: rng.next() >> rng.below(64),
                                    observed_time_unix_nano: rng.below(1 << 40),
                                    severity_number: rng.below(25) as i32,
                                    severity_text: rng.text(),
                                    body: (rng.below(2) == 0).then(|| value(rng, 0)),
                                    attributes: attributes(rng, 0),
                                    dropped_attributes_count: rng.below(2) as u32,
                                    flags: rng.below(2) as u32,
                                    trace_id: rng.text().into_bytes(),
                                    span_id: rng.text().into_bytes(),
                                    event_name: rng.text(),
                                })
                                .collect(),
                            schema_url: rng.text(),
                        })
                        .collect(),
                    schema_url: rng.text(),
                })
                .collect(),
        }
    }

    pub(crate) fn traces(rng: &mut Rng) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: (0..1 + rng.below(2))
                .map(|_| ResourceSpans {
                    resource: resource(rng),
                    scope_spans: (0..1 + rng.below(2))
                        .map(|_| ScopeSpans {
                            scope: scope(rng),
                            spans: (0..rng.below(4))
                                .map(|_| Span {
                                    trace_id: rng.text().into_bytes(),
                                    span_id: rng.text().into_bytes(),
                                    trace_state: rng.text(),
                                    parent_span_id: rng.text().into_bytes(),
                                    flags: rng.below(3) as u32,
                                    name: rng.text(),
                                    kind: rng.below(7) as i32,
                                    start_time_unix_nano: rng.next() >> rng.below(64),
                                    end_time_unix_nano: rng.next() >> rng.below(64),
                                    attributes: attributes(rng, 0),
                                    dropped_attributes_count: rng.below(2) as u32,
                                    events: (0..rng.below(3))
                                        .map(|_| span::Event {
                                            time_unix_nano: rng.next(),
                                            name: rng.text(),
                                            attributes: attributes(rng, 0),
                                            dropped_attributes_count: rng.below(2) as u32,
                                        })
                                        .collect(),
                                    dropped_events_count: rng.below(2) as u32,
                                    links: (0..rng.below(2))
                                        .map(|_| span::Link {
                                            trace_id: rng.text().into_bytes(),
                                            span_id: rng.text().into_bytes(),
                                            trace_state: rng.text(),
                                            attributes: attributes(rng, 0),
                                            dropped_attributes_count: rng.below(2) as u32,
                                            flags: rng.below(2) as u32,
                                        })
                                        .collect(),
                                    dropped_links_count: rng.below(2) as u32,
                                    status: (rng.below(2) == 0).then(|| Status {
                                        message: rng.text(),
                                        code: rng.below(4) as i32,
                                    }),
                                })
                                .collect(),
                            schema_url: rng.text(),
                        })
                        .collect(),
                    schema_url: rng.text(),
                })
                .collect(),
        }
    }

    /// The walk's reading of `bytes` (`fast`) agrees with prost's, or the
    /// walk declined: never a different request. `view` borrows prost's
    /// request as the walk's model, as Debug text (so NaN doubles compare equal).
    fn agree<F: std::fmt::Debug, P: Message + Default>(
        fast: Option<F>,
        bytes: &[u8],
        view: impl Fn(&P) -> String,
    ) -> Option<bool> {
        let fast = fast?;
        let reference = P::decode(bytes)
            .unwrap_or_else(|e| panic!("the walk accepted what prost refuses ({e}): {bytes:?}"));
        Some(format!("{fast:?}") == view(&reference))
    }

    fn agrees(bytes: &[u8]) -> Option<bool> {
        agree(decode_logs(bytes), bytes, |r| {
            format!("{:?}", LogsRef::from_prost(r))
        })
    }

    fn traces_agree(bytes: &[u8]) -> Option<bool> {
        agree(decode_traces(bytes), bytes, |r| {
            format!("{:?}", TracesRef::from_prost(r))
        })
    }

    /// Damages `bytes` in up to `hits` places (a byte changed, the rest cut
    /// off, a byte inserted); stops early when nothing is left.
    pub(crate) fn damage(rng: &mut Rng, bytes: &mut Vec<u8>, hits: u64) {
        for _ in 0..hits {
            if bytes.is_empty() {
                return;
            }
            let at = rng.below(bytes.len() as u64) as usize;
            match rng.below(3) {
                0 => bytes[at] = rng.next() as u8,
                1 => bytes.truncate(at),
                _ => bytes.insert(at, rng.next() as u8),
            }
        }
    }

    /// Counts damaged requests the walk read (each the same as prost's
    /// reading, or the test fails) and those it declined.
    fn read_or_declined(
        rng: &mut Rng,
        requests: u32,
        mut damaged: impl FnMut(&mut Rng) -> Vec<u8>,
        agree: fn(&[u8]) -> Option<bool>,
    ) {
        let (mut read, mut declined) = (0, 0);
        for i in 0..requests {
            let bytes = damaged(rng);
            match agree(&bytes) {
                Some(same) => {
                    assert!(same, "damaged request {i} read differently: {bytes:?}");
                    read += 1;
                }
                None => declined += 1,
            }
        }
        // Both branches ran: some damage still leaves a valid request.
        assert!(
            read > 100 && declined > 100,
            "read {read}, declined {declined}"
        );
    }

    #[test]
    fn spans_read_exactly_as_prost_reads_them_whole_or_damaged() {
        let mut rng = Rng(0x5a4e);
        let whole_then_damaged = |rng: &mut Rng| {
            let mut bytes = traces(rng).encode_to_vec();
            assert_eq!(traces_agree(&bytes), Some(true), "{bytes:?}");
            damage(rng, &mut bytes, 1);
            bytes
        };
        read_or_declined(&mut rng, 3000, whole_then_damaged, traces_agree);
    }

    #[test]
    fn well_formed_requests_read_exactly_as_prost_reads_them() {
        let mut rng = Rng(0x5eed);
        for i in 0..2000 {
            let bytes = request(&mut rng).encode_to_vec();
            assert_eq!(agrees(&bytes), Some(true), "request {i}");
        }
    }

    #[test]
    fn damaged_requests_are_read_as_prost_reads_them_or_left_to_prost() {
        let mut rng = Rng(0xbad);
        let damaged = |rng: &mut Rng| {
            let mut bytes = request(rng).encode_to_vec();
            let hits = 1 + rng.below(3);
            damage(rng, &mut bytes, hits);
            bytes
        };
        read_or_declined(&mut rng, 3000, damaged, agrees);
    }

    /// `bytes` as field `field` of a message (length-delimited).
    fn wrap(field: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![field << 3 | LEN];
        prost::encoding::encode_varint(bytes.len() as u64, &mut out);
        out.extend_from_slice(bytes);
        out
    }

    /// A request of one record, given as the record's bytes.
    fn request_of(record: &[u8]) -> Vec<u8> {
        wrap(1, &wrap(2, &wrap(2, record)))
    }

    #[test]
    fn what_prost_merges_or_refuses_is_left_to_prost() {
        let mut record = LogRecord {
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue("x".into())),
            }),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(agrees(&request_of(&record)) == Some(true));
        // A second body in the same record: prost merges the two.
        let mut twice = record.clone();
        twice.extend_from_slice(&wrap(5, &wrap(1, b"y")));
        assert!(ExportLogsServiceRequest::decode(request_of(&twice).as_slice()).is_ok());
        assert_eq!(decode_logs(&request_of(&twice)), None);
        // Two variants in one value.
        let mut both = record.clone();
        both.extend_from_slice(&wrap(5, &[0x10, 0x01]));
        assert_eq!(decode_logs(&request_of(&both)), None);
        // Invalid UTF-8, which prost refuses.
        let at = record
            .iter()
            .rposition(|b| *b == b'x')
            .expect("the body text");
        record[at] = 0xff;
        assert_eq!(decode_logs(&request_of(&record)), None);
        assert!(ExportLogsServiceRequest::decode(request_of(&record).as_slice()).is_err());
        // A key past u32 and a group wire type are left to prost.
        assert_eq!(decode_logs(&[0x80, 0x80, 0x80, 0x80, 0x20]), None);
        assert_eq!(decode_logs(&[0x0b, 0x0c]), None);
        // Any non-zero varint is a true bool, and enums keep unknown numbers.
        let odd = [wrap(5, &[0x10, 0x02]), vec![0x10, 0xff, 0x01]].concat();
        assert_eq!(agrees(&request_of(&odd)), Some(true));
        // Unknown fields are skipped, as prost skips them.
        let mut unknown = LogRecord::default().encode_to_vec();
        unknown.extend_from_slice(&wrap(15, b"future field"));
        unknown.extend_from_slice(&[0xf8, 0x01, 0x07]);
        assert_eq!(agrees(&request_of(&unknown)), Some(true));
    }

    #[test]
    fn strings_are_checked_as_utf8_past_the_ascii_fast_path() {
        // A record whose body (field 5) is the string value (field 1) `text`,
        // bytes as given.
        let record = |text: &[u8]| request_of(&wrap(5, &wrap(1, text)));
        for valid in ["plain ascii", "café", "日本語のパス", "~/.ssh/id_rsa ✓", ""] {
            assert_eq!(agrees(&record(valid.as_bytes())), Some(true), "{valid}");
        }
        // A lone continuation byte, a cut two-byte sequence, an overlong
        // slash, a surrogate: prost refuses each, the walk declines each.
        for invalid in [&b"ab\x80"[..], b"caf\xc3", b"\xc0\xaf", b"\xed\xa0\x80x"] {
            let bytes = record(invalid);
            assert_eq!(decode_logs(&bytes), None, "{invalid:?}");
            assert!(ExportLogsServiceRequest::decode(bytes.as_slice()).is_err());
        }
    }

    #[test]
    fn strings_that_are_not_utf8_are_repaired_in_place() {
        // Two records: one whose body is cut in a character, one whose
        // attribute value holds a lone surrogate; a trace id with bytes that
        // are not UTF-8 either, which is not a string and stays.
        let bad_body = wrap(5, &wrap(1, b"cat ~/.aws/cred\xc3"));
        let bad_attr = [
            wrap(
                6,
                &[wrap(1, b"user.email"), wrap(2, &wrap(1, b"a@example.com"))].concat(),
            ),
            wrap(
                6,
                &[wrap(1, b"cmd"), wrap(2, &wrap(1, b"echo \xed\xa0\x80!"))].concat(),
            ),
            wrap(9, &[0xff; 16]),
        ]
        .concat();
        let req = [wrap(
            1,
            &wrap(2, &[wrap(2, &bad_body), wrap(2, &bad_attr)].concat()),
        )]
        .concat();
        assert!(ExportLogsServiceRequest::decode(req.as_slice()).is_err());
        let (fixed, strings) = repair_utf8(&req, false).expect("repairable");
        assert_eq!(strings, 2);
        assert_eq!(fixed.len(), req.len());
        let prost = ExportLogsServiceRequest::decode(fixed.as_slice()).expect("valid now");
        let recs = &prost.resource_logs[0].scope_logs[0].log_records;
        let body = recs[0].body.as_ref().and_then(|b| b.value.as_ref());
        assert!(matches!(body, Some(any_value::Value::StringValue(s)) if s == "cat ~/.aws/cred?"));
        let cmd = recs[1].attributes[1]
            .value
            .as_ref()
            .and_then(|v| v.value.as_ref());
        assert!(matches!(cmd, Some(any_value::Value::StringValue(s)) if s == "echo ???!"));
        assert_eq!(recs[1].trace_id, vec![0xff; 16]);
        assert_eq!(decode_logs(&fixed).map(|r| r.records()), Some(2));
        // Nothing to repair, or something else wrong: no copy.
        assert_eq!(
            repair_utf8(&request_of(&wrap(5, &wrap(1, b"fine"))), false),
            None
        );
        assert_eq!(repair_utf8(&[0x0b, 0x0c], false), None);
    }

    #[test]
    fn deep_values_are_left_to_prost() {
        let mut v = AnyValue {
            value: Some(any_value::Value::StringValue("leaf".into())),
        };
        for _ in 0..MAX_NESTING + 1 {
            v = AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![v] })),
            };
        }
        let req = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        body: Some(v),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(decode_logs(&req.encode_to_vec()), None);
    }
}
