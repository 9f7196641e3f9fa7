//! Tests of the publisher against a real tansu broker (started per test on a
//! free loopback port) and of the failure modes that need no broker.

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use event::{Alert, Severity, ALERT_SCHEMA_VERSION};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::*;

const TOPIC: &str = "vigil.alerts";

fn tansu_path() -> Option<PathBuf> {
    let path = std::env::var_os("VIGIL_TANSU")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("VIGIL_CACHE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/vigil"))
                })?;
            Some(cache.join("broker/bin/tansu"))
        })?;
    path.is_file().then_some(path)
}

/// Skips the calling test, with the reason, when tansu is not installed.
macro_rules! tansu_or_skip {
    () => {
        match tansu_path() {
            Some(p) => p,
            None => {
                eprintln!("SKIPPED: tansu is not installed; run scripts/broker install (or set VIGIL_TANSU)");
                return;
            }
        }
    };
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tansu broker with in-memory storage, killed on drop.
struct TestBroker {
    child: Child,
}

impl TestBroker {
    fn start(tansu: &PathBuf, port: u16) -> TestBroker {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let broker = TestBroker { child };
        wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let status = Command::new(tansu)
            .args([
                "topic",
                "create",
                TOPIC,
                "--partitions",
                "3",
                "--broker",
                &url,
            ])
            .stdout(Stdio::null())
            .status()
            .expect("run tansu topic create");
        assert!(status.success(), "tansu topic create failed");
        broker
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ok()
}

fn config(port: u16, spool: &std::path::Path) -> KafkaConfig {
    KafkaConfig {
        brokers: format!("127.0.0.1:{port}"),
        spool_dir: Some(spool.to_path_buf()),
        ..Default::default()
    }
}

fn alert(i: usize, user: &str) -> Alert {
    Alert {
        schema_version: ALERT_SCHEMA_VERSION,
        id: format!("alert-{i:05}"),
        rule_id: "sensitive-file-read".into(),
        title: "Sensitive file read".into(),
        severity: Severity::High,
        tenant: "acme".into(),
        key: BTreeMap::from([("user".to_string(), user.to_string())]),
        user: Some(user.into()),
        time: 1_700_000_000_000_000_000 + i as i64,
        count: 1,
        event_ids: vec![format!("ev-{i}")],
        summary: format!("alert number {i}"),
        ..Default::default()
    }
}

fn alerts(n: usize) -> Vec<Alert> {
    let users = [
        "dana@example.com",
        "lee@example.com",
        "sam@example.com",
        "kim@example.com",
    ];
    (0..n).map(|i| alert(i, users[i % users.len()])).collect()
}

struct Received {
    key: String,
    headers: HashMap<String, String>,
    alert: Alert,
}

/// Reads the topic from the beginning until `n` messages came (or 30 s passed).
fn consume(port: u16, n: usize) -> Vec<Received> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{port}"))
        .set("group.id", "vigil-test")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < n && Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.expect("consume");
        let headers = msg
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Received {
            key: String::from_utf8(msg.key().unwrap().to_vec()).unwrap(),
            headers,
            alert: serde_json::from_slice(msg.payload().unwrap()).unwrap(),
        });
    }
    // Anything more would be a duplicate.
    let extra_deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < extra_deadline {
        if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(100)) {
            panic!(
                "unexpected extra message {:?}",
                msg.key().map(String::from_utf8_lossy)
            );
        }
    }
    out
}

/// Every alert exactly once, and each key's alerts in publish order.
fn assert_exactly_once_in_order(sent: &[Alert], got: &[Received]) {
    let mut ids: Vec<&str> = got.iter().map(|r| r.alert.id.as_str()).collect();
    ids.sort_unstable();
    let mut want: Vec<&str> = sent.iter().map(|a| a.id.as_str()).collect();
    want.sort_unstable();
    assert_eq!(ids, want);
    let mut per_key: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in got {
        per_key.entry(&r.key).or_default().push(&r.alert.id);
    }
    for (key, ids) in per_key {
        let expected: Vec<&str> = sent
            .iter()
            .filter(|a| message_key(a) == key)
            .map(|a| a.id.as_str())
            .collect();
        assert_eq!(ids, expected, "order of key {key}");
    }
}

#[test]
fn unknown_librdkafka_property_is_an_immediate_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(9, dir.path());
    cfg.properties.insert("no.such.property".into(), "1".into());
    let started = Instant::now();
    let err = AlertPublisher::start(&cfg)
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("no.such.property"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn unreachable_broker_starts_at_once_and_keeps_alerts_spooled() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port(); // nothing listens here
    let started = Instant::now();
    let mut publisher = AlertPublisher::start(&config(port, dir.path())).unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    publisher.publish(&alerts(3)).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let stats = publisher.stats();
    assert!(!stats.connected, "{stats:?}");
    assert_eq!(stats.spooled, 3);
    assert!(stats.spool_bytes > 0);
    let closing = Instant::now();
    let stats = publisher.close(Duration::from_millis(200));
    assert!(closing.elapsed() < Duration::from_secs(3));
    assert_eq!((stats.acknowledged, stats.spooled), (0, 3));
}

