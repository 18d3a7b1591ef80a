//! The workload of a chaos run's holder: it records `enter` with its fencing token, makes a
//! few requests to the fenced resource (fenced writes for an exclusive holder, reads for a
//! shared one), each recorded with its call and return times and the answer, then records
//! `leave`. On SIGTERM (`lockkeeper run` stops it when the grant ends) it stops, recording
//! `leave`: at once, or, as a holder slow to stop, after working on for
//! $FENCED_WORKER_TERM_GRACE_MS. Every time is CLOCK_MONOTONIC, shared by every process of the run.
//!
//! fenced-worker HISTORY RESOURCE LOCK HOLDER exclusive|shared REQUESTS GAP_MS [TOKEN]
//! (TOKEN defaults to $LOCKKEEPER_FENCING_TOKEN, as `lockkeeper run` sets it)

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lockkeeper_testkit::{ResourceClient, monotonic_nanos};

static TERMINATED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    TERMINATED.store(true, Ordering::SeqCst);
}

struct Args {
    history: String,
    resource: String,
    lock: String,
    holder: String,
    exclusive: bool,
    requests: u32,
    gap: Duration,
    token: i64,
    /// How long it works on after SIGTERM.
    term_grace: Duration,
}

fn args() -> Result<Args, String> {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: fenced-worker HISTORY RESOURCE LOCK HOLDER exclusive|shared REQUESTS GAP_MS [TOKEN]";
    if !(7..=8).contains(&all.len()) {
        return Err(usage.into());
    }
    let token = match all.get(7) {
        Some(token) => token.clone(),
        None => std::env::var("LOCKKEEPER_FENCING_TOKEN")
            .map_err(|_| "no TOKEN and no LOCKKEEPER_FENCING_TOKEN".to_string())?,
    };
    Ok(Args {
        history: all[0].clone(),
        resource: all[1].clone(),
        lock: all[2].clone(),
        holder: all[3].clone(),
        exclusive: match all[4].as_str() {
            "exclusive" => true,
            "shared" => false,
            other => return Err(format!("mode {other:?}: exclusive or shared")),
        },
        requests: all[5].parse().map_err(|_| usage.to_string())?,
        gap: Duration::from_millis(all[6].parse().map_err(|_| usage.to_string())?),
        token: token.parse().map_err(|_| format!("token {token:?}"))?,
        term_grace: match std::env::var("FENCED_WORKER_TERM_GRACE_MS") {
            Ok(ms) => Duration::from_millis(
                ms.parse()
                    .map_err(|_| format!("FENCED_WORKER_TERM_GRACE_MS {ms:?}"))?,
            ),
            Err(_) => Duration::ZERO,
        },
    })
}

fn main() {
    let args = match args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("fenced-worker: {message}");
            std::process::exit(2);
        }
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t) };
    if let Err(message) = work(&args) {
        eprintln!("fenced-worker: {message}");
        std::process::exit(1);
    }
    if TERMINATED.load(Ordering::SeqCst) {
        std::process::exit(143);
    }
}

fn work(args: &Args) -> Result<(), String> {
    let mut history = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&args.history)
        .map_err(|err| format!("{}: {err}", args.history))?;
    let (holder, lock, token) = (&args.holder, &args.lock, args.token);
    let mut record = |line: String| {
        // One write per line: O_APPEND keeps the lines of concurrent holders whole.
        history
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|err| format!("{}: {err}", args.history))
    };
    record(format!(
        r#"{{"ev":"enter","holder":"{holder}","lock":"{lock}","token":{token},"at":{}}}"#,
        monotonic_nanos()
    ))?;
    let mut resource = ResourceClient::connect(&args.resource).map_err(|err| err.to_string())?;
    let (verb, name) = if args.exclusive {
        ('W', "write")
    } else {
        ('R', "read")
    };
    let mut stop = Stop {
        grace: args.term_grace,
        seen: None,
    };
    for _ in 0..args.requests {
        if stop.due() {
            break;
        }
        let call = monotonic_nanos();
        let accepted = resource
            .request(verb, lock, token)
            .map_err(|err| err.to_string())?;
        let ret = monotonic_nanos();
        record(format!(
            r#"{{"ev":"{name}","holder":"{holder}","lock":"{lock}","token":{token},"call":{call},"ret":{ret},"accepted":{accepted}}}"#
        ))?;
        pause(args.gap, &mut stop);
    }
    record(format!(
        r#"{{"ev":"leave","holder":"{holder}","lock":"{lock}","at":{}}}"#,
        monotonic_nanos()
    ))
}

/// When to stop after SIGTERM: once `grace` has passed since it was first seen.
struct Stop {
    grace: Duration,
    seen: Option<Instant>,
}

impl Stop {
    fn due(&mut self) -> bool {
        if !TERMINATED.load(Ordering::SeqCst) {
            return false;
        }
        self.seen.get_or_insert_with(Instant::now).elapsed() >= self.grace
    }
}

/// Sleeps for `gap`, or less if the stop SIGTERM asked for is due.
fn pause(gap: Duration, stop: &mut Stop) {
    let step = Duration::from_millis(5);
    let mut slept = Duration::ZERO;
    while slept < gap && !stop.due() {
        std::thread::sleep(step);
        slept += step;
    }
}
