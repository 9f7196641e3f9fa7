//! OTLP/gRPC receiver: the Logs, Trace and Metrics services on one tonic server.
//!
//! gzip-compressed requests are accepted; the decoding limit is the same
//! `max_body_bytes` as HTTP. A full pipeline answers RESOURCE_EXHAUSTED and a
//! pipeline that cannot keep data UNAVAILABLE, both of which exporters retry.

use std::future::Future;

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Buf, Bytes};
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
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::body::Body;
use tonic::codec::{
    Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder,
};
use tonic::codegen::{http, BoxFuture, Context, Poll, Service};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

use crate::{ExportOutcome, Ingest, Payload, SubmitError};

#[derive(Clone)]
struct Otlp(Ingest);

impl Otlp {
    /// The tenant of a request, from its `authorization` metadata when
    /// authentication is on, after checking the tenant's own size limit.
    fn tenant<T>(
        &self,
        request: &Request<T>,
        size: impl FnOnce(&T) -> usize,
        signal: &str,
    ) -> Result<std::sync::Arc<str>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let peer = request.extensions().get::<crate::tls::PeerIdentity>();
        let tenant = self
            .0
            .authenticate(authorization, peer)
            .map_err(|refusal| {
                self.0.metrics.request("grpc", signal, "unauthenticated");
                Status::unauthenticated(refusal.message())
            })?;
        if let Some(limit) = self.0.limits.as_ref().and_then(|l| l.body_limit(&tenant)) {
            // Measured only when a limit applies: a prost message's size is a walk of it.
            let size = size(request.get_ref());
            if size > limit {
                self.0.metrics.request("grpc", signal, "too_large");
                return Err(Status::out_of_range(format!(
                    "request of {size} bytes exceeds tenant {tenant}'s limit of {limit} bytes"
                )));
            }
        }
        Ok(tenant)
    }

    async fn run(
        &self,
        payload: Payload,
        tenant: std::sync::Arc<str>,
    ) -> Result<ExportOutcome, Status> {
        self.0
            .export(payload, "grpc", tenant)
            .await
            .map_err(|e| match e {
                SubmitError::Busy | SubmitError::RateLimited { .. } => {
                    Status::resource_exhausted(e.to_string())
                }
                SubmitError::Unavailable(_) | SubmitError::Closed => {
                    Status::unavailable(e.to_string())
                }
                SubmitError::Invalid(_) => Status::invalid_argument(e.to_string()),
                SubmitError::TooLarge(_) => Status::out_of_range(e.to_string()),
            })
    }
}

/// An OTLP service whose requests vigil takes as bytes: logs and spans are
/// read in place ([`crate::wire`]), metrics decoded by prost.
trait BytesExport: Send + Sync + 'static {
    const NAME: &'static str;
    const PATH: &'static str;
    /// The signal's name in the metrics' labels.
    const SIGNAL: &'static str;
    type Response: Message + Send + 'static;
    /// The request as the pipeline takes it, or why it is not one.
    fn payload(otlp: &Otlp, bytes: Bytes) -> Result<Payload, Status>;
    /// The answer to an accepted request: partial success when some
    /// records were refused.
    fn response(outcome: ExportOutcome) -> Self::Response;
}

struct LogsExport;

impl BytesExport for LogsExport {
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    const SIGNAL: &'static str = "log";
    type Response = ExportLogsServiceResponse;

    fn payload(_: &Otlp, bytes: Bytes) -> Result<Payload, Status> {
        Ok(Payload::LogsBytes(bytes))
    }

    fn response(o: ExportOutcome) -> Self::Response {
        ExportLogsServiceResponse {
            partial_success: (o.rejected > 0).then(|| ExportLogsPartialSuccess {
                rejected_log_records: o.rejected as i64,
                error_message: o.error.unwrap_or_default(),
            }),
        }
    }
}

struct TracesExport;

impl BytesExport for TracesExport {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    const SIGNAL: &'static str = "span";
    type Response = ExportTraceServiceResponse;

    fn payload(_: &Otlp, bytes: Bytes) -> Result<Payload, Status> {
        Ok(Payload::TracesBytes(bytes))
    }

    fn response(o: ExportOutcome) -> Self::Response {
        ExportTraceServiceResponse {
            partial_success: (o.rejected > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: o.rejected as i64,
                error_message: o.error.unwrap_or_default(),
            }),
        }
    }
}

struct MetricsExport;

impl BytesExport for MetricsExport {
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const PATH: &'static str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
    const SIGNAL: &'static str = "metric";
    type Response = ExportMetricsServiceResponse;

