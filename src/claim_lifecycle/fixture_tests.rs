//! The claim pipeline's pure part, from the YAML cases in `fixtures.yaml`: the facts observed
//! from the objects ([`ClaimFacts::of`], [`LockFacts::of`], [`holders::holder_state`]), the
//! step [`decide`] picks, and the status [`status_after`] builds.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    case: String,
    claim: Value,
    lock: Option<Value>,
    pod: Option<Value>,
    job: Option<Value>,
    queue: Queue,
    /// A hold-back in force on the lock (another claim's grant ended abnormally), as the
    /// controller knows it.
    #[serde(default, rename = "lockHeldBackUntil")]
    lock_held_back_until: Option<Timestamp>,
    now: Timestamp,
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
enum Queue {
    NotQueued,
    Waiting {
        position: u32,
        sequence: i64,
    },
    #[serde(rename_all = "camelCase")]
    Granted {
        fencing_token: i64,
        sequence: i64,
    },
    Lost(String),
    SessionEnded,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Expect {
    queue: String,
    #[serde(default)]
    resume_job: bool,
    #[serde(default)]
    evict_holder: bool,
    requeue_after_seconds: Option<f64>,
    /// `None`: the status is left as it is.
    status: Option<ExpectedStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ExpectedStatus {
    phase: ClaimPhase,
    position: Option<u32>,
    sequence: Option<i64>,
    znode: Option<String>,
    fencing_token: Option<i64>,
    message: Option<String>,
    granted_at: Option<String>,
    released_at: Option<String>,
    held_back_until: Option<String>,
    condition: Option<ExpectedCondition>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedCondition {
    status: String,
    reason: String,
}

/// An object from its YAML, with the `apiVersion` and `kind` the cases leave out.
fn object<K: DeserializeOwned>(yaml: &Value, api_version: &str, kind: &str) -> K {
    let mut yaml = yaml.clone();
    let map = yaml.as_object_mut().expect("an object is a mapping");
    map.insert("apiVersion".into(), api_version.into());
    map.insert("kind".into(), kind.into());
    map.entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    serde_json::from_value(yaml).expect("the object parses")
}

fn queue_state(queue: &Queue, lock: &str) -> QueueState {
    let node = |sequence: i64| Node {
        sequence,
        path: format!("/lockkeeper/team/{lock}/_c_claim-lock-{sequence:010}"),
    };
    match queue {
        Queue::NotQueued => QueueState::NotQueued,
        Queue::Waiting { position, sequence } => QueueState::Waiting {
            position: *position,
            node: node(*sequence),
        },
        Queue::Granted {
            fencing_token,
            sequence,
        } => QueueState::Granted {
            fencing_token: *fencing_token,
            node: node(*sequence),
        },
        Queue::Lost(why) => QueueState::Lost(why.clone()),
        Queue::SessionEnded => QueueState::SessionEnded,
    }
}

fn set(time: &Option<Time>) -> String {
    if time.is_some() { "set" } else { "unset" }.to_string()
}

/// What the case's objects lead to; panics saying which case and what differs.
fn check(case: &Case) {
    let name = &case.case;
    let claim: LockClaim = object(&case.claim, "lockkeeper.dev/v1alpha1", "LockClaim");
    let lock: Option<DistributedLock> = case
        .lock
        .as_ref()
        .map(|lock| object(lock, "lockkeeper.dev/v1alpha1", "DistributedLock"));
    let pod: Option<Pod> = case.pod.as_ref().map(|pod| object(pod, "v1", "Pod"));
    let job: Option<Job> = case.job.as_ref().map(|job| object(job, "batch/v1", "Job"));

    let (holder, holder_check) =
        holders::holder_state(&claim, pod.as_ref(), job.as_ref(), None, case.now);
    let lock_facts = lock.as_ref().map(|lock| LockFacts {
        held_back: case.lock_held_back_until.map(|until| HeldBack {
            until,
            why: "claim other's grant ended (LeaseLapsed)".into(),
        }),
        ..LockFacts::of(lock)
    });
    let step = decide(
        &claim.spec,
        &ClaimFacts::of(&claim),
        lock_facts.as_ref(),
        &holder,
        &queue_state(&case.queue, &claim.spec.lock),
        case.now,
    );

    let expect = &case.expect;
    assert_eq!(
        format!("{:?}", step.queue),
        expect.queue,
        "{name}: queue action"
    );
    assert_eq!(step.resume_job, expect.resume_job, "{name}: Job resumed");
    assert_eq!(
        step.evict_holder, expect.evict_holder,
        "{name}: holder evicted"
    );
    let next_look = [step.requeue_after, holder_check]
        .into_iter()
        .flatten()
        .min();
    assert_eq!(
        next_look,
        expect.requeue_after_seconds.map(Duration::from_secs_f64),
        "{name}: when to look again"
    );
    let (Some(outcome), Some(wanted)) = (&step.outcome, &expect.status) else {
        assert!(
            step.outcome.is_none() && expect.status.is_none(),
            "{name}: status written: {:?}",
            step.outcome
        );
        return;
    };
    let current = claim.status.clone().unwrap_or_default();
    let status = status_after(&current, outcome, claim.metadata.generation, case.now);
    check_status(name, &status, wanted);
}

fn check_status(name: &str, status: &LockClaimStatus, wanted: &ExpectedStatus) {
    assert_eq!(status.phase, wanted.phase, "{name}: phase");
    let optional_fields = [
        (
            wanted.position.map(|v| v.to_string()),
            status.position.map(|v| v.to_string()),
            "position",
        ),
        (
            wanted.sequence.map(|v| v.to_string()),
            status.sequence.map(|v| v.to_string()),
            "sequence",
        ),
        (wanted.znode.clone(), status.znode.clone(), "znode"),
        (
            wanted.fencing_token.map(|v| v.to_string()),
            status.fencing_token.map(|v| v.to_string()),
            "fencingToken",
        ),
        (wanted.message.clone(), status.message.clone(), "message"),
        (
            wanted.granted_at.clone(),
            Some(set(&status.granted_at)),
            "grantedAt",
        ),
        (
            wanted.released_at.clone(),
            Some(set(&status.released_at)),
            "releasedAt",
        ),
        (
            wanted.held_back_until.clone(),
            Some(
                status
                    .held_back_until
                    .as_ref()
                    .map_or("unset".into(), |t| t.0.to_string()),
            ),
            "heldBackUntil",
        ),
    ];
    for (wanted, actual, field) in optional_fields {
        if let Some(wanted) = wanted {
            assert_eq!(actual.as_ref(), Some(&wanted), "{name}: {field}");
        }
    }
    if let Some(condition) = &wanted.condition {
        let granted = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Granted")
            .unwrap_or_else(|| panic!("{name}: the Granted condition"));
        assert_eq!(
            (granted.status.as_str(), granted.reason.as_str()),
            (condition.status.as_str(), condition.reason.as_str()),
            "{name}: the Granted condition"
        );
    }
}

#[test]
fn each_case_of_the_fixtures_is_decided_as_written() {
    // Through JSON: serde_yaml reads enums from YAML tags, the cases write them as maps.
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(include_str!("fixtures.yaml")).expect("fixtures.yaml parses");
    let cases: Vec<Case> = serde_json::from_value(serde_json::to_value(yaml).unwrap())
        .expect("each case has the fields of a case");
    assert!(cases.len() >= 15, "the fixtures hold every case");
    for case in &cases {
        check(case);
    }
}
