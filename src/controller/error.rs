//! What a failed reconcile reports: the step that failed and why. The step is the label of
//! the error metric and decides nothing else: every failure is retried with the object's own
//! backoff ([`super::retries`]).

use crate::lock_paths::PathRefused;
use crate::resources::LockSpecError;
use crate::zookeeper::EngineError;

/// The step of a reconcile that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Reading a claim's holder Pod or Job from the API.
    ReadHolder,
    /// Queueing a claim's contender in ZooKeeper.
    Enqueue,
    /// Taking a claim's contender out of its queue.
    Dequeue,
    /// Resuming a suspended holder Job.
    ResumeJob,
    /// Stopping the holder of a grant that ended abnormally.
    EvictHolder,
    /// Writing a claim's status.
    WriteClaimStatus,
    /// Taking lockkeeper 0.1's finalizer off a claim.
    RemoveFinalizer,
    /// Reading a lock's queue from ZooKeeper.
    ReadQueue,
    /// Writing a lock's status.
    WriteLockStatus,
}

impl Step {
    /// The step's name as the metric labels it.
    pub fn label(self) -> &'static str {
        match self {
            Step::ReadHolder => "read_holder",
            Step::Enqueue => "enqueue",
            Step::Dequeue => "dequeue",
            Step::ResumeJob => "resume_job",
            Step::EvictHolder => "evict_holder",
            Step::WriteClaimStatus => "write_claim_status",
            Step::RemoveFinalizer => "remove_finalizer",
            Step::ReadQueue => "read_queue",
            Step::WriteLockStatus => "write_lock_status",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label().replace('_', " "))
    }
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("ZooKeeper: {0}")]
    Engine(#[from] EngineError),
    /// The lock's path is not one its namespace may use.
    #[error("{0}")]
    PathNotAllowed(#[from] PathRefused),
}

impl From<LockSpecError> for Cause {
    fn from(err: LockSpecError) -> Self {
        match err {
            LockSpecError::Invalid(err) => Cause::Engine(err),
            LockSpecError::PathNotAllowed(refused) => Cause::PathNotAllowed(refused),
        }
    }
}

/// A failed reconcile: `<step>: <cause>`.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {cause}")]
pub struct Error {
    pub step: Step,
    #[source]
    pub cause: Cause,
}

/// Names the step a fallible call belongs to: `api.get(..).await.during(Step::ReadHolder)?`.
pub trait During<T> {
    fn during(self, step: Step) -> Result<T, Error>;
}

impl<T, E: Into<Cause>> During<T> for Result<T, E> {
    fn during(self, step: Step) -> Result<T, Error> {
        self.map_err(|cause| Error {
            step,
            cause: cause.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_says_its_step_and_its_cause() {
        let failed: Result<(), EngineError> = Err(EngineError::SessionExpired);
        let error = failed.during(Step::Enqueue).unwrap_err();
        assert_eq!(error.step.label(), "enqueue");
        assert_eq!(
            error.to_string(),
            format!("enqueue: ZooKeeper: {}", EngineError::SessionExpired)
        );
        assert_eq!(Step::WriteClaimStatus.to_string(), "write claim status");
    }
}
