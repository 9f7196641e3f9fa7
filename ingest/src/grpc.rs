//! OTLP/gRPC receiver: the Logs, Trace and Metrics services on one tonic server.
//!
//! gzip-compressed requests are accepted; the decoding limit is the same
//! `max_body_bytes` as HTTP. A full pipeline answers RESOURCE_EXHAUSTED and a
//! pipeline that cannot keep data UNAVAILABLE, both of which exporters retry.

use std::future::Future;

use std::convert::Infallible;

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
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
        size: usize,
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
            })
    }
}

impl Otlp {
    /// Logs/Export, on the request's bytes: read by [`crate::wire`] off the
    /// async runtime, without decoding into prost's types first.
    async fn export_logs(
        &self,
        request: Request<Bytes>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let tenant = self.tenant(&request, request.get_ref().len(), "log")?;
        let o = self
            .run(Payload::LogsBytes(request.into_inner()), tenant)
            .await?;
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: (o.rejected > 0).then(|| ExportLogsPartialSuccess {
                rejected_log_records: o.rejected as i64,
                error_message: o.error.unwrap_or_default(),
            }),
        }))
    }
}

/// The OTLP logs service, taking each request as bytes (tonic's generated
/// server would decode it into prost's types before vigil sees it).
#[derive(Clone)]
struct LogsBytesServer {
    otlp: Otlp,
    max_decoding_message_size: usize,
}

impl NamedService for LogsBytesServer {
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
}

const LOGS_EXPORT_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

impl Service<http::Request<Body>> for LogsBytesServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != LOGS_EXPORT_PATH {
            return Box::pin(async move {
                Ok(Status::unimplemented("only Export is served here").into_http())
            });
        }
        let method = LogsExport(self.otlp.clone());
        let limit = self.max_decoding_message_size;
        Box::pin(async move {
            let mut accept = EnabledCompressionEncodings::default();
            accept.enable(CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(BytesCodec)
                .apply_compression_config(accept, EnabledCompressionEncodings::default())
                .apply_max_message_size_config(Some(limit), None);
            Ok(grpc.unary(method, req).await)
        })
    }
}

struct LogsExport(Otlp);

impl UnaryService<Bytes> for LogsExport {
    type Response = ExportLogsServiceResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let otlp = self.0.clone();
        Box::pin(async move { otlp.export_logs(request).await })
    }
}

/// Requests as their bytes, responses encoded by prost.
struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = ExportLogsServiceResponse;
    type Decode = Bytes;
    type Encoder = ResponseEncoder;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesDecoder
    }
}

struct ResponseEncoder;

impl Encoder for ResponseEncoder {
    type Item = ExportLogsServiceResponse;
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

#[tonic::async_trait]
impl TraceService for Otlp {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let tenant = self.tenant(&request, request.get_ref().encoded_len(), "span")?;
        let o = self
            .run(Payload::Traces(request.into_inner()), tenant)
            .await?;
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: (o.rejected > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: o.rejected as i64,
                error_message: o.error.unwrap_or_default(),
            }),
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Otlp {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let tenant = self.tenant(&request, request.get_ref().encoded_len(), "metric")?;
        let o = self
            .run(Payload::Metrics(request.into_inner()), tenant)
            .await?;
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success: (o.rejected > 0).then(|| ExportMetricsPartialSuccess {
                rejected_data_points: o.rejected as i64,
                error_message: o.error.unwrap_or_default(),
            }),
        }))
    }
}

/// The three services, with gzip and the size limit.
fn router(ingest: Ingest) -> tonic::transport::server::Router {
    let limit = ingest.max_body_bytes;
    let svc = Otlp(ingest);
    tonic::transport::Server::builder()
        .add_service(LogsBytesServer {
            otlp: svc.clone(),
            max_decoding_message_size: limit,
        })
        .add_service(
            TraceServiceServer::new(svc.clone())
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(limit),
        )
        .add_service(
            MetricsServiceServer::new(svc)
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(limit),
        )
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
