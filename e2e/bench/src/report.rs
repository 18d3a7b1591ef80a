//! results.json (every figure) and results.md (the tables), with the ratios lockkeeper ÷
//! baseline B (the raw engine) and lockkeeper ÷ Curator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::{Value, json};

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
    (a / b * 100.0).round() / 100.0
}

impl Results {
    pub fn new(dir: &Path) -> Result<Self> {
        let mut json = serde_json::Map::new();
        json.insert("machine".into(), machine());
        json.insert("date".into(), json!(today()));
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
        pods: &Latency,
        gates: &Latency,
    ) {
        let ratios = |l: &Latency, base: &Latency| json!({"p50": ratio(l.p50_ms, base.p50_ms), "p99": ratio(l.p99_ms, base.p99_ms), "max": ratio(l.max_ms, base.max_ms)});
        self.json.insert(
            "handoff".into(),
            json!({
                "curator": curator, "engine": engine, "lockkeeper_pod": pods, "lockkeeper_gate": gates,
                "ratios": {
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
            "| system | handoffs | p50 ms | p99 ms | max ms | p50 ÷ engine | p99 ÷ engine | p50 ÷ Curator | p99 ÷ Curator |".into(),
            "|---|---|---|---|---|---|---|---|---|".into(),
        ];
        for (name, l) in [
            ("Curator InterProcessMutex (baseline A)", curator),
            ("lockkeeper engine, direct (baseline B)", engine),
            ("lockkeeper: pod Succeeded → claim Granted", pods),
            ("lockkeeper gate: pod Succeeded → next gate exits", gates),
        ] {
            table.push(format!(
                "| {name} | {} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {:.2} | {:.2} |",
                l.count,
                l.p50_ms,
                l.p99_ms,
                l.max_ms,
                l.p50_ms / engine.p50_ms,
                l.p99_ms / engine.p99_ms,
                l.p50_ms / curator.p50_ms,
                l.p99_ms / curator.p99_ms
            ));
        }
        self.markdown.extend(table);
        self.markdown.push(String::new());
    }

    pub fn throughput(
        &mut self,
        locks: usize,
        per_lock: usize,
        engine: f64,
        throughput: &Throughput,
        memory: Memory,
        requests: &BTreeMap<String, u64>,
    ) {
        let lockkeeper = throughput.grants_per_s;
        let claims = (locks * per_lock) as f64;
        let per_claim: BTreeMap<&String, f64> = requests
            .iter()
            .map(|(what, count)| (what, (*count as f64 / claims * 100.0).round() / 100.0))
            .collect();
        self.json.insert(
            "throughput".into(),
            json!({"locks": locks, "claims_per_lock": per_lock, "engine_grants_per_s": engine,
                   "lockkeeper_grants_per_s": lockkeeper, "ratio_lockkeeper_to_engine": ratio(lockkeeper, engine),
                   "lockkeeper_queue_s": throughput.queue_s,
                   "controller_memory_after": memory, "api_requests_per_claim": per_claim}),
        );
        self.markdown.extend([
            format!(
                "### Throughput, {locks} locks × {per_lock} claims queued behind outside holders, released as soon as granted"
            ),
            String::new(),
            "| system | grants/s | ÷ engine |".into(),
            "|---|---|---|".into(),
            format!("| lockkeeper engine, direct (baseline B) | {engine:.0} | 1.00 |"),
            format!(
                "| lockkeeper (claims held by pods, on the real API server) | {lockkeeper:.0} | {:.2} |",
                lockkeeper / engine
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
                "The controller's API requests per claim (watches left out; the workload's own pods and claims are not counted): {}.",
                per_claim
                    .iter()
                    .map(|(what, count)| format!("{what} {count}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            String::new(),
        ]);
    }

    pub fn scale(&mut self, scale: &ScaleResults) {
        self.json.insert(
            "scale".into(),
            serde_json::to_value(scale).expect("scale results serialize"),
        );
        let watches = &scale.watches;
        let recovery = &scale.recovery;
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
                "| controller RSS with every claim waiting (peak) | {:.1} MiB ({:.1} MiB) |",
                scale.memory_all_waiting.rss_mib, scale.memory_all_waiting.peak_rss_mib
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
            "![controller memory against claims](memory-by-claims.png)".into(),
            String::new(),
        ]);
    }

    pub fn markdown(&self) -> String {
        let machine = &self.json["machine"];
        let mut text = vec![
            "# lockkeeper benchmark results".to_string(),
            String::new(),
            format!(
                "{} — {} ({} CPUs), {} GiB RAM, {}. One ZooKeeper {} on loopback, the real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) on loopback, `lockkeeper controller` as its own process (its API requests counted by the API fault proxy).",
                self.json["date"].as_str().unwrap_or_default(),
                machine["cpu"].as_str().unwrap_or_default(),
                machine["cpus"],
                machine["memory_gib"],
                machine["os"].as_str().unwrap_or_default(),
                machine["zookeeper"].as_str().unwrap_or_default(),
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
