//! lockkeeper's benchmark (issue 6): handoff latency, throughput and scale of lockkeeper
//! against the raw ZooKeeper lock engine (baseline B) and Apache Curator (baseline A),
//! measured in one run on one ZooKeeper. Prints figures and writes results.json,
//! results.md and plots; asserts no target (see README.md, Performance).
//!
//! `make bench` builds the release binaries and runs it.

mod baseline;
mod handoff;
mod operator;
mod plot;
mod report;
mod stats;
mod throughput;

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use lockkeeper_testkit::ZooKeeperServer;

use crate::report::Results;
use crate::stats::Latency;

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
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let work = tempfile::tempdir()?;
    let zk = ZooKeeperServer::start()?;
    let mut results = Results::new(&args.out)?;

    section("handoff: Curator InterProcessMutex (two JVMs)");
    let curator = Latency::of(&baseline::curator_handoffs(
        &zk,
        work.path(),
        args.handoffs,
        args.warmup,
    )?);
    section("handoff: lockkeeper engine, used directly (two sessions)");
    let engine = Latency::of(
        &baseline::engine_handoffs(&zk, work.path(), args.handoffs, args.warmup).await?,
    );

    let mut op = operator::Operator::start(zk.connect_string(), work.path()).await?;
    for namespace in ["handoff", "gate", "throughput"] {
        op.namespace(namespace).await?;
    }
    section("handoff: lockkeeper, pod Succeeded → next claim Granted (watch through memkube)");
    op.start_controller("handoff", "/bench/lockkeeper")?;
    let pods =
        Latency::of(&handoff::pod_handoffs(&op, "handoff", args.handoffs, args.warmup).await?);
    op.stop_controller()?;
    section("handoff: lockkeeper gate, pod Succeeded → next gate exits");
    op.start_controller("gate", "/bench/lockkeeper")?;
    let gates =
        Latency::of(&handoff::gate_handoffs(&op, "gate", args.handoffs, args.warmup).await?);
    op.stop_controller()?;
    results.handoffs(&curator, &engine, &pods, &gates);

    section(&format!(
        "throughput: {} locks × {} claims",
        args.locks, args.claims_per_lock
    ));
    let engine_rate = baseline::engine_throughput(&zk, args.locks, args.claims_per_lock).await?;
    op.start_controller("throughput", "/bench/lockkeeper")?;
    let lockkeeper_rate =
        throughput::lockkeeper_throughput(&op, "throughput", args.locks, args.claims_per_lock)
            .await?;
    let memory = op.controller_memory()?;
    op.stop_controller()?;
    results.throughput(
        args.locks,
        args.claims_per_lock,
        engine_rate,
        lockkeeper_rate,
        memory,
    );

    op.stop().await?;
    results.write()?;
    plot::handoffs(
        &args.out.join("handoff-latency.png"),
        &[
            ("Curator InterProcessMutex", &curator),
            ("lockkeeper engine (baseline B)", &engine),
            ("lockkeeper, pod → claim Granted", &pods),
            ("lockkeeper gate → gate", &gates),
        ],
    )?;
    println!("{}", results.markdown());
    println!("written to {}", args.out.display());
    Ok(())
}

fn section(name: &str) {
    eprintln!("==> {name}");
}
