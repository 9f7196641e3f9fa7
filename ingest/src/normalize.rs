//! Turns decoded OTLP export requests into normalized events.
//!
//! Every log record, span and metric data point becomes exactly one event; the
//! mapping set decides its columns. A record is rejected (and reported back to
//! the sender through OTLP partial success) only when it cannot be represented:
//! a timestamp beyond what nanoseconds in an i64 can hold (after year 2262).
//!
//! A sender whose clock runs ahead would move the rules' event-time
//! watermark past every other sender, whose events would then all arrive
//! late. So a resource (one sender) whose newest record is more than
//! [`Normalizer::with_max_clock_ahead`] past the time vigil received it has
//! all its records moved back by the same amount, the newest to the receipt
//! time: their order and spacing stay, and each keeps the time it was sent
//! with in `attrs["vigil.sender_time"]`.
//!
//! That harm needs other senders, whose clocks agree with vigil's: records
//! ahead of vigil's clock are moved back only while some sender's newest
//! record lay near its receipt in the last [`LIVE_FOR`] (or in the same
//! request, wherever it stands among the resources, or, at a start, in the
//! restored state: [`Normalizer::heard_before_start`]). A stream that is
//! ahead as a whole (a test or a replay of scenarios dated in the future,
//! sent faster than they happened) has no such sender and is taken as sent.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use event::Event;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, Metric};
use opentelemetry_proto::tonic::trace::v1::{span, status};

use crate::mapping::{MappingSet, Signal};
use crate::otlp::{self, KvRef, LogRecordRef, LogsRef, RequestRef, SpanRef, TracesRef};
use crate::record::{Origin, RecordView, Val};

/// Result of normalizing one export request.
#[derive(Debug, Default)]
pub struct Normalized {
    pub events: Vec<Event>,
    /// Records that could not be represented; reported as partial success.
    pub rejected: u64,
    /// A message about the first rejected record, for the partial-success reply.
    pub error: Option<String>,
    /// Records moved back because their sender's clock ran ahead.
    pub clock_ahead: u64,
    /// The largest such move, in nanoseconds.
    pub clock_ahead_max_ns: i64,
    /// Senders (resources) whose records lie ahead of the receipt time and
    /// were taken as sent, because no sender's clock has agreed with vigil's
    /// lately (see the module's text).
    pub ahead_taken: u64,
}

impl Normalized {
    fn reject(&mut self, message: String) {
        self.rejected += 1;
        if self.error.is_none() {
            self.error = Some(message);
        }
    }
}

/// How far past its receipt a sender's newest record may lie before the
/// sender's records are moved back (see the module's text).
pub const DEFAULT_MAX_CLOCK_AHEAD: std::time::Duration = std::time::Duration::from_secs(60);

/// How long a sender whose clock agrees with vigil's shows that the stream
/// is live, so that records ahead of vigil's clock are a sender's error.
pub const LIVE_FOR: std::time::Duration = std::time::Duration::from_secs(600);
const LIVE_FOR_NS: i64 = LIVE_FOR.as_nanos() as i64;
/// How far behind its receipt a sender's newest record may lie and still
/// count as sent by a clock that agrees with vigil's (exporters batch and
/// retry: seconds to minutes).
const LIVE_BEHIND_NS: i64 = 600_000_000_000;

/// Applies the mapping set to OTLP requests. Cheap to clone; clones share
/// what they learn of the senders' clocks.
#[derive(Debug, Clone)]
pub struct Normalizer {
    mappings: Arc<MappingSet>,
    max_ahead_ns: i64,
    /// Receipt time of the newest request from a sender whose clock agreed
    /// with vigil's (`i64::MIN`: none yet).
    live_at: Arc<AtomicI64>,
}

impl Normalizer {
    pub fn new(mappings: Arc<MappingSet>) -> Self {
        Normalizer {
            mappings,
            max_ahead_ns: DEFAULT_MAX_CLOCK_AHEAD.as_nanos() as i64,
            live_at: Arc::new(AtomicI64::new(i64::MIN)),
        }
    }

