//! results.json (every figure) and results.md (the tables), with the ratios lockkeeper ÷
//! baseline B (the raw engine) and lockkeeper ÷ Curator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::{Value, json};

use crate::capacity::Capacity;
use crate::operator::Memory;
use crate::scale::ScaleResults;
use crate::stats::Latency;
use crate::throughput::Throughput;

pub struct Results {
    dir: PathBuf,
    json: serde_json::Map<String, Value>,
    markdown: Vec<String>,
}

fn ratio(a: f64, b: f64) -> f64 {
    round2(a / b)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn standing(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

/// Whether a request ("verb resource") changes something on the API server.
fn is_write(request: &str) -> bool {
    let verb = request.split(' ').next().unwrap_or_default();
    matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    )
}

impl Results {
    pub fn new(dir: &Path, kubernetes_version: &str) -> Result<Self> {
        let mut json = serde_json::Map::new();
        json.insert("machine".into(), machine());
        json.insert("date".into(), json!(today()));
        json.insert("kubernetes_version".into(), json!(kubernetes_version));
        Ok(Results {
            dir: dir.to_path_buf(),
            json,
            markdown: Vec::new(),
        })
    }

    pub fn handoffs(
        &mut self,
        curator: &Latency,
        engine: &Latency,
        floor: &Latency,
        pods: &Latency,
        gates: &Latency,
    ) {
        let ratios = |l: &Latency, base: &Latency| json!({"p50": ratio(l.p50_ms, base.p50_ms), "p99": ratio(l.p99_ms, base.p99_ms), "max": ratio(l.max_ms, base.max_ms)});
        let pod_p50_over_floor = ratio(pods.p50_ms, floor.p50_ms);
        let pod_p99_over_floor = ratio(pods.p99_ms, floor.p99_ms);
        self.json.insert(
            "handoff".into(),
            json!({
                "curator": curator, "engine": engine, "floor": floor, "lockkeeper_pod": pods,
                "lockkeeper_gate": gates,
                "ratios": {
                    "pod_p50_over_floor": pod_p50_over_floor,
                    "pod_p99_over_floor": pod_p99_over_floor,
                    "lockkeeper_pod_to_floor": ratios(pods, floor),
                    "lockkeeper_gate_to_floor": ratios(gates, floor),
                    "lockkeeper_pod_to_engine": ratios(pods, engine),
                    "lockkeeper_pod_to_curator": ratios(pods, curator),
                    "lockkeeper_gate_to_engine": ratios(gates, engine),
                    "lockkeeper_gate_to_curator": ratios(gates, curator),
                    "engine_to_curator": ratios(engine, curator),
                },
            }),
        );
        let mut table = vec![
            "### Handoff latency, one contended Mutex (release → next holder knows)".to_string(),
            String::new(),
            "| system | handoffs | p50 ms | p99 ms | max ms | p50 ÷ floor | p99 ÷ floor | p50 ÷ engine | p50 ÷ Curator |".into(),
            "|---|---|---|---|---|---|---|---|---|".into(),
        ];
        for (name, l) in [
            ("Curator InterProcessMutex (baseline A)", curator),
            ("lockkeeper engine, direct (baseline B)", engine),
            ("floor: pod Succeeded → claim Granted, least work", floor),
            ("lockkeeper: pod Succeeded → claim Granted", pods),
            ("lockkeeper gate: pod Succeeded → next gate exits", gates),
        ] {
            table.push(format!(
                "| {name} | {} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {:.2} | {:.2} |",
                l.count,
                l.p50_ms,
                l.p99_ms,
                l.max_ms,
                l.p50_ms / floor.p50_ms,
                l.p99_ms / floor.p99_ms,
                l.p50_ms / engine.p50_ms,
                l.p50_ms / curator.p50_ms,
            ));
        }
        table.extend([
            String::new(),
            format!(
                "Targets: pod → `Granted` p50 ≤ 1.5 × the floor's — {} ({pod_p50_over_floor:.2}×); p99 ≤ 2 × the floor's — {} ({pod_p99_over_floor:.2}×).",
                standing(pod_p50_over_floor <= 1.5),
                standing(pod_p99_over_floor <= 2.0),
            ),
        ]);
        self.markdown.extend(table);
        self.markdown.push(String::new());
    }

    #[allow(clippy::too_many_arguments)]
    pub fn throughput(
        &mut self,
        locks: usize,
        per_lock: usize,
        engine: f64,
        capacity: &Capacity,
        throughput: &Throughput,
        memory: Memory,
        requests: &BTreeMap<String, u64>,
    ) {
        let lockkeeper = throughput.grants_per_s;
        let claims = (locks * per_lock) as f64;
        let per_claim: BTreeMap<&String, f64> = requests
            .iter()
            .map(|(what, count)| (what, round2(*count as f64 / claims)))
            .collect();
        let writes: BTreeMap<&String, f64> = per_claim
            .iter()
            .filter(|(what, _)| is_write(what))
            .map(|(what, count)| (*what, *count))
            .collect();
        let writes_per_claim = round2(writes.values().sum());
        let limit = capacity.limit_grants_per_s();
        let ratio_to_limit = ratio(lockkeeper, limit);
        self.json
            .insert("api_writes_per_claim".into(), json!(writes_per_claim));
        self.json
            .insert("api_writes_per_claim_by_request".into(), json!(writes));
        self.json.insert(
            "throughput".into(),
            json!({"locks": locks, "claims_per_lock": per_lock, "engine_grants_per_s": engine,
                   "lockkeeper_grants_per_s": lockkeeper, "ratio_lockkeeper_to_engine": ratio(lockkeeper, engine),
                   "apiserver_status_writes_per_s": round2(capacity.status_writes_per_s),
                   "apiserver_direct_status_writes_per_s": round2(capacity.direct_status_writes_per_s),
                   "apiserver_apply_status_writes_per_s": round2(capacity.apply_status_writes_per_s),
                   "apiserver_writers": capacity.concurrency,
                   "limit_grants_per_s": round2(limit),
                   "operator_grants_per_s": lockkeeper,
                   "ratio_to_limit": ratio_to_limit,
                   "lockkeeper_queue_s": throughput.queue_s,
                   "controller_memory_after": memory, "api_requests_per_claim": per_claim}),
        );
        self.markdown.extend([
            format!(
                "### Throughput, {locks} locks × {per_lock} claims queued behind outside holders, released as soon as granted"
            ),
            String::new(),
            "| system | grants/s | ÷ engine | ÷ limit |".into(),
            "|---|---|---|---|".into(),
            format!("| lockkeeper engine, direct (baseline B) | {engine:.0} | 1.00 | — |"),
            format!(
                "| the limit: the API server's claim status writes/s ÷ 2 | {limit:.0} | {:.2} | 1.00 |",
                limit / engine
            ),
            format!(
                "| lockkeeper (claims held by pods, on the real API server) | {lockkeeper:.0} | {:.2} | {ratio_to_limit:.2} |",
                lockkeeper / engine
            ),
            String::new(),
            format!(
                "The API server's capacity: {:.0} claim status writes/s by a plain client with {} writes in flight through the proxy the controller's requests go through ({:.0}/s straight to kube-apiserver; {:.0}/s through the proxy as server-side applies). Target: lockkeeper ≥ 0.5 × the limit — {} ({ratio_to_limit:.2}×).",
                capacity.status_writes_per_s,
                capacity.concurrency,
                capacity.direct_status_writes_per_s,
                capacity.apply_status_writes_per_s,
                standing(ratio_to_limit >= 0.5),
            ),
            String::new(),
            format!(
                "Timed from the outside holders' release to the last grant. Queueing the {} claims (pod and claim made → `Waiting`) took {:.1} s before that.",
                locks * per_lock,
                throughput.queue_s
            ),
            String::new(),
            format!(
                "Controller memory afterwards: RSS {:.1} MiB, peak {:.1} MiB.",
                memory.rss_mib, memory.peak_rss_mib
            ),
            String::new(),
            format!(
                "### API writes per claim: {writes_per_claim:.2} (target ≤ 5, events included — {})",
                standing(writes_per_claim <= 5.0)
            ),
            String::new(),
            "Counted by the API fault proxy in front of kube-apiserver, for every claim of the throughput run (Waiting → Granted → Released behind a queue of its lock's other claims); the workload's own pods and claims are not counted.".into(),
            String::new(),
            "| request | per claim |".into(),
            "|---|---|".into(),
        ]);
        self.markdown.extend(
            writes
                .iter()
                .map(|(what, n)| format!("| {what} | {n:.2} |")),
        );
        self.markdown.extend([
            String::new(),
            format!(
                "Every request per claim, reads included (watches left out): {}.",
                per_claim
                    .iter()
                    .map(|(what, count)| format!("{what} {count}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            String::new(),
            "![API writes per claim](writes-per-claim.png)".into(),
            String::new(),
        ]);
    }

    /// API writes per claim by resource (verbs added up), for the plot.
    pub fn writes_per_claim_by_resource(&self) -> Vec<(String, f64)> {
        let mut by_resource: BTreeMap<String, f64> = BTreeMap::new();
        if let Some(writes) = self.json["api_writes_per_claim_by_request"].as_object() {
            for (what, count) in writes {
                let resource = what.split_once(' ').map_or(what.as_str(), |(_, r)| r);
                *by_resource.entry(resource.to_string()).or_default() +=
                    count.as_f64().unwrap_or_default();
            }
        }
        by_resource.into_iter().collect()
    }

    pub fn scale(&mut self, scale: &ScaleResults) {
        let mut figures = serde_json::to_value(scale).expect("scale results serialize");
        figures["controller_rss_mib"] = json!(scale.memory_all_waiting.rss_mib);
        figures["restart_first_grant_s"] = json!(scale.recovery.first_grant_s);
        self.json.insert("scale".into(), figures);
        let watches = &scale.watches;
        let recovery = &scale.recovery;
        let (before, after) = (&scale.cluster_before, &scale.cluster_all_waiting);
        let mib = |bytes: u64| bytes as f64 / 1024.0 / 1024.0;
        self.markdown.extend([
            format!(
                "### Scale: {} locks, each held by an outside ZooKeeper client, {} claims waiting",
                scale.locks, scale.claims
            ),
            String::new(),
            "| figure | value |".into(),
            "|---|---|".into(),
            format!(
                "| first create → every claim `Waiting` at its right place | {:.1} s |",
                scale.all_waiting_s
            ),
            format!(
                "| first create → the last of the {} holder pods and {} claims made (the bench's own creates) | {:.1} s |",
                scale.claims, scale.claims, scale.creates_s
            ),
            format!(
                "| controller RSS with every claim waiting (peak) | {:.1} MiB ({:.1} MiB) |",
                scale.memory_all_waiting.rss_mib, scale.memory_all_waiting.peak_rss_mib
            ),
            format!(
                "| kube-apiserver RSS before the claims → with every claim waiting | {:.1} → {:.1} MiB |",
                before.apiserver_rss_mib, after.apiserver_rss_mib
            ),
            format!(
                "| etcd RSS before → after | {:.1} → {:.1} MiB |",
                before.etcd_rss_mib, after.etcd_rss_mib
            ),
            format!(
                "| etcd database size before → after (added) | {:.1} → {:.1} MiB (+{:.1} MiB) |",
                mib(before.etcd_db_bytes),
                mib(after.etcd_db_bytes),
                mib(after.etcd_db_bytes.saturating_sub(before.etcd_db_bytes))
            ),
            format!(
                "| one waiting claim as the API server returns it (JSON) | {} bytes |",
                scale.claim_object_bytes
            ),
            format!(
                "| ZooKeeper watches of the controller on the queues, for {} waiters | {} |",
                watches.waiters, watches.controller_on_queues
            ),
            format!(
                "| waiters whose predecessor node is watched / directory (children) watches | {} / {} |",
                watches.waiters_watching_predecessor, watches.directory_watches
            ),
            format!("| all watches on the server (`wchs`) | {} |", watches.server_total),
            format!(
                "| restart (SIGTERM) with {} claims, {} granted, {} holders ended meanwhile: start → first grant | {:.2} s |",
                recovery.claims, recovery.granted_before, recovery.due, recovery.first_grant_s
            ),
            format!(
                "| start → all {} due claims granted | {:.2} s |",
                recovery.due, recovery.all_due_granted_s
            ),
            format!(
                "| holders that kept their grant over the restart / locks with two holders after it | {} / {} |",
                recovery.holders_kept, recovery.locks_with_two_holders
            ),
            format!(
                "| drain (holders end as soon as granted): time, grants/s | {:.1} s, {:.0} |",
                scale.drain_s, scale.drain_grants_per_s
            ),
            format!(
                "| controller RSS after the drain (peak) | {:.1} MiB ({:.1} MiB) |",
                scale.memory_end.rss_mib, scale.memory_end.peak_rss_mib
            ),
            format!(
                "| grants before the previous holder ended / claims granted more than once / once | {} / {} / {} |",
                scale.grants_before_previous_holder_ended,
                scale.claims_granted_more_than_once,
                scale.claims_granted_once
            ),
            String::new(),
            format!(
                "Targets at {} claims: controller RSS < 150 MiB — {} ({:.1} MiB); one ZooKeeper watch per waiter — {} ({} watches, {} on predecessors, for {} waiters); all `Waiting` in < 20 s — {} ({:.1} s); restart → first grant < 5 s — {} ({:.2} s).",
                scale.claims,
                standing(scale.memory_all_waiting.rss_mib < 150.0),
                scale.memory_all_waiting.rss_mib,
                standing(
                    watches.controller_on_queues == watches.waiters
                        && watches.waiters_watching_predecessor == watches.waiters
                ),
                watches.controller_on_queues,
                watches.waiters_watching_predecessor,
                watches.waiters,
                standing(scale.all_waiting_s < 20.0),
                scale.all_waiting_s,
                standing(recovery.first_grant_s < 5.0),
                recovery.first_grant_s,
            ),
            String::new(),
            "![memory against claims](memory-by-claims.png)".into(),
            String::new(),
        ]);
    }

    pub fn markdown(&self) -> String {
        let machine = &self.json["machine"];
        let mut text = vec![
            "# lockkeeper benchmark results".to_string(),
            String::new(),
            format!(
                "{} — {} ({} CPUs), {} GiB RAM, {}. One ZooKeeper {} on loopback, the real Kubernetes control plane {} (etcd, kube-apiserver, kube-controller-manager) on loopback, `lockkeeper controller` as its own process (its API requests counted by the API fault proxy).",
                self.json["date"].as_str().unwrap_or_default(),
                machine["cpu"].as_str().unwrap_or_default(),
                machine["cpus"],
                machine["memory_gib"],
                machine["os"].as_str().unwrap_or_default(),
                machine["zookeeper"].as_str().unwrap_or_default(),
                self.json["kubernetes_version"].as_str().unwrap_or_default(),
            ),
            String::new(),
        ];
        text.extend(self.markdown.iter().cloned());
        text.join("\n")
    }

    pub fn write(&self) -> Result<()> {
        std::fs::write(
            self.dir.join("results.json"),
            serde_json::to_string_pretty(&Value::Object(self.json.clone()))? + "\n",
        )?;
        std::fs::write(self.dir.join("results.md"), self.markdown() + "\n")?;
        Ok(())
    }
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_default();
    let zookeeper = std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "zookeeper"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "os": os,
        "zookeeper": zookeeper,
    })
}

fn today() -> String {
    let output = std::process::Command::new("date").arg("+%Y-%m-%d").output();
    output
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
