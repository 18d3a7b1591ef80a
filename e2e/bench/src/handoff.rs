//! Handoff latency through lockkeeper on one contended Mutex lock: from the holder's release
//! (its Pod turning Succeeded, or a gated pod's) to the next holder knowing it holds (its
//! claim read `Granted` on a watch, or its `lockkeeper gate` process exiting 0). The lock
//! always has waiters: before each release the next contender is made and waits until its
//! claim is queued, so that only the handoff is timed.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kube::ResourceExt;
use lockkeeper::resources::ClaimPhase;
use tokio::sync::mpsc;

use crate::operator::Operator;

/// Claims queued behind the holder at every release, so that a release always hands over.
const AHEAD: usize = 3;
const PATIENCE: Duration = Duration::from_secs(60);

/// Pod holders: release = the holder Pod's status set to Succeeded; known = the next claim
/// seen `Granted` by a watch through the API server. One contended lock, its handoffs taken
/// a block at a time (so that two systems can be measured in turns, under the same load).
pub struct PodHandoffs<'a> {
    op: &'a Operator,
    namespace: String,
    claims: mpsc::UnboundedReceiver<(Instant, lockkeeper::resources::LockClaim)>,
    made: usize,
    granted: HashSet<String>,
    /// Who holds the lock now.
    holder: String,
    timer: HandoffTimer,
}

impl<'a> PodHandoffs<'a> {
    /// A Mutex in `namespace`, held, with more claims queued behind the holder.
    pub async fn start(op: &'a Operator, namespace: &str) -> Result<Self> {
        op.mutex(namespace, "handoff").await?;
        let mut handoffs = PodHandoffs {
            op,
            namespace: namespace.to_string(),
            claims: op.watch_claims(namespace),
            made: 0,
            granted: HashSet::new(),
            holder: String::new(),
            timer: HandoffTimer::default(),
        };
        for _ in 0..AHEAD {
            handoffs.make_next().await?;
        }
        (_, handoffs.holder) = next_grant(&mut handoffs.claims, &mut handoffs.granted).await?;
        Ok(handoffs)
    }

    async fn make_next(&mut self) -> Result<String> {
        let name = format!("holder-{}", self.made);
        self.op
            .pod_with_claim(&self.namespace, &name, "handoff")
            .await?;
        self.made += 1;
        Ok(name)
    }

    /// `count` more handoffs, each timed from the holder's release to the next grant seen.
    pub async fn run(&mut self, count: usize) -> Result<()> {
        for _ in 0..count {
            let next = self.make_next().await?;
            // Queued before the release (nobody is granted meanwhile: the holder holds), so
            // what is timed is the handoff alone, not the queueing of a new claim beside it.
            wait_queued(&mut self.claims, &next).await?;
            self.timer.release();
            self.op.pod_succeeded(&self.namespace, &self.holder).await?;
            let (seen, holder) = next_grant(&mut self.claims, &mut self.granted).await?;
            self.timer.known(seen, &holder)?;
            self.holder = holder;
        }
        Ok(())
    }

    /// The handoffs timed, the first `warmup` left out.
    pub fn samples(mut self, warmup: usize) -> Vec<Duration> {
        self.timer
            .samples
            .split_off(warmup.min(self.timer.samples.len()))
    }
}

/// Times each handoff from the holder's release to the next holder knowing it holds.
#[derive(Default)]
struct HandoffTimer {
    released_at: Option<Instant>,
    samples: Vec<Duration>,
}

impl HandoffTimer {
    /// The holder is about to be released.
    fn release(&mut self) {
        self.released_at = Some(Instant::now());
    }

    /// `holder` knew it holds at `seen`: one sample, unless nobody was released yet.
    fn known(&mut self, seen: Instant, holder: &str) -> Result<()> {
        if let Some(released) = self.released_at {
            ensure!(
                seen >= released,
                "{holder} knew it holds before the previous holder was released"
            );
            self.samples.push(seen - released);
        }
        Ok(())
    }
}