    /// How far ahead of the receipt time a sender's clock may run before its
    /// records are moved back.
    pub fn with_max_clock_ahead(mut self, ahead: std::time::Duration) -> Self {
        self.max_ahead_ns = i64::try_from(ahead.as_nanos()).unwrap_or(i64::MAX);
        self
    }

    /// Whether a sender whose newest record is `newest_ns`, received at
    /// `observed_ns`, has a clock that agrees with vigil's: ahead by no more
    /// than allowed, behind by no more than exporters batch and retry.
    fn agrees(&self, newest_ns: i64, observed_ns: i64) -> bool {
        let ahead = newest_ns.saturating_sub(observed_ns);
        (-LIVE_BEHIND_NS..=self.max_ahead_ns).contains(&ahead)
    }

    /// The newest record time of each sender (resource) of a request, in
    /// order; a sender among them whose clock agrees with vigil's shows the
    /// stream is live before any of them is judged by [`Self::shift`], so the
    /// order of resources within a request does not matter.
    fn newest_of_senders(
        &self,
        newest: impl Iterator<Item = Option<i64>>,
        observed_ns: i64,
    ) -> Vec<Option<i64>> {
        let newest: Vec<Option<i64>> = newest.collect();
        let agrees = newest
            .iter()
            .flatten()
            .any(|&t| self.agrees(t, observed_ns));
        // Written at most once a second: every receiver reads it.
        if agrees
            && self.live_at.load(Ordering::Relaxed) < observed_ns.saturating_sub(1_000_000_000)
        {
            self.live_at.fetch_max(observed_ns, Ordering::Relaxed);
        }
        newest
    }

    /// At a start: the newest event of the restored state, `newest_ns`, lay
    /// near `now_ns` (within what a live sender's newest may lie from its
    /// receipt), so the stream was live until just before this start and
    /// vouches for senders' clocks as one heard then would. Without it a
    /// restart would forget that the stream is live, and a sender whose
    /// clock runs ahead, heard first, would move the watermark for everyone.
    /// Returns whether it vouched.
    pub fn heard_before_start(&self, newest_ns: i64, now_ns: i64) -> bool {
        let live = self.agrees(newest_ns, now_ns);
        if live {
            self.live_at
                .fetch_max(newest_ns.min(now_ns), Ordering::Relaxed);
        }
        live
    }

    /// How far one sender's records move back: 0 unless its newest record
    /// lies more than the allowed amount past `observed_ns` while other
    /// senders' clocks agree with vigil's.
    fn shift(&self, newest: Option<i64>, observed_ns: i64, out: &mut Normalized) -> i64 {
        let Some(t) = newest else { return 0 };
        let ahead = t.saturating_sub(observed_ns);
        if ahead <= self.max_ahead_ns {
            return 0;
        }
        if observed_ns.saturating_sub(self.live_at.load(Ordering::Relaxed)) > LIVE_FOR_NS {
            out.ahead_taken += 1;
            return 0;
        }
        out.clock_ahead_max_ns = out.clock_ahead_max_ns.max(ahead);
        ahead
    }

    pub fn mappings(&self) -> &MappingSet {
        &self.mappings
    }

    pub fn logs(
        &self,
        req: &ExportLogsServiceRequest,
        tenant: &str,
        observed_ns: i64,
    ) -> Normalized {
        self.logs_ref(&LogsRef::from_prost(req), tenant, observed_ns)
    }

    /// Normalizes a borrowed log request (see [`crate::otlp`]).
    pub fn logs_ref(&self, req: &LogsRef<'_>, tenant: &str, observed_ns: i64) -> Normalized {
        let times = |rec: &LogRecordRef<'_>| [rec.time_unix_nano, rec.observed_time_unix_nano];
        self.each_record(req, Signal::Log, tenant, observed_ns, times, |view, rec| {
            view.add_any("body".into(), rec.body.as_ref(), Origin::Record, 0);
            if !rec.event_name.is_empty() {
                view.insert(
                    "event_name".into(),
                    Val::Str(rec.event_name.into()),
                    Origin::Record,
                );
            }
            if !rec.severity_text.is_empty() {
                view.insert(
                    "severity_text".into(),
                    Val::Str(rec.severity_text.into()),
                    Origin::Record,
                );
            }
            if rec.severity_number != 0 {
                view.insert(
                    "severity_number".into(),
                    Val::Int(rec.severity_number as i64),
                    Origin::Record,
                );
            }
            add_ids(view, rec.trace_id, rec.span_id);
            view.add_attributes("", &rec.attributes, Origin::Attribute);
        })
    }

