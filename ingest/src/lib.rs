//! vigil's front door: OTLP receivers (gRPC on 4317, HTTP protobuf and JSON on
//! 4318) and the declarative normalization of what they receive into
//! [`event::Event`]s.
//!
//! Data enters as OTLP export requests, is decoded once, normalized by the
//! mapping set ([`mapping`]) and handed, a request at a time, to the pipeline
//! through a bounded queue ([`handoff`]). The sender is answered only when the
//! pipeline has kept the batch, so an accepted record is never lost in vigil's
//! memory; when the pipeline is full or cannot keep data, the receivers say so
//! with the status codes OTLP exporters retry.

pub mod auth;
pub mod capture;
pub mod grpc;
pub mod handoff;
pub mod http;
pub mod json;
pub mod limits;
pub mod mapping;
pub mod memory;
pub mod metrics;
pub mod normalize;
pub mod otlp;
pub mod pattern;
pub mod record;
pub mod tls;
pub mod wire;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

pub use handoff::{IngestBatch, PipelineHandle, SubmitError};
pub use mapping::{MappingError, MappingSet, Signal};
pub use metrics::IngestMetrics;
pub use normalize::{Normalized, Normalizer};

/// An export request of any signal.
#[derive(Debug)]
pub enum Payload {
    Logs(ExportLogsServiceRequest),
    /// A log request as received: read by [`wire`] without prost's
    /// allocations, by prost when the walk declines.
    LogsBytes(bytes::Bytes),
    Traces(ExportTraceServiceRequest),
    /// A trace request as received, read like [`Payload::LogsBytes`].
    TracesBytes(bytes::Bytes),
    /// An OTLP/JSON log request as received: read by [`json`] with strings
    /// borrowed from the body, by opentelemetry-proto's serde when it declines.
    LogsJson(bytes::Bytes),
    /// An OTLP/JSON trace request as received, read like [`Payload::LogsJson`].
    TracesJson(bytes::Bytes),
    Metrics(ExportMetricsServiceRequest),
}

impl Payload {
    pub fn signal(&self) -> Signal {
        match self {
            Payload::Logs(_) | Payload::LogsBytes(_) | Payload::LogsJson(_) => Signal::Log,
            Payload::Traces(_) | Payload::TracesBytes(_) | Payload::TracesJson(_) => Signal::Span,
            Payload::Metrics(_) => Signal::Metric,
        }
    }
}

/// What one export request came to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExportOutcome {
    pub accepted: usize,
    pub rejected: u64,
    pub error: Option<String>,
}

/// Everything a receiver needs, shared by the gRPC and HTTP servers.
#[derive(Clone)]
pub struct Ingest {
    pub normalizer: Normalizer,
    pub pipeline: PipelineHandle,
    pub metrics: IngestMetrics,
    /// Tenant given to events when no credential names one.
    pub tenant: Arc<str>,
    /// Largest request accepted, after decompression.
    pub max_body_bytes: usize,
    /// Renders the process's Prometheus metrics for `GET /metrics`.
    pub render_metrics: Arc<dyn Fn() -> String + Send + Sync>,
    /// Whether the pipeline and its sinks are up, for `GET /readyz`; `Err` says what is not.
    pub readiness: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
    /// Bearer-token authentication; when set, every request needs a valid
    /// token and its events get the token's tenant.
    pub auth: Option<Arc<auth::Authenticator>>,
    /// Per-tenant rate limits, when configured.
    pub limits: Option<Arc<limits::TenantLimiter>>,
    /// Refuses data while RSS is above the soft limit, when configured.
    pub memory: Option<Arc<memory::MemoryLimiter>>,
    /// Where accepted requests are captured for exact replay, when on.
    pub capture: Option<Arc<std::sync::Mutex<capture::CaptureWriter>>>,
}

