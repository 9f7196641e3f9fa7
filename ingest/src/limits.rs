//! Per-tenant rate limits: one tenant sending too much gets 429 /
//! RESOURCE_EXHAUSTED while the others are unaffected.
//!
//! Limits count records (log records, spans, metric data points) per second
//! with a burst allowance, using governor's GCRA limiter, one per tenant.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use serde::Deserialize;

/// A tenant's limits: records per second with a burst, and the largest request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Sustained records per second.
    pub records_per_second: u32,
    /// Records accepted at once above the sustained rate; at least one request's worth.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Largest request (bytes, after decompression) this tenant may send; at
    /// most `ingest.max_body_bytes`, which applies before the tenant is known.
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
}

impl Rate {
    /// The most records taken at once: `burst`, else one second's worth.
    fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.records_per_second).max(1)
    }
}

/// `auth.rate_limits` in vigil.yaml: a default for every tenant and per-tenant overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Applies to every tenant without its own entry; none means unlimited.
    pub default: Option<Rate>,
    /// Per-tenant rates.
    pub tenants: BTreeMap<String, Rate>,
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// Why a request was refused by its tenant's limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverLimit {
    pub retry_after: Duration,
    pub message: String,
    /// More records than the burst allows at all: never admitted as it is.
    pub too_large: bool,
}

/// The limiters, created on first use per tenant.
pub struct TenantLimiter {
    limits: RateLimits,
    limiters: Mutex<HashMap<Arc<str>, Option<Arc<Limiter>>>>,
    clock: DefaultClock,
}

impl TenantLimiter {
    pub fn new(limits: RateLimits) -> Result<Self, String> {
        for (name, rate) in limits
            .default
            .iter()
            .map(|r| ("default", r))
            .chain(limits.tenants.iter().map(|(t, r)| (t.as_str(), r)))
        {
            if rate.records_per_second == 0 {
                return Err(format!(
                    "auth.rate_limits {name}: records_per_second must be at least 1"
                ));
            }
            // The OTel SDKs export up to 512 records a request by default.
            let burst = rate.burst();
            if burst < 512 {
                tracing::warn!(
                    tenant = name,
                    burst,
                    "auth.rate_limits: a burst under 512 refuses (413) the OTel SDKs' default batches of 512 records; raise it or have senders export smaller batches"
                );
            }
        }
        Ok(TenantLimiter {
            limits,
            limiters: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.limits.default.is_none() && self.limits.tenants.is_empty()
    }

    fn limiter(&self, tenant: &Arc<str>) -> Option<Arc<Limiter>> {
        let mut map = self.limiters.lock().ok()?;
        map.entry(tenant.clone())
            .or_insert_with(|| {
                let rate = self.rate(tenant)?;
                let per_second = NonZeroU32::new(rate.records_per_second)?;
                let burst = NonZeroU32::new(rate.burst())?;
                Some(Arc::new(RateLimiter::direct(
                    Quota::per_second(per_second).allow_burst(burst),
                )))
            })
            .clone()
    }

    /// The tenant's own limits, else the default ones.
    fn rate(&self, tenant: &str) -> Option<&Rate> {
        self.limits
            .tenants
            .get(tenant)
            .or(self.limits.default.as_ref())
    }

    /// The largest request the tenant may send, when it has its own limit.
    pub fn body_limit(&self, tenant: &str) -> Option<usize> {
        self.rate(tenant)?.max_body_bytes
    }

    /// Takes `records` from the tenant's allowance, or says when to retry.
    pub fn check(&self, tenant: &Arc<str>, records: usize) -> Result<(), OverLimit> {
        let Some(limiter) = self.limiter(tenant) else {
            return Ok(());
        };
        let n = NonZeroU32::new(u32::try_from(records).unwrap_or(u32::MAX).max(1))
            .expect("at least one");
        match limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(OverLimit {
                retry_after: not_until.wait_time_from(self.clock.now()).max(Duration::from_secs(1)),
                message: format!("tenant {tenant} is over its rate limit; retry later"),
                too_large: false,
            }),
            // More records in one request than the burst allows at all:
            // retrying it cannot help (413 / OUT_OF_RANGE, not 429).
            Err(_) => Err(OverLimit {
                retry_after: Duration::from_secs(1),
                message: format!(
                    "a request of {records} records is larger than tenant {tenant}'s burst allowance ({}); send smaller batches (OTEL_BLRP_MAX_EXPORT_BATCH_SIZE, OTEL_BSP_MAX_EXPORT_BATCH_SIZE) or raise auth.rate_limits burst",
                    self.rate(tenant).map_or(0, Rate::burst)
                ),
                too_large: true,
            }),
        }
    }
}

/// Data points in a metrics request, each of which becomes an event (log
/// and trace requests count theirs with [`crate::otlp::RequestRef::records`]).
pub fn data_points_in(req: &ExportMetricsServiceRequest) -> usize {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    req.resource_metrics
        .iter()
        .flat_map(|x| &x.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| match &m.data {
            Some(Data::Gauge(g)) => g.data_points.len(),
            Some(Data::Sum(g)) => g.data_points.len(),
            Some(Data::Histogram(g)) => g.data_points.len(),
            Some(Data::ExponentialHistogram(g)) => g.data_points.len(),
            Some(Data::Summary(g)) => g.data_points.len(),
            None => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_tenant_over_its_limit_leaves_the_others_alone() {
        let limits = RateLimits {
            default: Some(Rate {
                records_per_second: 1_000_000,
                burst: None,
                max_body_bytes: None,
            }),
            tenants: [(
                "noisy".to_string(),
                Rate {
                    records_per_second: 100,
                    burst: Some(200),
                    max_body_bytes: Some(1000),
                },
            )]
            .into(),
        };
        let l = TenantLimiter::new(limits).expect("valid");
        let (noisy, quiet): (Arc<str>, Arc<str>) = ("noisy".into(), "quiet".into());
        assert!(l.check(&noisy, 150).is_ok());
        let over = l.check(&noisy, 150).expect_err("over the burst left");
        assert!(over.retry_after >= Duration::from_secs(1));
        assert!(l.check(&quiet, 10_000).is_ok());
        let too_big = l.check(&noisy, 500).expect_err("never fits");
        assert!(
            too_big.message.contains("smaller batches"),
            "{}",
            too_big.message
        );
        assert!(TenantLimiter::new(RateLimits {
            default: Some(Rate {
                records_per_second: 0,
                burst: None,
                max_body_bytes: None,
            }),
            ..Default::default()
        })
        .is_err());
        assert_eq!(
            (l.body_limit("noisy"), l.body_limit("quiet")),
            (Some(1000), None)
        );
        let none = TenantLimiter::new(RateLimits::default()).expect("valid");
        assert!(none.is_empty() && none.check(&noisy, usize::MAX).is_ok());
    }
}
