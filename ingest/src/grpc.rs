//! OTLP/gRPC receiver: the Logs, Trace and Metrics services on one tonic server.
//!
//! gzip-compressed requests are accepted; the decoding limit is the same
//! `max_body_bytes` as HTTP. A full pipeline answers RESOURCE_EXHAUSTED and a
//! pipeline that cannot keep data UNAVAILABLE, both of which exporters retry.

use std::future::Future;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
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
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use crate::{ExportOutcome, Ingest, Payload, SubmitError};

#[derive(Clone)]
struct Otlp(Ingest);

impl Otlp {
    /// The tenant of a request, from its `authorization` metadata when
    /// authentication is on, after checking the tenant's own size limit.
    fn tenant<T: prost::Message>(
        &self,
        request: &Request<T>,
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
            let size = request.get_ref().encoded_len();
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
            })
    }
}

#[tonic::async_trait]
impl LogsService for Otlp {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let tenant = self.tenant(&request, "log")?;
        let o = self
            .run(Payload::Logs(request.into_inner()), tenant)
            .await?;
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: (o.rejected > 0).then(|| ExportLogsPartialSuccess {
                rejected_log_records: o.rejected as i64,
                error_message: o.error.unwrap_or_default(),
            }),
        }))
    }
}

#[tonic::async_trait]
impl TraceService for Otlp {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let tenant = self.tenant(&request, "span")?;
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
        let tenant = self.tenant(&request, "metric")?;
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
        .add_service(
            LogsServiceServer::new(svc.clone())
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(limit),
        )
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