#[test]
fn alerts_fired_while_the_broker_is_down_arrive_once_in_order_when_it_starts() {
    let tansu = tansu_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut publisher = AlertPublisher::start(&config(port, dir.path())).unwrap();
    let sent = alerts(200);
    for chunk in sent.chunks(7) {
        publisher.publish(chunk).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(publisher.stats().spooled, 200);
    let _broker = TestBroker::start(&tansu, port);
    assert!(
        wait_for(Duration::from_secs(60), || publisher.stats().spooled == 0),
        "not delivered: {:?}",
        publisher.stats()
    );
    let stats = publisher.close(Duration::from_secs(5));
    assert_eq!(stats.acknowledged, 200, "{stats:?}");
    assert!(stats.connected, "{stats:?}");
    let got = consume(port, 200);
    assert_exactly_once_in_order(&sent, &got);
    let first = got.iter().find(|r| r.alert.id == "alert-00000").unwrap();
    assert_eq!(first.key, "acme/user=dana@example.com");
    assert_eq!(first.alert, sent[0]);
    for (k, v) in [
        ("alert_id", "alert-00000"),
        ("rule_id", "sensitive-file-read"),
        ("severity", "high"),
        ("tenant", "acme"),
        ("schema_version", "1"),
    ] {
        assert_eq!(
            first.headers.get(k).map(String::as_str),
            Some(v),
            "header {k}"
        );
    }
}

#[test]
fn spooled_alerts_survive_a_restart_and_are_delivered_after_it() {
    let tansu = tansu_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let sent = alerts(50);
    let mut publisher = AlertPublisher::start(&config(port, dir.path())).unwrap();
    publisher.publish(&sent).unwrap();
    let stats = publisher.close(Duration::ZERO);
    assert_eq!(stats.spooled, 50);

    let _broker = TestBroker::start(&tansu, port);
    let mut publisher = AlertPublisher::start(&config(port, dir.path())).unwrap();
    assert_eq!(publisher.stats().spooled, 50);
    let more = alerts(60).split_off(50);
    publisher.publish(&more).unwrap();
    assert!(
        wait_for(Duration::from_secs(60), || publisher.stats().spooled == 0),
        "{:?}",
        publisher.stats()
    );
    publisher.close(Duration::from_secs(5));
    let all: Vec<Alert> = sent.into_iter().chain(more).collect();
    assert_exactly_once_in_order(&all, &consume(port, 60));

    // A third start finds nothing left to send.
    let publisher = AlertPublisher::start(&config(port, dir.path())).unwrap();
    assert_eq!(publisher.stats().spooled, 0);
}

#[test]
fn alerts_whose_delivery_timed_out_are_resent_in_order_once_the_broker_is_back() {
    let tansu = tansu_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = config(port, dir.path());
    cfg.properties
        .insert("message.timeout.ms".into(), "800".into());
    let mut publisher = AlertPublisher::start(&cfg).unwrap();
    let sent = alerts(40);
    for chunk in sent.chunks(3) {
        publisher.publish(chunk).unwrap();
    }
    assert!(
        wait_for(Duration::from_secs(10), || publisher.stats().failed >= 40),
        "{:?}",
        publisher.stats()
    );
    let _broker = TestBroker::start(&tansu, port);
    assert!(
        wait_for(Duration::from_secs(60), || publisher.stats().spooled == 0),
        "{:?}",
        publisher.stats()
    );
    let stats = publisher.close(Duration::from_secs(5));
    assert_eq!(stats.acknowledged, 40, "{stats:?}");
    assert!(stats.produced > 40, "{stats:?}");
    assert_exactly_once_in_order(&sent, &consume(port, 40));
}

/// Raises a fatal error in the publisher's producer, with the next
/// `failing_creates` attempts to create a new one refused, and waits until
/// the publisher reports the refusal.
fn break_producer(publisher: &AlertPublisher, failing_creates: usize) {
    let shared = &publisher.shared;
    shared
        .failing_creates
        .store(failing_creates, Ordering::Relaxed);
    shared.inject_fatal.store(true, Ordering::Relaxed);
    let reported = wait_for(Duration::from_secs(20), || {
        publisher
            .stats()
            .last_error
            .is_some_and(|e| e.contains("cannot recreate the producer"))
    });
    assert!(reported, "{:?}", publisher.stats());
    assert!(!publisher.stats().connected, "no producer, no connection");
}

#[test]
fn a_fatal_producer_error_gets_a_new_producer_even_after_failed_attempts() {
    let tansu = tansu_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = TestBroker::start(&tansu, port);
    let mut publisher = AlertPublisher::start(&config(port, dir.path())).unwrap();
    let sent = alerts(40);
    publisher.publish(&sent[..20]).unwrap();
    assert!(
        wait_for(Duration::from_secs(60), || publisher.stats().spooled == 0),
        "{:?}",
        publisher.stats()
    );
    // The producer breaks, and the first two new ones cannot be created.
    break_producer(&publisher, 2);
    publisher.publish(&sent[20..]).unwrap();
    assert!(
        wait_for(Duration::from_secs(60), || publisher.stats().spooled == 0),
        "{:?}",
        publisher.stats()
    );
    assert_eq!(publisher.shared.failing_creates.load(Ordering::Relaxed), 0);
    let stats = publisher.close(Duration::from_secs(5));
    assert_eq!(stats.acknowledged, 40, "{stats:?}");
    assert!(stats.connected, "{stats:?}");
    assert_exactly_once_in_order(&sent, &consume(port, 40));
}

#[test]
fn stopping_while_no_producer_can_be_created_keeps_the_alerts_spooled() {
    let tansu = tansu_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = TestBroker::start(&tansu, port);
    let mut publisher = AlertPublisher::start(&config(port, dir.path())).unwrap();
    break_producer(&publisher, usize::MAX);
    let sent = alerts(3);
    publisher.publish(&sent).unwrap();
    let closing = Instant::now();
    let stats = publisher.close(Duration::from_millis(200));
    assert!(closing.elapsed() < Duration::from_secs(3));
    assert_eq!((stats.acknowledged, stats.spooled), (0, 3), "{stats:?}");
    // The next start delivers them.
    let publisher = AlertPublisher::start(&config(port, dir.path())).unwrap();
    assert!(
        wait_for(Duration::from_secs(60), || publisher.stats().spooled == 0),
        "{:?}",
        publisher.stats()
    );
    publisher.close(Duration::from_secs(5));
    assert_exactly_once_in_order(&sent, &consume(port, 3));
}

#[test]
fn full_spool_refuses_alerts_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(free_port(), dir.path());
    cfg.spool_max_bytes = 2000;
    let mut publisher = AlertPublisher::start(&cfg).unwrap();
    let err = publisher.publish(&alerts(10)).unwrap_err();
    assert!(
        err.to_string().contains("spool") && err.to_string().contains("full"),
        "{err}"
    );
    assert_eq!(publisher.stats().spool_full, 1);
    assert_eq!(publisher.stats().spooled, 0);
    publisher.publish(&alerts(1)).unwrap();
    assert_eq!(publisher.stats().spooled, 1);
}