    /// The walk log and trace requests share: each record's view sits on its
    /// resource's and scope's (built once), gets the first non-zero of
    /// `times` as its time (records past 2262 are rejected), its signal, and
    /// what `fill` adds of the record itself; the mapping makes the event.
    fn each_record<'a, R>(
        &'a self,
        req: &'a RequestRef<'a, R>,
        signal: Signal,
        tenant: &str,
        observed_ns: i64,
        times: impl Fn(&R) -> [u64; 2],
        fill: impl Fn(&mut RecordView<'a>, &'a R),
    ) -> Normalized {
        let mut out = Normalized::default();
        // Room for every record's event at once: growing the vector moved
        // the events made so far, a few hundred bytes each, again and again.
        out.events.reserve(req.records());
        // One view for every record of the request, cleared per record: its
        // table is allocated once (requests often carry a resource per sender).
        let mut view = RecordView::default();
        let newest = self.newest_of_senders(
            req.resources.iter().map(|resource| {
                resource
                    .scopes
                    .iter()
                    .flat_map(|s| &s.records)
                    .filter_map(|r| pick_time(&times(r), observed_ns).ok())
                    .max()
            }),
            observed_ns,
        );
        for (resource, newest) in req.resources.iter().zip(newest) {
            let base = base_view(&resource.attributes);
            let shift = self.shift(newest, observed_ns, &mut out);
            for scope in &resource.scopes {
                view.set_parent(with_scope(&base, scope.name, scope.version));
                for rec in &scope.records {
                    let time = match pick_time(&times(rec), observed_ns) {
                        Ok(t) => t,
                        Err(e) => {
                            out.reject(e);
                            continue;
                        }
                    };
                    view.clear();
                    view.insert(
                        "@signal".into(),
                        Val::Str(signal.as_str().into()),
                        Origin::Derived,
                    );
                    fill(&mut view, rec);
                    self.finish(
                        signal,
                        &mut view,
                        &mut out.events,
                        tenant,
                        (time, shift),
                        observed_ns,
                    );
                    out.clock_ahead += u64::from(shift > 0);
                }
            }
        }
        out
    }

    pub fn traces(
        &self,
        req: &ExportTraceServiceRequest,
        tenant: &str,
        observed_ns: i64,
    ) -> Normalized {
        self.traces_ref(&TracesRef::from_prost(req), tenant, observed_ns)
    }

    /// Normalizes a borrowed trace request (see [`crate::otlp`]).
    pub fn traces_ref(&self, req: &TracesRef<'_>, tenant: &str, observed_ns: i64) -> Normalized {
        let times = |sp: &SpanRef<'_>| [sp.start_time_unix_nano, sp.end_time_unix_nano];
        self.each_record(req, Signal::Span, tenant, observed_ns, times, |view, sp| {
            view.insert("span.name".into(), Val::Str(sp.name.into()), Origin::Record);
            let kind = match span::SpanKind::try_from(sp.kind) {
                Ok(span::SpanKind::Internal) => "internal",
                Ok(span::SpanKind::Server) => "server",
                Ok(span::SpanKind::Client) => "client",
                Ok(span::SpanKind::Producer) => "producer",
                Ok(span::SpanKind::Consumer) => "consumer",
                _ => "unspecified",
            };
            view.insert("span.kind".into(), Val::Str(kind.into()), Origin::Record);
            let status = match status::StatusCode::try_from(sp.status_code) {
                Ok(status::StatusCode::Ok) => "ok",
                Ok(status::StatusCode::Error) => "error",
                _ => "unset",
            };
            view.insert(
                "span.status".into(),
                Val::Str(status.into()),
                Origin::Record,
            );
            if !sp.status_message.is_empty() {
                view.insert(
                    "span.status_message".into(),
                    Val::Str(sp.status_message.into()),
                    Origin::Record,
                );
            }
            if sp.end_time_unix_nano >= sp.start_time_unix_nano && sp.start_time_unix_nano > 0 {
                let ms = (sp.end_time_unix_nano - sp.start_time_unix_nano) as f64 / 1e6;
                view.insert("span.duration_ms".into(), Val::Double(ms), Origin::Record);
            }
            add_ids(view, sp.trace_id, sp.span_id);
            if !sp.parent_span_id.is_empty() {
                view.insert(
                    "parent_span_id".into(),
                    Val::Str(hex::encode(sp.parent_span_id).into()),
                    Origin::Record,
                );
            }
            view.add_attributes("", &sp.attributes, Origin::Attribute);
        })
    }

    pub fn metrics(
        &self,
        req: &ExportMetricsServiceRequest,
        tenant: &str,
        observed_ns: i64,
    ) -> Normalized {
        let mut out = Normalized::default();
        let mut view = RecordView::default();
        let newest = self.newest_of_senders(
            req.resource_metrics.iter().map(|rm| {
                rm.scope_metrics
                    .iter()
                    .flat_map(|sm| &sm.metrics)
                    .flat_map(data_points)
                    .filter_map(|p| pick_time(&[p.time], observed_ns).ok())
                    .max()
            }),
            observed_ns,
        );
        for (rm, newest) in req.resource_metrics.iter().zip(newest) {
            let base = base_view(&otlp::resource(rm.resource.as_ref()));
            let shift = self.shift(newest, observed_ns, &mut out);
            for sm in &rm.scope_metrics {
                let (name, version) = otlp::scope(sm.scope.as_ref());
                view.set_parent(with_scope(&base, name, version));
                for m in &sm.metrics {
                    for point in data_points(m) {
                        let time = match pick_time(&[point.time], observed_ns) {
                            Ok(t) => t,
                            Err(e) => {
                                out.reject(e);
                                continue;
                            }
                        };
                        view.clear();
                        view.insert("@signal".into(), Val::Str("metric".into()), Origin::Derived);
                        view.insert(
                            "metric.name".into(),
                            Val::Str(m.name.as_str().into()),
                            Origin::Record,
                        );
                        if !m.unit.is_empty() {
                            view.insert(
                                "metric.unit".into(),
                                Val::Str(m.unit.as_str().into()),
                                Origin::Record,
                            );
                        }
                        view.insert(
                            "metric.type".into(),
                            Val::Str(point.kind.into()),
                            Origin::Record,
                        );
                        for (k, v) in point.values {
                            view.insert(k.into(), v, Origin::Record);
                        }
                        view.add_attributes("", &otlp::kvs(point.attributes), Origin::Attribute);
                        self.finish(
                            Signal::Metric,
                            &mut view,
                            &mut out.events,
                            tenant,
                            (time, shift),
                            observed_ns,
                        );
                        out.clock_ahead += u64::from(shift > 0);
                    }
                }
            }
        }
        out
    }

    /// Maps the record into a new event at the end of `events`, filled where
    /// it lies: an event is a few hundred bytes, and building it aside
    /// first cost a copy of each. `time` is the record's and how far its
    /// sender's clock moves it back.
    fn finish<'a>(
        &'a self,
        signal: Signal,
        view: &mut RecordView<'a>,
        events: &mut Vec<Event>,
        tenant: &str,
        (time, shift): (i64, i64),
        observed_ns: i64,
    ) {
        events.push(Event {
            time: time - shift,
            observed_time: observed_ns,
            tenant: event::Text::from(tenant),
            ..Default::default()
        });
        let ev = events.last_mut().expect("just pushed");
        // The generic mapping has no condition, so one always applies.
        let _ = self.mappings.apply(signal, view, ev);
        if shift > 0 {
            ev.attrs.insert("vigil.sender_time", event::format_ns(time));
        }
        ev.event_id = ev.compute_id();
    }
}

