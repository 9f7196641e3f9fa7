//! OTLP/HTTP receiver (POST /v1/logs, /v1/traces, /v1/metrics) plus the
//! operational endpoints: GET /healthz, /readyz and /metrics.
//!
//! Bodies are `application/x-protobuf` or `application/json` (the OTLP JSON
//! mapping), optionally `Content-Encoding: gzip`, chunked or with a length. The
//! answer comes in the request's content type. The size limit applies after
//! decompression, so a gzip bomb is refused with 413 without being inflated
//! past the limit.

use std::future::Future;
use std::io::Read;

use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, Extensions, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;
use serde::Serialize;

use crate::{ExportOutcome, Ingest, Payload, Signal, SubmitError};

/// `google.rpc.Status`, the body OTLP/HTTP sends with errors.
#[derive(Clone, PartialEq, Message, Serialize)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => "application/x-protobuf",
            Format::Json => "application/json",
        }
    }
}

/// A request body, or why axum could not read it (over `max_body_bytes`,
/// a broken connection): answered by [`export`] in OTLP's error format.
type BodyResult = Result<Bytes, axum::extract::rejection::BytesRejection>;

/// The router; serve it with [`serve`] or embed it.
pub fn router(ingest: Ingest) -> Router {
    let limit = ingest.max_body_bytes;
    Router::new()
        .route(
            "/v1/logs",
            post(
                |s: State<Ingest>, h: HeaderMap, x: Extensions, b: BodyResult| {
                    export(s, h, x, b, Signal::Log)
                },
            ),
        )
        .route(
            "/v1/traces",
            post(
                |s: State<Ingest>, h: HeaderMap, x: Extensions, b: BodyResult| {
                    export(s, h, x, b, Signal::Span)
                },
            ),
        )
        .route(
            "/v1/metrics",
            post(
                |s: State<Ingest>, h: HeaderMap, x: Extensions, b: BodyResult| {
                    export(s, h, x, b, Signal::Metric)
                },
            ),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // The compressed body may not exceed the limit either.
        .layer(DefaultBodyLimit::max(limit))
        .with_state(ingest)
}

/// Serves the router over TLS until `shutdown` completes.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: &crate::tls::TlsConfig,
    ingest: Ingest,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = crate::tls::TlsListener::new(tls, listener)?;
    let app = router(ingest).into_make_service_with_connect_info::<crate::tls::PeerIdentity>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves the router on `listener` until `shutdown` completes, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ingest: Ingest,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(ingest))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn readyz(State(ingest): State<Ingest>) -> Response {
    match (ingest.readiness)() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(ingest): State<Ingest>) -> Response {
    let text = (ingest.render_metrics)();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn export(
    State(ingest): State<Ingest>,
    headers: HeaderMap,
    extensions: Extensions,
    body: BodyResult,
    signal: Signal,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let peer = extensions
        .get::<ConnectInfo<crate::tls::PeerIdentity>>()
        .map(|c| &c.0);
    let tenant = match ingest.authenticate(authorization, peer) {
        Ok(t) => t,
        Err(refusal) => {
            let mut r = refused(
                &ingest,
                signal,
                Format::Json,
                StatusCode::UNAUTHORIZED,
                refusal.message().to_string(),
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let format = match mime.as_str() {
        "application/x-protobuf" | "application/protobuf" => Format::Protobuf,
        "application/json" => Format::Json,
        _ => {
            return refused(
                &ingest,
                signal,
                Format::Json,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content type {content_type:?} is not supported; send application/x-protobuf or application/json"),
            );
        }
    };
    let body = match body {
        Ok(b) => b,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return refused(
                &ingest,
                signal,
                format,
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "body exceeds ingest.max_body_bytes ({} bytes); send smaller batches",
                    ingest.max_body_bytes
                ),
            );
        }
        Err(rejection) => {
            return refused(
                &ingest,
                signal,
                format,
                rejection.status(),
                rejection.body_text(),
            );
        }
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let body = match encoding.as_str() {
        "" | "identity" => body,
        "gzip" | "x-gzip" => match gunzip_limited(&body, ingest.max_body_bytes) {
            Ok(b) => Bytes::from(b),
            Err(GunzipError::TooLarge) => {
                return refused(
                    &ingest,
                    signal,
                    format,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "body exceeds {} bytes after decompression",
                        ingest.max_body_bytes
                    ),
                );
            }
            Err(GunzipError::Corrupt(e)) => {
                return refused(
                    &ingest,
                    signal,
                    format,
                    StatusCode::BAD_REQUEST,
                    format!("gzip body could not be decompressed: {e}"),
                );
            }
        },
        other => {
            return refused(
                &ingest,
                signal,
                format,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content encoding {other:?} is not supported; send gzip or identity"),
            );
        }
    };
    if let Some(limit) = ingest.limits.as_ref().and_then(|l| l.body_limit(&tenant)) {
        if body.len() > limit {
            return refused(
                &ingest,
                signal,
                format,
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "body of {} bytes exceeds tenant {tenant}'s limit of {limit} bytes",
                    body.len()
                ),
            );
        }
    }
    let payload = match decode(signal, format, &body) {
        Ok(p) => p,
        Err(msg) => {
            return refused(&ingest, signal, format, StatusCode::BAD_REQUEST, msg);
        }
    };
    match ingest.export(payload, "http", tenant).await {
        Ok(outcome) => success(format, signal, &outcome),
        Err(SubmitError::RateLimited {
            retry_after_secs,
            message,
        }) => {
            let mut r = error(format, StatusCode::TOO_MANY_REQUESTS, message);
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        Err(SubmitError::Invalid(message)) => error(format, StatusCode::BAD_REQUEST, message),
        Err(SubmitError::TooLarge(message)) => {
            error(format, StatusCode::PAYLOAD_TOO_LARGE, message)
        }
        Err(SubmitError::Busy) => {
            let mut r = error(
                format,
                StatusCode::TOO_MANY_REQUESTS,
                SubmitError::Busy.to_string(),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Err(e) => {
            let mut r = error(format, StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
    }
}

fn decode(signal: Signal, format: Format, body: &Bytes) -> Result<Payload, String> {
    Ok(match (signal, format) {
        // Logs and spans are read from the bytes by `wire` when normalized;
        // an unreadable body is then refused with 400 all the same.
        (Signal::Log, Format::Protobuf) => Payload::LogsBytes(body.clone()),
        (Signal::Span, Format::Protobuf) => Payload::TracesBytes(body.clone()),
        (Signal::Metric, Format::Protobuf) => Payload::Metrics(
            ExportMetricsServiceRequest::decode(body.as_ref()).map_err(|e| {
                format!("body is not a valid protobuf ExportMetricsServiceRequest: {e}")
            })?,
        ),
        // Likewise for JSON (`crate::json`), with the reference's error.
        (Signal::Log, Format::Json) => Payload::LogsJson(body.clone()),
        (Signal::Span, Format::Json) => Payload::TracesJson(body.clone()),
        (Signal::Metric, Format::Json) => Payload::Metrics(crate::json_decode(body)?),
    })
}

fn success(format: Format, signal: Signal, outcome: &ExportOutcome) -> Response {
    let message = outcome.error.clone().unwrap_or_default();
    let rejected = outcome.rejected as i64;
    let body: Vec<u8> = match signal {
        Signal::Log => {
            let r = ExportLogsServiceResponse {
                partial_success: (rejected > 0).then_some(ExportLogsPartialSuccess {
                    rejected_log_records: rejected,
                    error_message: message,
                }),
            };
            encode(format, &r)
        }
        Signal::Span => {
            let r = ExportTraceServiceResponse {
                partial_success: (rejected > 0).then_some(ExportTracePartialSuccess {
                    rejected_spans: rejected,
                    error_message: message,
                }),
            };
            encode(format, &r)
        }
        Signal::Metric => {
            let r = ExportMetricsServiceResponse {
                partial_success: (rejected > 0).then_some(ExportMetricsPartialSuccess {
                    rejected_data_points: rejected,
                    error_message: message,
                }),
            };
            encode(format, &r)
        }
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, format.content_type())],
        body,
    )
        .into_response()
}

fn encode<T: Message + Serialize>(format: Format, msg: &T) -> Vec<u8> {
    match format {
        Format::Protobuf => msg.encode_to_vec(),
        Format::Json => serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec()),
    }
}

/// A request refused before it reaches the pipeline: counted under the
/// status it is answered with, and answered in the sender's format.
fn refused(
    ingest: &Ingest,
    signal: Signal,
    format: Format,
    status: StatusCode,
    message: String,
) -> Response {
    let counted = match status {
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        _ => "bad_request",
    };
    ingest.metrics.request("http", signal.as_str(), counted);
    error(format, status, message)
}

fn error(format: Format, status: StatusCode, message: String) -> Response {
    // gRPC codes in the Status body, as OTLP/HTTP asks: INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE, ...
    let code = match status {
        StatusCode::BAD_REQUEST => 3,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::PAYLOAD_TOO_LARGE => 8,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => 3,
        StatusCode::SERVICE_UNAVAILABLE => 14,
        StatusCode::UNAUTHORIZED => 16,
        _ => 2,
    };
    let body = encode(format, &RpcStatus { code, message });
    (
        status,
        [(header::CONTENT_TYPE, format.content_type())],
        body,
    )
        .into_response()
}

#[derive(Debug)]
enum GunzipError {
    TooLarge,
    Corrupt(std::io::Error),
}

/// Inflates a gzip body, stopping as soon as the output passes `limit`.
fn gunzip_limited(body: &[u8], limit: usize) -> Result<Vec<u8>, GunzipError> {
    let decoder = flate2::read::MultiGzDecoder::new(body);
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(GunzipError::Corrupt)?;
    if out.len() > limit {
        return Err(GunzipError::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use std::io::Write;

    #[test]
    fn gzip_bomb_stops_at_the_limit() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 10 << 20]).unwrap();
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 64 << 10);
        assert!(matches!(
            gunzip_limited(&bomb, 1 << 20),
            Err(GunzipError::TooLarge)
        ));
        assert_eq!(gunzip_limited(&bomb, 11 << 20).unwrap().len(), 10 << 20);
        assert!(matches!(
            gunzip_limited(b"not gzip at all", 1 << 20),
            Err(GunzipError::Corrupt(_))
        ));
    }

    #[test]
    fn json_requests_accept_otlp_quirks() {
        let body = br#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"claude-code"}}]},
            "scopeLogs":[{"scope":{"name":"x"},"logRecords":[{"timeUnixNano":"1773154800000000000","severityNumber":9,
            "body":{"stringValue":"claude_code.user_prompt"},"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
            "attributes":[{"key":"prompt_length","value":{"intValue":"42"}},{"key":"n","value":{"intValue":7}}],"someFutureField":1}]}]}]}"#;
        let body = Bytes::from_static(body);
        // Logs and spans are decoded when normalized (Ingest::export): by
        // `crate::json`, else by the reference, which both read this one.
        let Payload::LogsJson(json) = decode(Signal::Log, Format::Json, &body).expect("decodes")
        else {
            panic!("logs")
        };
        let req: ExportLogsServiceRequest =
            crate::json_decode(&json).expect("the reference reads it");
        let rec = &req.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(rec.time_unix_nano, 1_773_154_800_000_000_000);
        assert_eq!(rec.trace_id.len(), 16);
        assert_eq!(rec.attributes.len(), 2);
        let arena = bumpalo::Bump::new();
        let fast = crate::json::decode_logs(&json, &arena).expect("the fast path reads it");
        assert_eq!(fast, crate::otlp::LogsRef::from_prost(&req));
        assert!(crate::json_decode::<ExportLogsServiceRequest>(b"{}").is_ok());
        assert!(crate::json_decode::<ExportLogsServiceRequest>(b"{\"resourceLogs\": [").is_err());
        // An empty array value as the protobuf JSON mapping writes it (no
        // `values`), in a metric request's resource: read, as an empty array.
        let empty = br#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"tags","value":{"arrayValue":{}}},{"key":"kv","value":{"kvlistValue":{}}}]}}]}"#;
        let Ok(Payload::Metrics(m)) =
            decode(Signal::Metric, Format::Json, &Bytes::from_static(empty))
        else {
            panic!("an empty array value is refused")
        };
        let attrs = &m.resource_metrics[0]
            .resource
            .as_ref()
            .expect("resource")
            .attributes;
        assert_eq!(attrs.len(), 2, "{m:?}");
        let bytes = |b: &'static [u8]| Bytes::from_static(b);
        assert!(decode(
            Signal::Metric,
            Format::Json,
            &bytes(b"{\"resourceMetrics\": [")
        )
        .is_err());
        // Metrics are decoded here; logs and spans when normalized (Ingest::export).
        let garbage = bytes(b"\xff\xff\xff garbage");
        assert!(decode(Signal::Metric, Format::Protobuf, &garbage).is_err());
        assert!(matches!(
            decode(Signal::Span, Format::Protobuf, &garbage),
            Ok(Payload::TracesBytes(_))
        ));
    }
}