/// `cargo test -p vigil-sinks --release -- --ignored --nocapture kafka_throughput`
///
/// Measures two things: publish-and-acknowledge end to end (each batch of 500
/// fsync'd to the spool, then produced), and draining a spool of alerts that
/// waited while the broker was down.
#[test]
#[ignore = "measurement, run by hand"]
fn kafka_throughput_against_tansu() {
    let tansu = tansu_or_skip!();
    let n = 50_000;
    let sent = alerts(n);
    let bytes: usize = sent
        .iter()
        .map(|a| serde_json::to_vec(a).unwrap().len())
        .sum();

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = TestBroker::start(&tansu, port);
    let mut publisher = AlertPublisher::start(&config(port, dir.path())).unwrap();
    let started = Instant::now();
    for chunk in sent.chunks(500) {
        publisher.publish(chunk).unwrap();
    }
    let spooled = started.elapsed();
    assert!(wait_for(
        Duration::from_secs(300),
        || publisher.stats().acknowledged as usize >= n
    ));
    let elapsed = started.elapsed();
    publisher.close(Duration::from_secs(5));
    drop(broker);
    println!(
        "publish+ack: {n} alerts ({} bytes each) spooled in {:.2}s, acknowledged in {:.2}s: {:.0} alerts/s",
        bytes / n,
        spooled.as_secs_f64(),
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut publisher = AlertPublisher::start(&config(port, dir.path())).unwrap();
    for chunk in sent.chunks(500) {
        publisher.publish(chunk).unwrap();
    }
    let _broker = TestBroker::start(&tansu, port);
    let started = Instant::now();
    assert!(wait_for(
        Duration::from_secs(300),
        || publisher.stats().acknowledged as usize >= n
    ));
    let elapsed = started.elapsed();
    let stats = publisher.close(Duration::from_secs(5));
    println!(
        "spool drain after the broker came back: {n} alerts in {:.2}s: {:.0} alerts/s; {stats:?}",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
}
