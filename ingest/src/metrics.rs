//! Counters the receivers keep, registered into the process's Prometheus registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalSource {
    pub signal: String,
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabel {
    pub signal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub transport: String,
    pub signal: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FormatLabels {
    pub format: String,
    pub signal: String,
}

/// What the receivers count. Cloning shares the counters.
#[derive(Clone, Debug, Default)]
pub struct IngestMetrics {
    pub records_received: Family<SignalSource, Counter>,
    pub records_rejected: Family<SignalLabel, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    /// Log and trace requests the fast readers (`wire`, `json`) left to the
    /// reference decoders, which read them.
    pub reference_decodes: Family<FormatLabels, Counter>,
    pub batches_submitted: Counter,
    pub capture_errors: Counter,
    /// Records moved back because their sender's clock ran ahead.
    pub records_clock_ahead: Family<SignalLabel, Counter>,
}

impl IngestMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "vigil_records_received",
            "OTLP records normalized into events, by signal and source",
            self.records_received.clone(),
        );
        registry.register(
            "vigil_records_rejected",
            "OTLP records refused through partial success, by signal",
            self.records_rejected.clone(),
        );
        registry.register(
            "vigil_requests",
            "OTLP export requests answered, by transport, signal and status",
            self.requests.clone(),
        );
        registry.register(
            "vigil_requests_decoded_by_reference",
            "log and trace requests the receivers' fast readers left to prost or serde (a slower path), by format and signal",
            self.reference_decodes.clone(),
        );
        registry.register(
            "vigil_batches_submitted",
            "batches handed to the pipeline",
            self.batches_submitted.clone(),
        );
        registry.register(
            "vigil_records_clock_ahead",
            "records whose sender's clock ran more than ingest.max_clock_ahead ahead of vigil's, moved back to the receipt time (the sent time stays in attrs['vigil.sender_time']), by signal",
            self.records_clock_ahead.clone(),
        );
        registry.register(
            "vigil_capture_errors",
            "accepted requests that could not be written to the capture files",
            self.capture_errors.clone(),
        );
    }

    /// A request read by the reference decoder after the fast reader declined it.
    pub fn reference_decode(&self, format: &str, signal: &str) {
        self.reference_decodes
            .get_or_create(&FormatLabels {
                format: format.into(),
                signal: signal.into(),
            })
            .inc();
    }

    pub fn request(&self, transport: &str, signal: &str, status: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                transport: transport.into(),
                signal: signal.into(),
                status: status.into(),
            })
            .inc();
    }
}
