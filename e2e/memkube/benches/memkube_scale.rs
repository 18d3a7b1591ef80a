//! memkube under the load the operator's benchmarks put on it: 10,000 objects listed (whole
//! and in pages), and every write fanned out to 200 concurrent watches. Prints figures; the
//! baseline is encoding the same 10,000 objects to JSON and decoding them in-process, the
//! floor any list over HTTP stands on.
//!
//! Run: `make bench-memkube` (or `cargo bench -p memkube --bench memkube_scale`).

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use memkube::MemKube;
use serde_json::json;

const OBJECTS: usize = 10_000;
const WATCHES: usize = 200;
const WRITES: usize = 500;

fn config_map(i: usize) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": format!("cm-{i:05}"), "labels": {"app": "bench", "shard": (i % 10).to_string()}},
        "data": {"value": "x".repeat(64)},
    }))
    .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let server = MemKube::start().await.unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(server.client(), "default");

    let started = Instant::now();
    futures::stream::iter(0..OBJECTS)
        .map(|i| {
            let maps = maps.clone();
            async move { maps.create(&PostParams::default(), &config_map(i)).await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let create_time = started.elapsed();
    println!(
        "create {OBJECTS} objects (32 in flight): {} ({:.0} objects/s)",
        ms(create_time),
        OBJECTS as f64 / create_time.as_secs_f64()
    );

    let all = maps.list(&ListParams::default()).await.unwrap();
    let started = Instant::now();
    let mut listed = 0;
    for _ in 0..5 {
        listed = maps.list(&ListParams::default()).await.unwrap().items.len();
    }
    let list_time = started.elapsed() / 5;
    assert_eq!(listed, OBJECTS);
    let started = Instant::now();
    for _ in 0..5 {
        let bytes = serde_json::to_vec(&all).unwrap();
        let decoded: kube::core::ObjectList<ConfigMap> = serde_json::from_slice(&bytes).unwrap();
        std::hint::black_box(decoded);
    }
    let serialize_time = started.elapsed() / 5;
    println!(
        "list {OBJECTS} objects: {} per list; baseline (encode and decode them in-process): {}; ratio {:.1}",
        ms(list_time),
        ms(serialize_time),
        list_time.as_secs_f64() / serialize_time.as_secs_f64()
    );
    let started = Instant::now();
    let mut pages = 0;
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default().limit(500);
        if let Some(token) = &token {
            params = params.continue_token(token);
        }
        let page = maps.list(&params).await.unwrap();
        pages += 1;
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    println!(
        "list {OBJECTS} objects in pages of 500: {} ({pages} pages)",
        ms(started.elapsed())
    );
    let started = Instant::now();
    let shard = maps
        .list(&ListParams::default().labels("shard=3"))
        .await
        .unwrap();
    println!(
        "list with a label selector ({} of {OBJECTS} match): {}",
        shard.items.len(),
        ms(started.elapsed())
    );

    // 200 watches, each counting the writes it receives and when.
    let revision = maps
        .list_metadata(&ListParams::default().limit(1))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut watchers = Vec::new();
    for _ in 0..WATCHES {
        let stream = maps
            .watch(&WatchParams::default().timeout(290), &revision)
            .await
            .unwrap();
        watchers.push(tokio::spawn(async move {
            let mut arrivals = Vec::with_capacity(WRITES);
            let mut stream = stream.boxed();
            while arrivals.len() < WRITES {
                match stream.next().await {
                    Some(Ok(WatchEvent::Modified(map))) => {
                        let sent: u128 = map.data.unwrap()["sent"].parse().unwrap();
                        arrivals.push((sent, now_micros()));
                    }
                    Some(Ok(_)) => {}
                    other => panic!("watch ended early: {other:?}"),
                }
            }
            arrivals
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    for i in 0..WRITES {
        let patch = Patch::Merge(json!({"data": {"sent": now_micros().to_string()}}));
        maps.patch(
            &format!("cm-{:05}", i % OBJECTS),
            &PatchParams::default(),
            &patch,
        )
        .await
        .unwrap();
    }
    let write_time = started.elapsed();
    let mut delays = Vec::with_capacity(WATCHES * WRITES);
    for watcher in watchers {
        for (sent, arrived) in watcher.await.unwrap() {
            delays.push(Duration::from_micros((arrived - sent) as u64));
        }
    }
    let fan_out_time = started.elapsed();
    delays.sort();
    println!(
        "fan-out: {WRITES} writes to {WATCHES} watches = {} events delivered in {} ({:.0} events/s); writes took {}",
        delays.len(),
        ms(fan_out_time),
        delays.len() as f64 / fan_out_time.as_secs_f64(),
        ms(write_time)
    );
    println!(
        "write-to-watcher delay: p50 {} p99 {} max {}",
        ms(percentile(&delays, 0.5)),
        ms(percentile(&delays, 0.99)),
        ms(*delays.last().unwrap())
    );
    println!("memkube resident memory: {} MiB", resident_mib());
    server.stop().await;
}

fn now_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

/// VmRSS of this process (memkube runs in it), from /proc.
fn resident_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}