fn base_view<'a>(resource: &[KvRef<'a>]) -> Arc<RecordView<'a>> {
    let mut view = RecordView::default();
    view.add_attributes("resource.", resource, Origin::Resource);
    Arc::new(view)
}

fn with_scope<'a>(
    base: &Arc<RecordView<'a>>,
    name: &'a str,
    version: &'a str,
) -> Arc<RecordView<'a>> {
    let mut view = RecordView::on(base.clone(), 2);
    if !name.is_empty() {
        view.insert("scope.name".into(), Val::Str(name.into()), Origin::Record);
    }
    if !version.is_empty() {
        view.insert(
            "scope.version".into(),
            Val::Str(version.into()),
            Origin::Record,
        );
    }
    Arc::new(view)
}

fn add_ids(view: &mut RecordView<'_>, trace_id: &[u8], span_id: &[u8]) {
    if !trace_id.is_empty() && trace_id.iter().any(|b| *b != 0) {
        view.insert(
            "trace_id".into(),
            Val::Str(hex::encode(trace_id).into()),
            Origin::Record,
        );
    }
    if !span_id.is_empty() && span_id.iter().any(|b| *b != 0) {
        view.insert(
            "span_id".into(),
            Val::Str(hex::encode(span_id).into()),
            Origin::Record,
        );
    }
}

