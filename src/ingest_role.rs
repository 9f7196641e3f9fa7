//! `vigil ingest`: the stateless front of a scaled-out vigil. It receives OTLP
//! exactly like `vigil serve` (same receivers, auth, TLS, limits,
//! normalization) and publishes the normalized events to the Kafka event
//! topic, partitioned by tenant and user; `vigil detect` processes take it
//! from there (docs/scale-out.md). A sender is answered 200 only once the
//! broker has acknowledged its events; while the broker cannot take them it
//! gets 503 / UNAVAILABLE, which exporters retry.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use ingest::{IngestMetrics, MappingSet, PipelineHandle};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sinks::kafka::events::EventPublisher;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::serve::{check_exposure, front_door, serve_receivers, FrontDoor};

/// Batches being published at once; more wait in the receivers' queue.
const IN_FLIGHT_BATCHES: usize = 64;

pub fn run(config: Config) -> Result<()> {
    let brokers = config
        .kafka
        .brokers()
        .map(str::to_string)
        .context("vigil ingest publishes to Kafka: give --kafka-brokers (or kafka.brokers)")?;
    let insecure = check_exposure(&config)?;
    let auth = crate::serve::load_auth(&config)?;
    let mappings = MappingSet::load(&config.mappings).context("loading mappings")?;
    let topic = config.kafka.events_topic.clone();
    let publisher = EventPublisher::start(
        &brokers,
        &topic,
        &config.kafka.properties,
        Duration::from_secs(10),
    )
    .with_context(|| format!("cannot start the Kafka producer for {brokers}"))?;
    let publisher = Arc::new(publisher);
    info!(brokers = %brokers, topic = %topic, "publishing normalized events to Kafka");

    let mut registry = Registry::default();
    let ingest_metrics = IngestMetrics::default();
    ingest_metrics.register(&mut registry);
    let published = Counter::<u64>::default();
    let publish_errors = Counter::<u64>::default();
    let queue_depth = Gauge::default();
    registry.register(
        "vigil_events_published",
        "events acknowledged by the broker on the event topic",
        published.clone(),
    );
    registry.register(
        "vigil_event_publish_errors",
        "batches the broker did not acknowledge (the sender got 503 and retries)",
        publish_errors.clone(),
    );
    registry.register(
        "vigil_queue_depth",
        "batches waiting to be published",
        queue_depth.clone(),
    );

    // Not ready until the broker has answered with the topic's metadata, and
    // not ready again while deliveries fail.
    let broker_state: Arc<Mutex<Option<String>>> =
        Arc::new(Mutex::new(Some(format!("kafka: connecting to {brokers}"))));
    let (pipeline, mut batches) =
        PipelineHandle::channel(config.ingest.queue_batches, config.ingest.submit_timeout);
    let (ingest, capture) = front_door(
        &config,
        FrontDoor {
            insecure,
            auth,
            mappings,
            pipeline: pipeline.clone(),
            registry,
            metrics: ingest_metrics,
            queue_depth,
            readiness: {
                let state = broker_state.clone();
                Arc::new(move || match state.lock().ok().and_then(|g| g.clone()) {
                    Some(why) => Err(why),
                    None => Ok(()),
                })
            },
        },
    )?;
    drop(pipeline);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vigil-io")
        .build()
        .context("cannot start the async runtime")?;

    {
        let (publisher, state) = (publisher.clone(), broker_state.clone());
        std::thread::Builder::new()
            .name("vigil-kafka-check".into())
            .spawn(move || loop {
                match publisher.check(Duration::from_secs(5)) {
                    Ok(partitions) => {
                        info!(partitions, "event topic reachable");
                        set(&state, None);
                        break;
                    }
                    Err(why) => {
                        warn!(error = %why, "event topic not reachable yet; retrying");
                        set(&state, Some(why));
                        std::thread::sleep(Duration::from_secs(2));
                    }
                }
            })?;
    }
    let publishing = {
        let (publisher, state) = (publisher.clone(), broker_state.clone());
        runtime.spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_BATCHES));
            let mut tasks = tokio::task::JoinSet::new();
            while let Some(batch) = batches.recv().await {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let (publisher, state) = (publisher.clone(), state.clone());
                let (published, errors) = (published.clone(), publish_errors.clone());
                tasks.spawn(async move {
                    let n = batch.events.len();
                    let result = publisher.publish(&batch.events).await;
                    match &result {
                        Ok(_) => {
                            published.inc_by(n as u64);
                            if state.lock().map(|g| g.is_some()).unwrap_or(false) {
                                set(&state, None);
                            }
                        }
                        Err(why) => {
                            errors.inc();
                            error!(error = %why, events = n, "events not published; the sender will retry");
                            set(&state, Some(why.clone()));
                        }
                    }
                    let _ = batch.ack.send(result.map(|_| ()));
                    drop(permit);
                });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        })
    };

    let result = runtime.block_on(serve_receivers(&config, ingest, None));
    // Receivers are gone: every queued batch is published (or refused) before exit.
    if let Err(e) = runtime.block_on(publishing) {
        error!(error = %e, "the publishing task failed");
    }
    if let Err(e) = publisher.flush(Duration::from_secs(10)) {
        warn!(error = %e, "events still in flight at shutdown");
    }
    if let Some(c) = capture {
        if let Some(w) = Arc::try_unwrap(c).ok().and_then(|m| m.into_inner().ok()) {
            w.close().context("closing the capture file")?;
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    result?;
    info!("vigil ingest stopped; every acknowledged event is in Kafka");
    Ok(())
}

fn set(slot: &Mutex<Option<String>>, value: Option<String>) {
    if let Ok(mut g) = slot.lock() {
        *g = value;
    }
}
