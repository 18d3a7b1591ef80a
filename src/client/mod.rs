//! The clients that take a lock for a workload through the Kubernetes API: `lockkeeper gate`
//! (an init container: waits for its pod's claim) and `lockkeeper run` (holds a claim while a
//! command runs), on the claim client they share.

pub mod claim_client;
pub mod gate;
pub mod run;