impl Ingest {
    /// Normalizes a request (off the async runtime: it is CPU work) and hands the
    /// events to the pipeline, returning once they are kept.
    pub async fn export(
        &self,
        payload: Payload,
        transport: &str,
        tenant: Arc<str>,
    ) -> Result<ExportOutcome, SubmitError> {
        let signal = payload.signal();
        if let Some(memory) = &self.memory {
            if let Err(message) = memory.check() {
                self.metrics
                    .request(transport, signal.as_str(), "memory_limited");
                return Err(SubmitError::RateLimited {
                    retry_after_secs: 1,
                    message,
                });
            }
        }
        let normalizer = self.normalizer.clone();
        let limiter = self.limits.clone();
        let capture_tenant = tenant.clone();
        let wants_columns = self.pipeline.wants_columns();
        let metrics = self.metrics.clone();
        let (normalized, columns, payload, received_ns) = tokio::task::spawn_blocking(move || {
            let now = now_ns();
            // Over the tenant's rate, a request is refused before normalization.
            let admit = |records: usize| match &limiter {
                Some(limits) => {
                    limits
                        .check(&tenant, records)
                        .map_err(|over| match over.too_large {
                            true => SubmitError::TooLarge(over.message),
                            false => SubmitError::RateLimited {
                                retry_after_secs: over.retry_after.as_secs().max(1),
                                message: over.message,
                            },
                        })
                }
                None => Ok(()),
            };
            let logs = |req: otlp::LogsRef<'_>| {
                admit(req.records())?;
                Ok::<_, SubmitError>(normalizer.logs_ref(&req, &tenant, now))
            };
            let traces = |req: otlp::TracesRef<'_>| {
                admit(req.records())?;
                Ok::<_, SubmitError>(normalizer.traces_ref(&req, &tenant, now))
            };
            let n = read_request(
                &payload,
                |format, signal| metrics.reference_decode(format, signal),
                logs,
                traces,
                |r| {
                    admit(limits::data_points_in(r))?;
                    Ok(normalizer.metrics(r, &tenant, now))
                },
            )??;
            // The archive's columns, built here while the events are hot in
            // this thread's cache (and on any core, not the archive's one).
            let columns = (wants_columns && !n.events.is_empty())
                .then(|| event::schema::events_to_batch(&n.events).ok())
                .flatten();
            Ok((n, columns, payload, now))
        })
        .await
        .map_err(|e| SubmitError::Unavailable(format!("normalization failed: {e}")))
        .and_then(|r| r)
        .inspect_err(|e| {
            let status = match e {
                SubmitError::RateLimited { .. } => "rate_limited",
                SubmitError::Invalid(_) => "bad_request",
                SubmitError::TooLarge(_) => "too_large",
                _ => "unavailable",
            };
            self.metrics.request(transport, signal.as_str(), status);
        })?;

        let Normalized {
            events,
            rejected,
            error,
            clock_ahead,
            clock_ahead_max_ns,
            ahead_taken,
        } = normalized;
        if ahead_taken > 0 && once_a_minute(&AHEAD_TAKEN_SAID, received_ns) {
            tracing::warn!(
                tenant = %capture_tenant,
                "records dated ahead of vigil's clock are taken as sent: no sender's clock has agreed with vigil's in the last 10 minutes (a replay or test stream dated ahead?); if this is a live deployment, check this machine's clock"
            );
        }
        if clock_ahead > 0 {
            self.metrics
                .records_clock_ahead
                .get_or_create(&metrics::SignalLabel {
                    signal: signal.as_str().into(),
                })
                .inc_by(clock_ahead);
            // At most one warning a minute: a broken clock sends every few seconds.
            if once_a_minute(&CLOCK_AHEAD_SAID, received_ns) {
                let first = events
                    .iter()
                    .find(|e| e.attrs.contains_key("vigil.sender_time"));
                tracing::warn!(
                    tenant = %capture_tenant,
                    records = clock_ahead,
                    ahead_secs = clock_ahead_max_ns / 1_000_000_000,
                    user = first.and_then(|e| e.user.as_deref()).unwrap_or("-"),
                    host = first.and_then(|e| e.host.as_deref()).unwrap_or("-"),
                    product = first.and_then(|e| e.product.as_deref()).unwrap_or("-"),
                    "a sender's clock runs ahead of vigil's: its records were moved back to the time they were received (at most one such warning a minute; vigil_records_clock_ahead_total counts them all)"
                );
            }
        }
        let accepted = events.len();
        if accepted == 0 && rejected == 0 && snake_case_json(&payload) {
            // Valid OTLP/JSON ignores unknown keys, so such a request is
            // taken and holds nothing: say why, or its data vanishes unseen.
            tracing::warn!(
                tenant = %capture_tenant,
                "an OTLP/JSON request held no records: its keys are snake_case (resource_logs, resource_spans); OTLP/JSON names them in lowerCamelCase (resourceLogs) and ignores other keys"
            );
        }
        let mut by_source: std::collections::BTreeMap<&'static str, u64> = Default::default();
        for e in &events {
            *by_source.entry(e.source.as_str()).or_default() += 1;
        }
        let result = self.pipeline.submit(events, columns).await;
        let status = match &result {
            Ok(()) => "ok",
            Err(SubmitError::Busy) => "busy",
            Err(SubmitError::Unavailable(_)) => "unavailable",
            Err(SubmitError::Closed) => "closed",
            Err(SubmitError::RateLimited { .. }) => "rate_limited",
            Err(SubmitError::Invalid(_)) => "bad_request",
            Err(SubmitError::TooLarge(_)) => "too_large",
        };
        self.metrics.request(transport, signal.as_str(), status);
        result?;
        if let Some(capture) = &self.capture {
            // Kept for exact replay; the events are already archived, so a
            // capture failure is logged and counted, not sent back.
            let (capture, tenant) = (capture.clone(), capture_tenant);
            let metrics = self.metrics.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let written = capture
                    .lock()
                    .map_err(|_| "capture writer poisoned".to_string())
                    .and_then(|mut w| {
                        w.append(&tenant, received_ns, &payload)
                            .map_err(|e| e.to_string())
                    });
                if let Err(e) = written {
                    metrics.capture_errors.inc();
                    tracing::error!(error = %e, "capture write failed");
                }
            })
            .await;
        }
        self.metrics.batches_submitted.inc();
        for (source, n) in by_source {
            self.metrics
                .records_received
                .get_or_create(&metrics::SignalSource {
                    signal: signal.as_str().into(),
                    source: source.into(),
                })
                .inc_by(n);
        }
        if rejected > 0 {
            self.metrics
                .records_rejected
                .get_or_create(&metrics::SignalLabel {
                    signal: signal.as_str().into(),
                })
                .inc_by(rejected);
        }
        Ok(ExportOutcome {
            accepted,
            rejected,
            error,
        })
    }
}