async fn next_grant(
    claims: &mut mpsc::UnboundedReceiver<(Instant, lockkeeper::resources::LockClaim)>,
    granted: &mut HashSet<String>,
) -> Result<(Instant, String)> {
    loop {
        let (seen, claim) = tokio::time::timeout(PATIENCE, claims.recv())
            .await
            .context("no claim was granted for 60 s")?
            .context("the claim watch ended")?;
        let phase = claim.status.as_ref().map(|s| s.phase);
        if phase == Some(ClaimPhase::Granted) && granted.insert(claim.name_any()) {
            return Ok((seen, claim.name_any()));
        }
    }
}

/// Gated pods: release = the holder pod set to Succeeded; known = the next pod's `lockkeeper
/// gate` process (run as the kubelet would run the init container) exited 0.
pub async fn gate_handoffs(
    op: &Operator,
    namespace: &str,
    handoffs: usize,
    warmup: usize,
) -> Result<Vec<Duration>> {
    op.mutex(namespace, "gate-handoff").await?;
    let mut claims = op.watch_claims(namespace);
    let (exits, mut exited) = mpsc::unbounded_channel::<(Instant, String, bool)>();
    // Gates still waiting, by process id: stopped at the end.
    let waiting = Arc::new(Mutex::new(HashSet::new()));
    let mut made = 0;
    let spawn_gate = |name: String, pod: k8s_openapi::api::core::v1::Pod| -> Result<()> {
        let mut child = op
            .lockkeeper()
            .args(["gate", "--lock", "gate-handoff"])
            .env("POD_NAME", &name)
            .env("POD_NAMESPACE", namespace)
            .env("POD_UID", pod.uid().context("a pod uid")?)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start lockkeeper gate")?;
        let exits = exits.clone();
        let waiting = waiting.clone();
        waiting.lock().expect("gates lock").insert(child.id());
        std::thread::spawn(move || {
            let ok = child.wait().map(|s| s.success()).unwrap_or(false);
            let at = Instant::now();
            waiting.lock().expect("gates lock").remove(&child.id());
            let _ = exits.send((at, name, ok));
        });
        Ok(())
    };
    for _ in 0..AHEAD {
        let name = format!("gated-{made}");
        spawn_gate(name.clone(), op.pod(namespace, &name).await?)?;
        made += 1;
    }
    let mut timer = HandoffTimer::default();
    while timer.samples.len() < handoffs + warmup {
        let (seen, holder, ok) = tokio::time::timeout(PATIENCE, exited.recv())
            .await
            .context("no gate exited for 60 s")?
            .context("the gate exits channel closed")?;
        if !ok {
            bail!("lockkeeper gate for {holder} failed");
        }
        timer.known(seen, &holder)?;
        let name = format!("gated-{made}");
        spawn_gate(name.clone(), op.pod(namespace, &name).await?)?;
        // The new gate is queued before the release: what is timed is the handoff, not a
        // process starting and queueing its claim beside it.
        wait_queued(&mut claims, &format!("{name}-gate-handoff")).await?;
        made += 1;
        timer.release();
        op.pod_succeeded(namespace, &holder).await?;
    }
    stop_gates(&waiting, &mut exited).await;
    Ok(timer.samples.split_off(warmup))
}

/// Waits until `claim`, just made, is seen `Waiting`.
async fn wait_queued(
    claims: &mut mpsc::UnboundedReceiver<(Instant, lockkeeper::resources::LockClaim)>,
    claim: &str,
) -> Result<()> {
    loop {
        let (_, seen) = tokio::time::timeout(PATIENCE, claims.recv())
            .await
            .with_context(|| format!("{claim} was not queued within 60 s"))?
            .context("the claim watch ended")?;
        if seen.name_any() == claim
            && seen.status.as_ref().map(|s| s.phase) == Some(ClaimPhase::Waiting)
        {
            return Ok(());
        }
    }
}

/// Stops the gates still waiting (SIGTERM) and waits for them to exit.
async fn stop_gates(
    waiting: &Mutex<HashSet<u32>>,
    exited: &mut mpsc::UnboundedReceiver<(Instant, String, bool)>,
) {
    let pids: Vec<u32> = waiting
        .lock()
        .expect("gates lock")
        .iter()
        .copied()
        .collect();
    for pid in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    for _ in &pids {
        if tokio::time::timeout(PATIENCE, exited.recv()).await.is_err() {
            eprintln!("a lockkeeper gate did not stop within {PATIENCE:?}");
            return;
        }
    }
}
