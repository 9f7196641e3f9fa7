//! Writes a small archive of events and alerts to the folder given as the
//! first argument, for checking by hand with DuckDB or pyarrow:
//! `cargo run -p vigil-sinks --example write_sample_archive -- /tmp/archive`.

use event::{Alert, Event, EventKind, Evidence, Severity, Source};
use vigil_sinks::archive::{AlertArchive, ArchiveConfig, EventArchive};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::args()
        .nth(1)
        .ok_or("usage: write_sample_archive DIR")?;
    let t0 = 1_773_187_170_000_000_123; // 2026-03-10T23:59:30.000000123Z
    let events: Vec<Event> = (0..6)
        .map(|i| {
            let mut e = Event {
                time: t0 + i * 15_000_000_000,
                observed_time: t0 + i * 15_000_000_000 + 1,
                tenant: "acme".into(),
                source: Source::Agent,
                product: Some("claude-code".into()),
                kind: if i % 2 == 0 {
                    EventKind::FileRead
                } else {
                    EventKind::ModelCall
                },
                user: Some("gina@example.com".into()),
                session: Some("s-1".into()),
                path: (i % 2 == 0).then(|| format!("/Users/gina/file{i}").into()),
                tokens_in: (i % 2 == 1).then_some(100 * i),
                attrs: [("terminal.type".to_string(), "iTerm.app".to_string())].into(),
                ..Default::default()
            };
            e.event_id = e.compute_id();
            e
        })
        .collect();
    let mut w = EventArchive::open(ArchiveConfig::new(&root))?;
    w.write(&events)?;
    println!("{:?}", w.close()?);
    let alert = Alert {
        schema_version: event::ALERT_SCHEMA_VERSION,
        id: "a1".into(),
        rule_id: "ssh_key_read".into(),
        title: "SSH key read by an agent".into(),
        severity: Severity::High,
        tags: vec!["attack.t1552.004".into()],
        tenant: "acme".into(),
        key: [("user".to_string(), "gina@example.com".to_string())].into(),
        user: Some("gina@example.com".into()),
        time: t0,
        first_seen: t0,
        last_seen: t0,
        count: 1,
        event_ids: vec![events[0].event_id.clone()],
        evidence: vec![Evidence::from_event(&events[0])],
        summary: "gina's agent read a file".into(),
        ..Default::default()
    };
    let mut a = AlertArchive::open(ArchiveConfig::new(&root))?;
    a.write(&[alert])?;
    println!("{:?}", a.close()?);
    Ok(())
}