/// The first non-zero candidate, else vigil's receive time; an error past i64 nanoseconds.
fn pick_time(candidates: &[u64], observed_ns: i64) -> Result<i64, String> {
    match candidates.iter().find(|t| **t != 0) {
        None => Ok(observed_ns),
        Some(t) => i64::try_from(*t).map_err(|_| {
            format!("timestamp {t} ns is beyond 2262-04-11, the latest time vigil can represent")
        }),
    }
}

struct Point<'a> {
    time: u64,
    kind: &'static str,
    values: Vec<(&'static str, Val<'static>)>,
    attributes: &'a [KeyValue],
}

fn number(v: &Option<number_data_point::Value>) -> Val<'static> {
    match v {
        Some(number_data_point::Value::AsInt(i)) => Val::Int(*i),
        Some(number_data_point::Value::AsDouble(d)) => Val::Double(*d),
        None => Val::Str("".into()),
    }
}

fn data_points(m: &Metric) -> Vec<Point<'_>> {
    /// One point per data point of a typed list: time, the values it carries, attributes.
    fn points<'a, P>(
        list: &'a [P],
        kind: &'static str,
        parts: impl Fn(&'a P) -> (u64, Vec<(&'static str, Val<'static>)>, &'a [KeyValue]),
    ) -> Vec<Point<'a>> {
        list.iter()
            .map(|p| {
                let (time, values, attributes) = parts(p);
                Point {
                    time,
                    kind,
                    values,
                    attributes,
                }
            })
            .collect()
    }
    let totals = |count: u64, sum: f64| {
        vec![
            ("metric.count", Val::Int(count as i64)),
            ("metric.sum", Val::Double(sum)),
        ]
    };
    match &m.data {
        Some(metric::Data::Gauge(g)) => points(&g.data_points, "gauge", |p| {
            (
                p.time_unix_nano,
                vec![("metric.value", number(&p.value))],
                &p.attributes,
            )
        }),
        Some(metric::Data::Sum(s)) => points(&s.data_points, "sum", |p| {
            (
                p.time_unix_nano,
                vec![("metric.value", number(&p.value))],
                &p.attributes,
            )
        }),
        Some(metric::Data::Histogram(h)) => points(&h.data_points, "histogram", |p| {
            (
                p.time_unix_nano,
                totals(p.count, p.sum.unwrap_or(0.0)),
                &p.attributes,
            )
        }),
        Some(metric::Data::ExponentialHistogram(h)) => {
            points(&h.data_points, "exponential_histogram", |p| {
                (
                    p.time_unix_nano,
                    totals(p.count, p.sum.unwrap_or(0.0)),
                    &p.attributes,
                )
            })
        }
        Some(metric::Data::Summary(s)) => points(&s.data_points, "summary", |p| {
            (p.time_unix_nano, totals(p.count, p.sum), &p.attributes)
        }),
        None => Vec::new(),
    }
}
