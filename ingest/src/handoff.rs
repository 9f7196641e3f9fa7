//! The bounded hand-off from the receivers to the pipeline.
//!
//! A receiver submits a batch of normalized events and waits for the pipeline
//! to acknowledge it: the sender's request is answered 200 only once the batch
//! is kept (written to the archive stage). When the queue stays full for longer
//! than the submit timeout the receiver answers 429 / RESOURCE_EXHAUSTED, and
//! when the pipeline reports that it cannot keep data (disk full, unwritable
//! directory) it answers 503 / UNAVAILABLE: both are retried by OTel exporters,
//! and memory never grows without bound.

use std::time::Duration;

use arrow::record_batch::RecordBatch;
use event::Event;
use tokio::sync::{mpsc, oneshot};

/// One request's worth of events, with the channel on which the pipeline says whether it kept them.
#[derive(Debug)]
pub struct IngestBatch {
    pub events: Vec<Event>,
    /// The same events as Arrow columns (`event::schema`), when the pipeline
    /// asked for them: built by the thread that normalized the events, while
    /// they are still in its cache, instead of by the archive's one thread.
    pub columns: Option<RecordBatch>,
    pub ack: oneshot::Sender<Result<(), String>>,
}

/// Why a batch was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the pipeline is full; retry later")]
    Busy,
    #[error("the pipeline cannot keep data: {0}")]
    Unavailable(String),
    #[error("vigil is shutting down")]
    Closed,
    #[error("{message}")]
    RateLimited {
        retry_after_secs: u64,
        message: String,
    },
    /// The request cannot be read; sending it again will not help.
    #[error("{0}")]
    Invalid(String),
    /// The request is larger than vigil takes at once (a tenant's rate-limit
    /// burst); the same request will never fit, smaller ones will.
    #[error("{0}")]
    TooLarge(String),
}

/// Sending side of the pipeline queue, shared by all receivers.
#[derive(Debug, Clone)]
pub struct PipelineHandle {
    tx: mpsc::Sender<IngestBatch>,
    submit_timeout: Duration,
    columns: bool,
}

impl PipelineHandle {
    /// A queue of `capacity` batches; a submit waits up to `submit_timeout` for room.
    pub fn channel(
        capacity: usize,
        submit_timeout: Duration,
    ) -> (PipelineHandle, mpsc::Receiver<IngestBatch>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let handle = PipelineHandle {
            tx,
            submit_timeout,
            columns: false,
        };
        (handle, rx)
    }

    /// Batches also carry their events as Arrow columns (what the archive writes).
    pub fn with_columns(mut self) -> Self {
        self.columns = true;
        self
    }

    pub fn wants_columns(&self) -> bool {
        self.columns
    }

    /// Batches waiting in the queue.
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Hands the events over and waits until the pipeline has kept them.
    pub async fn submit(
        &self,
        events: Vec<Event>,
        columns: Option<RecordBatch>,
    ) -> Result<(), SubmitError> {
        if events.is_empty() {
            return Ok(());
        }
        let (ack, done) = oneshot::channel();
        let permit = match tokio::time::timeout(self.submit_timeout, self.tx.reserve()).await {
            Err(_) => return Err(SubmitError::Busy),
            Ok(Err(_)) => return Err(SubmitError::Closed),
            Ok(Ok(p)) => p,
        };
        permit.send(IngestBatch {
            events,
            columns,
            ack,
        });
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(SubmitError::Unavailable(msg)),
            Err(_) => Err(SubmitError::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_queue_answers_busy_instead_of_growing() {
        let (handle, mut rx) = PipelineHandle::channel(1, Duration::from_millis(50));
        // First batch occupies the only slot; nobody drains it.
        let h = handle.clone();
        let first = tokio::spawn(async move { h.submit(vec![Event::default()], None).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(handle.depth(), 1);
        assert_eq!(
            handle.submit(vec![Event::default()], None).await,
            Err(SubmitError::Busy)
        );
        // Draining and acknowledging lets the first one succeed.
        let batch = rx.recv().await.expect("batch");
        batch.ack.send(Ok(())).expect("ack");
        assert_eq!(first.await.expect("join"), Ok(()));
    }

    #[tokio::test]
    async fn storage_failure_is_reported_as_unavailable() {
        let (handle, mut rx) = PipelineHandle::channel(4, Duration::from_millis(50));
        let h = handle.clone();
        let t = tokio::spawn(async move { h.submit(vec![Event::default()], None).await });
        let batch = rx.recv().await.expect("batch");
        batch.ack.send(Err("disk full".into())).expect("ack");
        assert_eq!(
            t.await.expect("join"),
            Err(SubmitError::Unavailable("disk full".into()))
        );
        drop(rx);
        assert_eq!(
            handle.submit(vec![Event::default()], None).await,
            Err(SubmitError::Closed)
        );
    }
}