    /// Metrics are decoded by prost, as over HTTP; an unreadable request is
    /// refused as invalid (sending it again will not help).
    fn payload(otlp: &Otlp, bytes: Bytes) -> Result<Payload, Status> {
        crate::prost_decode::<ExportMetricsServiceRequest>(&bytes)
            .map(Payload::Metrics)
            .map_err(|e| {
                otlp.0.metrics.request("grpc", Self::SIGNAL, "bad_request");
                Status::invalid_argument(e.to_string())
            })
    }

    fn response(o: ExportOutcome) -> Self::Response {
        ExportMetricsServiceResponse {
            partial_success: (o.rejected > 0).then(|| ExportMetricsPartialSuccess {
                rejected_data_points: o.rejected as i64,
                error_message: o.error.unwrap_or_default(),
            }),
        }
    }
}

/// An OTLP service taking each request as bytes (tonic's generated server
/// would decode it into prost's types before vigil sees it), with gzip and
/// the size limit.
struct BytesServer<E> {
    otlp: Otlp,
    max_decoding_message_size: usize,
    export: PhantomData<fn() -> E>,
}

impl<E> Clone for BytesServer<E> {
    fn clone(&self) -> Self {
        BytesServer {
            otlp: self.otlp.clone(),
            max_decoding_message_size: self.max_decoding_message_size,
            export: PhantomData,
        }
    }
}

impl<E: BytesExport> NamedService for BytesServer<E> {
    const NAME: &'static str = E::NAME;
}

impl<E: BytesExport> Service<http::Request<Body>> for BytesServer<E> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != E::PATH {
            return Box::pin(async move {
                Ok(Status::unimplemented("only Export is served here").into_http())
            });
        }
        let reached = Arc::new(AtomicBool::new(false));
        let method = Export::<E>(self.otlp.clone(), reached.clone(), PhantomData);
        let otlp = self.otlp.clone();
        let limit = self.max_decoding_message_size;
        Box::pin(async move {
            let mut accept = EnabledCompressionEncodings::default();
            accept.enable(CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(BytesCodec::<E::Response>(PhantomData))
                .apply_compression_config(accept, EnabledCompressionEncodings::default())
                .apply_max_message_size_config(Some(limit), None);
            let response = grpc.unary(method, req).await;
            // tonic refuses a message over the limit from its length prefix,
            // before vigil's method runs: counted here, as over HTTP.
            if !reached.load(Ordering::Relaxed)
                && Status::from_header_map(response.headers())
                    .is_some_and(|s| s.code() == tonic::Code::OutOfRange)
            {
                otlp.0.metrics.request("grpc", E::SIGNAL, "too_large");
            }
            Ok(response)
        })
    }
}

/// The Export method; it says when it is reached (the request was read).
struct Export<E>(Otlp, Arc<AtomicBool>, PhantomData<fn() -> E>);

impl<E: BytesExport> UnaryService<Bytes> for Export<E> {
    type Response = E::Response;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        self.1.store(true, Ordering::Relaxed);
        let otlp = self.0.clone();
        Box::pin(async move {
            let tenant = otlp.tenant(&request, Bytes::len, E::SIGNAL)?;
            let payload = E::payload(&otlp, request.into_inner())?;
            let outcome = otlp.run(payload, tenant).await?;
            Ok(Response::new(E::response(outcome)))
        })
    }
}

/// Requests as their bytes, responses encoded by prost.
struct BytesCodec<T>(PhantomData<fn() -> T>);

impl<T: Message + Send + 'static> Codec for BytesCodec<T> {
    type Encode = T;
    type Decode = Bytes;
    type Encoder = ResponseEncoder<T>;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesDecoder
    }
}

struct ResponseEncoder<T>(PhantomData<fn() -> T>);

impl<T: Message> Encoder for ResponseEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the response failed: {e}")))
    }
}

struct BytesDecoder;

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        // The frame's bytes, shared rather than copied.
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The three services, with gzip and the size limit.
fn router(ingest: Ingest) -> tonic::transport::server::Router {
    let limit = ingest.max_body_bytes;
    let svc = Otlp(ingest);
    tonic::transport::Server::builder()
        .add_service(BytesServer::<LogsExport> {
            otlp: svc.clone(),
            max_decoding_message_size: limit,
            export: PhantomData,
        })
        .add_service(BytesServer::<TracesExport> {
            otlp: svc.clone(),
            max_decoding_message_size: limit,
            export: PhantomData,
        })
        .add_service(BytesServer::<MetricsExport> {
            otlp: svc,
            max_decoding_message_size: limit,
            export: PhantomData,
        })
}

/// Serves the three OTLP services on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ingest: Ingest,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    router(ingest)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}

/// Serves the three OTLP services over TLS (ALPN h2) until `shutdown` completes.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: &crate::tls::TlsConfig,
    ingest: Ingest,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::ReceiverStream::new(tls.incoming(listener))
        .map(|(stream, _peer)| Ok::<_, std::io::Error>(stream));
    router(ingest)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