impl Ingest {
    /// The tenant of a request: the token's when authentication is on, else the configured one.
    /// The tenant of a request from its credentials: the verified client
    /// certificate's name (mTLS) or the `Authorization` header.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        peer: Option<&tls::PeerIdentity>,
    ) -> Result<Arc<str>, auth::Refusal> {
        match &self.auth {
            Some(a) => a.check(authorization, peer.and_then(|p| p.client_cn.as_deref())),
            None => Ok(self.tenant.clone()),
        }
    }
}

/// Reads an export request as the receivers do, and hands it to the
/// closure of its signal: logs and spans walked in place ([`wire`]) or read
/// into the same borrowed model ([`json`]), by the reference decoders
/// (prost, opentelemetry-proto's serde) only where those decline, and
/// `by_reference(format, signal)` is told then. `Err` is a request that
/// does not decode, in words for its sender.
pub fn read_request<T>(
    payload: &Payload,
    by_reference: impl FnOnce(&'static str, &'static str),
    logs: impl FnOnce(otlp::LogsRef<'_>) -> T,
    traces: impl FnOnce(otlp::TracesRef<'_>) -> T,
    metrics: impl FnOnce(&ExportMetricsServiceRequest) -> T,
) -> Result<T, SubmitError> {
    Ok(match payload {
        Payload::LogsBytes(bytes) => read_protobuf::<LogsBytes, T>(bytes, by_reference, logs)?,
        Payload::TracesBytes(bytes) => {
            read_protobuf::<TracesBytes, T>(bytes, by_reference, traces)?
        }
        Payload::LogsJson(body) => json::with_logs(body, || by_reference("json", "log"), logs)
            .map_err(SubmitError::Invalid)?,
        Payload::TracesJson(body) => {
            json::with_traces(body, || by_reference("json", "span"), traces)
                .map_err(SubmitError::Invalid)?
        }
        Payload::Logs(r) => logs(otlp::LogsRef::from_prost(r)),
        Payload::Traces(r) => traces(otlp::TracesRef::from_prost(r)),
        Payload::Metrics(r) => metrics(r),
    })
}

/// A signal whose protobuf requests are read in place ([`wire`]), with prost
/// as the reference for what the walk declines.
trait ProtobufSignal {
    const SIGNAL: &'static str;
    /// Whether [`wire::repair_utf8`] reads the bytes as spans.
    const TRACES: bool;
    type Prost: Message + Default;
    type Ref<'a>;
    fn walk(bytes: &[u8]) -> Option<Self::Ref<'_>>;
    fn from_prost(req: &Self::Prost) -> Self::Ref<'_>;
}

struct LogsBytes;

impl ProtobufSignal for LogsBytes {
    const SIGNAL: &'static str = "log";
    const TRACES: bool = false;
    type Prost = ExportLogsServiceRequest;
    type Ref<'a> = otlp::LogsRef<'a>;
    fn walk(bytes: &[u8]) -> Option<Self::Ref<'_>> {
        wire::decode_logs(bytes)
    }
    fn from_prost(req: &Self::Prost) -> Self::Ref<'_> {
        otlp::LogsRef::from_prost(req)
    }
}

struct TracesBytes;

impl ProtobufSignal for TracesBytes {
    const SIGNAL: &'static str = "span";
    const TRACES: bool = true;
    type Prost = ExportTraceServiceRequest;
    type Ref<'a> = otlp::TracesRef<'a>;
    fn walk(bytes: &[u8]) -> Option<Self::Ref<'_>> {
        wire::decode_traces(bytes)
    }
    fn from_prost(req: &Self::Prost) -> Self::Ref<'_> {
        otlp::TracesRef::from_prost(req)
    }
}

