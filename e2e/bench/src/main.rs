//! lockkeeper's benchmark (issue 6): handoff latency, throughput and scale of lockkeeper
//! against the raw ZooKeeper lock engine (baseline B) and Apache Curator (baseline A),
//! measured in one run on one ZooKeeper. Prints figures and writes results.json,
//! results.md and plots; asserts no target (see README.md, Performance).
//!
//! `make bench` builds the release binaries and runs it.

mod baseline;
mod capacity;
mod handoff;
mod operator;
mod outside;
mod plot;
mod report;
mod scale;
mod stats;
mod throughput;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Parser;
use lockkeeper_testkit::ZooKeeperServer;

use crate::report::Results;
use crate::stats::Latency;

/// ZooKeeper root of the controller's lock paths in the bench.
pub const ROOT: &str = "/bench/lockkeeper";
/// ZooKeeper root of `handoff-floor`'s queues.
const FLOOR_ROOT: &str = "/bench/floor";

#[derive(Debug, Parser)]
#[command(about = "lockkeeper against the raw ZooKeeper engine and Curator, in one run")]
struct Args {
    /// Where results.json, results.md and the plots go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Handoffs measured per system (after the warm-up).
    #[arg(long, default_value_t = 1000)]
    handoffs: usize,
    /// Handoffs left out at the start of each system (JVM warm-up, first connections).
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Locks × claims per lock for throughput.
    #[arg(long, default_value_t = 100)]
    locks: usize,
    #[arg(long, default_value_t = 20)]
    claims_per_lock: usize,
    /// How long the API server's capacity for claim status writes is measured, each way.
    #[arg(long, default_value_t = 10.0)]
    capacity_seconds: f64,
    /// Locks × waiting claims per lock for scale and recovery.
    #[arg(long, default_value_t = 1000)]
    scale_locks: usize,
    #[arg(long, default_value_t = 10)]
    scale_claims_per_lock: usize,
    /// Run these parts only (e.g. `--only throughput`); results.json then holds only their
    /// figures.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    Handoff,
    Throughput,
    Scale,
}

