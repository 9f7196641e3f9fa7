//! The memory limiter: refuses new data while the process's resident memory
//! is above a soft limit, the way the OpenTelemetry Collector's
//! `memory_limiter` does.
//!
//! Queues and buffers are bounded in events, but events vary in size, so a
//! burst of huge records can still push RSS past what the machine has. A
//! background task samples RSS (`/proc/self/status`, Linux) every
//! `check_interval`; while it is above `limit - spike`, receivers answer
//! 429 / RESOURCE_EXHAUSTED, which exporters retry, and nothing already
//! accepted is dropped. Above the soft limit the limiter also asks the
//! allocator to hand free pages back to the system, since a process that
//! has freed its data but kept the pages would otherwise refuse forever.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Resident set size of this process in bytes, where the platform says.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The allocator the `vigil` binary runs on. glibc's malloc cost about a
/// third of the pipeline's CPU, most of it freeing on one thread what another
/// allocated (events cross from the receivers to the archive and the engine),
/// and it kept the pages of the engine's freed lateness buffer. jemalloc gave
/// 12% more records per CPU second end to end and half the settled memory for
/// 1M live sessions (docs/performance.md).
pub type Allocator = tikv_jemallocator::Jemalloc;

/// Returns freed heap pages to the system now (jemalloc would within about
/// 10 s on its own). Costs a walk of the heap: call it after a large release,
/// not per request.
pub fn release_free_pages() {
    // SAFETY: a documented jemalloc control ("arena.<MALLCTL_ARENAS_ALL>.purge")
    // that reads and writes nothing through the null pointers it is given.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
    // What C libraries (librdkafka, zstd) allocate stays with glibc.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only walks glibc's own arenas under their locks;
        // it takes no pointers from us and is safe to call from any thread.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// The limit and the state the receivers consult. Cloning shares it.
#[derive(Debug)]
pub struct MemoryLimiter {
    limit: u64,
    soft: u64,
    rss: AtomicU64,
    over: AtomicBool,
    refused: AtomicU64,
}

impl MemoryLimiter {
    /// A limiter refusing data above `limit_bytes - spike_bytes`.
    pub fn new(limit_bytes: u64, spike_bytes: u64) -> Arc<MemoryLimiter> {
        Arc::new(MemoryLimiter {
            limit: limit_bytes,
            soft: limit_bytes.saturating_sub(spike_bytes),
            rss: AtomicU64::new(0),
            over: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        })
    }

    /// Records one RSS sample and decides whether data is refused.
    pub fn observe(&self, rss: u64) {
        self.rss.store(rss, Ordering::Relaxed);
        // Hysteresis: once over, data is accepted again only a twentieth of
        // the limit below the soft limit, so the state does not flap.
        let was = self.over.load(Ordering::Relaxed);
        let over = if was {
            rss > self.soft.saturating_sub(self.limit / 20)
        } else {
            rss > self.soft
        };
        self.over.store(over, Ordering::Relaxed);
        if over && !was {
            tracing::warn!(
                rss_mib = rss >> 20,
                soft_limit_mib = self.soft >> 20,
                limit_mib = self.limit >> 20,
                "memory above the soft limit: refusing new data with retryable errors until it falls"
            );
        } else if was && !over {
            tracing::info!(
                rss_mib = rss >> 20,
                "memory back under the soft limit: accepting data"
            );
        }
        if over {
            release_free_pages();
        }
    }

    /// Samples RSS every `every` on a thread of its own (so a busy async
    /// runtime cannot delay the refusal) until the process ends.
    pub fn spawn_monitor(self: &Arc<Self>, every: Duration) {
        let Some(first) = resident_bytes() else {
            tracing::warn!("this platform does not report RSS: the memory limit is not enforced");
            return;
        };
        self.observe(first);
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("vigil-memory".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                if let Some(rss) = resident_bytes() {
                    me.observe(rss);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the memory limiter's thread: the limit is not enforced");
        }
    }

    /// `Err` with the reason while memory is above the soft limit.
    pub fn check(&self) -> Result<(), String> {
        if !self.over.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        Err(format!(
            "vigil is above its memory soft limit ({} MiB resident, soft limit {} MiB); retry later",
            self.rss.load(Ordering::Relaxed) >> 20,
            self.soft >> 20
        ))
    }

    pub fn rss(&self) -> u64 {
        self.rss.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn soft_limit(&self) -> u64 {
        self.soft
    }

    pub fn is_over(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_above_the_soft_limit_and_accepts_again_below_it() {
        let m = MemoryLimiter::new(1000 << 20, 200 << 20);
        assert_eq!(m.soft_limit(), 800 << 20);
        m.observe(700 << 20);
        assert!(m.check().is_ok());
        m.observe(801 << 20);
        let err = m.check().unwrap_err();
        assert!(err.contains("801 MiB") && err.contains("800 MiB"), "{err}");
        assert_eq!(m.refused(), 1);
        m.observe(790 << 20);
        assert!(
            m.check().is_err(),
            "just under the soft limit it still refuses"
        );
        m.observe(500 << 20);
        assert!(m.check().is_ok());
        assert_eq!(m.refused(), 2);
    }

    #[test]
    fn this_process_reports_its_rss() {
        if cfg!(target_os = "linux") {
            let rss = resident_bytes().expect("linux has /proc/self/status");
            assert!(rss > 1 << 20, "{rss}");
        }
    }
}