/// A protobuf request of signal `S`: walked in place; else decoded by prost
/// (`by_reference` says so); else, when only its strings are not UTF-8,
/// repaired and read again; else refused as invalid.
fn read_protobuf<S: ProtobufSignal, T>(
    bytes: &[u8],
    by_reference: impl FnOnce(&'static str, &'static str),
    read: impl FnOnce(S::Ref<'_>) -> T,
) -> Result<T, SubmitError> {
    if let Some(req) = S::walk(bytes) {
        return Ok(read(req));
    }
    match prost_decode::<S::Prost>(bytes) {
        Ok(req) => {
            by_reference("protobuf", S::SIGNAL);
            Ok(read(S::from_prost(&req)))
        }
        Err(e) => {
            let fixed = repaired(bytes, S::TRACES).ok_or(e)?;
            by_reference("protobuf-utf8-repaired", S::SIGNAL);
            let out = match S::walk(&fixed) {
                Some(req) => read(req),
                None => read(S::from_prost(&prost_decode(&fixed)?)),
            };
            Ok(out)
        }
    }
}

/// [`wire::repair_utf8`], with a warning: the request is taken with `?` for
/// the bytes that were not UTF-8, instead of refused whole.
fn repaired(bytes: &[u8], traces: bool) -> Option<Vec<u8>> {
    let (fixed, strings) = wire::repair_utf8(bytes, traces)?;
    tracing::warn!(
        strings,
        "a request held strings that are not UTF-8: taken with '?' for the invalid bytes rather than refused whole"
    );
    Some(fixed)
}

/// prost's decode of what the wire walk declined: the request, or why it is
/// not one (refused as invalid: sending it again will not help).
fn prost_decode<T: Message + Default>(bytes: &[u8]) -> Result<T, SubmitError> {
    T::decode(bytes).map_err(|e| {
        let what = std::any::type_name::<T>()
            .rsplit("::")
            .next()
            .unwrap_or("request");
        SubmitError::Invalid(format!("request is not a valid protobuf {what}: {e}"))
    })
}

/// Decodes an OTLP/JSON request with opentelemetry-proto's serde: the
/// reference [`json`] is tested against, and what reads what it declines.
/// The error says what a sender did wrong.
pub fn json_decode<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, String> {
    // An empty JSON object is a valid, empty request.
    let trimmed = body.iter().filter(|b| !b.is_ascii_whitespace()).count();
    if trimmed == 2 && body.contains(&b'{') {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .or_else(|e| empty_lists_given(body).ok_or(e))
        .map_err(|e| {
            let what = std::any::type_name::<T>()
                .rsplit("::")
                .next()
                .unwrap_or("request");
            format!("body is not a valid JSON {what}: {e}")
        })
}

/// An empty array or key-value list value is `{"arrayValue": {}}` in the
/// protobuf JSON mapping (empty repeated fields are omitted), as the OTel
/// Collector and protobuf's own printers write it; opentelemetry-proto's
/// serde requires its `values`. Such a body is read again with them given.
fn empty_lists_given<T: serde::de::DeserializeOwned>(body: &[u8]) -> Option<T> {
    fn give(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, inner) in map.iter_mut() {
                    if let ("arrayValue" | "kvlistValue", serde_json::Value::Object(list)) =
                        (k.as_str(), &mut *inner)
                    {
                        list.entry("values")
                            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
                    }
                    give(inner);
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(give),
            _ => {}
        }
    }
    let named = |key: &[u8]| body.windows(key.len()).any(|w| w == key);
    if !named(b"\"arrayValue\"") && !named(b"\"kvlistValue\"") {
        return None;
    }
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    give(&mut v);
    serde_json::from_value(v).ok()
}

/// Whether an OTLP/JSON body names its top level in snake_case, which
/// OTLP/JSON does not read.
fn snake_case_json(payload: &Payload) -> bool {
    let (body, key): (&[u8], &[u8]) = match payload {
        Payload::LogsJson(b) => (b, b"\"resource_logs\""),
        Payload::TracesJson(b) => (b, b"\"resource_spans\""),
        _ => return false,
    };
    body.windows(key.len()).any(|w| w == key)
}

static CLOCK_AHEAD_SAID: AtomicI64 = AtomicI64::new(i64::MIN);
static AHEAD_TAKEN_SAID: AtomicI64 = AtomicI64::new(i64::MIN);

/// Whether a warning last said at `said` may be said again at `now_ns` (a
/// minute later); one caller of many wins.
fn once_a_minute(said: &AtomicI64, now_ns: i64) -> bool {
    let last = said.load(Ordering::Relaxed);
    now_ns.saturating_sub(last) >= 60_000_000_000
        && said
            .compare_exchange(last, now_ns, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// xorshift64*: deterministic, so a failing randomized test names its seed.
#[cfg(test)]
pub(crate) mod test_rng {
    pub struct Rng(pub u64);

    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }
}