impl Args {
    fn runs(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let work = tempfile::tempdir()?;
    let zk = ZooKeeperServer::start()?;
    let mut op = operator::Operator::start(zk.connect_string(), work.path()).await?;
    let mut results = Results::new(&args.out, op.plane.version())?;

    if args.runs(Part::Handoff) {
        handoffs(&args, &zk, work.path(), &mut op, &mut results).await?;
    }
    if args.runs(Part::Throughput) {
        section(&format!(
            "throughput: {} locks × {} claims",
            args.locks, args.claims_per_lock
        ));
        let engine_rate =
            baseline::engine_throughput(&zk, args.locks, args.claims_per_lock).await?;
        section("throughput: the API server's capacity for claim status writes");
        let capacity = capacity::measure(
            &op,
            "capacity",
            args.locks * args.claims_per_lock,
            std::time::Duration::from_secs_f64(args.capacity_seconds),
        )
        .await?;
        section("throughput: lockkeeper");
        op.namespace("throughput").await?;
        op.start_controller("throughput", ROOT)?;
        let before = op.api_requests();
        let lockkeeper = throughput::lockkeeper_throughput(
            &op,
            &zk,
            "throughput",
            ROOT,
            args.locks,
            args.claims_per_lock,
        )
        .await?;
        let memory = op.controller_memory()?;
        let requests = requests_since(&before, op.api_requests());
        op.stop_controller()?;
        results.throughput(
            args.locks,
            args.claims_per_lock,
            engine_rate,
            &capacity,
            &lockkeeper,
            memory,
            &requests,
        );
        plot::writes_per_claim(
            &args.out.join("writes-per-claim.png"),
            &results.writes_per_claim_by_resource(),
        )?;
    }

    if args.runs(Part::Scale) {
        section(&format!(
            "scale and recovery: {} locks × {} waiting claims",
            args.scale_locks, args.scale_claims_per_lock
        ));
        let scale = scale::run(&mut op, &zk, args.scale_locks, args.scale_claims_per_lock).await?;
        plot::memory(
            &args.out.join("memory-by-claims.png"),
            &scale.memory_by_claims,
        )?;
        results.scale(&scale);
    }

    op.stop().await?;
    results.write()?;
    println!("{}", results.markdown());
    println!("written to {}", args.out.display());
    Ok(())
}

/// Handoff latency of Curator, the raw engine, the floor, lockkeeper pod → claim and gate →
/// gate.
async fn handoffs(
    args: &Args,
    zk: &ZooKeeperServer,
    work: &Path,
    op: &mut operator::Operator,
    results: &mut Results,
) -> Result<()> {
    section("handoff: Curator InterProcessMutex (two JVMs)");
    let curator = Latency::of(&baseline::curator_handoffs(
        zk,
        work,
        args.handoffs,
        args.warmup,
    )?);
    section("handoff: lockkeeper engine, used directly (two sessions)");
    let engine =
        Latency::of(&baseline::engine_handoffs(zk, work, args.handoffs, args.warmup).await?);
    section(
        "handoff: the floor (handoff-floor) and lockkeeper in turns, pod Succeeded → next claim Granted (watch through the real API server)",
    );
    op.namespace("floor").await?;
    op.namespace("handoff").await?;
    op.start_floor("floor", FLOOR_ROOT)?;
    op.start_controller("handoff", ROOT)?;
    let (floor, pods) = floor_and_lockkeeper(op, args.handoffs, args.warmup).await?;
    op.stop_floor()?;
    op.stop_controller()?;
    section("handoff: lockkeeper gate, pod Succeeded → next gate exits");
    op.namespace("gate").await?;
    op.start_controller("gate", ROOT)?;
    let gates = Latency::of(&handoff::gate_handoffs(op, "gate", args.handoffs, args.warmup).await?);
    op.stop_controller()?;
    results.handoffs(&curator, &engine, &floor, &pods, &gates);
    plot::handoffs(
        &args.out.join("handoff-latency.png"),
        &[
            ("Curator InterProcessMutex", &curator),
            ("lockkeeper engine (baseline B)", &engine),
            ("floor: pod → claim Granted, least work", &floor),
            ("lockkeeper, pod → claim Granted", &pods),
            ("lockkeeper gate → gate", &gates),
        ],
    )?;
    Ok(())
}

/// Handoffs measured on the floor and on lockkeeper in turns, [`HANDOFF_BLOCK`] at a time,
/// so that both meet the same state of the machine (the API server's garbage collection,
/// etcd's compactions, other work): the ratio between them is what the target is set on.
async fn floor_and_lockkeeper(
    op: &operator::Operator,
    handoffs: usize,
    warmup: usize,
) -> Result<(Latency, Latency)> {
    let mut floor = handoff::PodHandoffs::start(op, "floor").await?;
    let mut lockkeeper = handoff::PodHandoffs::start(op, "handoff").await?;
    let mut done = 0;
    while done < handoffs + warmup {
        let block = HANDOFF_BLOCK.min(handoffs + warmup - done);
        floor.run(block).await?;
        lockkeeper.run(block).await?;
        done += block;
    }
    Ok((
        Latency::of(&floor.samples(warmup)),
        Latency::of(&lockkeeper.samples(warmup)),
    ))
}

/// Handoffs of one system before the other takes its turn.
const HANDOFF_BLOCK: usize = 50;

/// The requests counted since `before`, without watches (long-lived, not per claim).
fn requests_since(
    before: &BTreeMap<String, u64>,
    now: BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    now.into_iter()
        .filter(|(what, _)| !what.starts_with("watch "))
        .map(|(what, count)| {
            let earlier = before.get(&what).copied().unwrap_or_default();
            (what, count - earlier)
        })
        .filter(|(_, count)| *count > 0)
        .collect()
}

fn section(name: &str) {
    eprintln!("==> {name}");
}
