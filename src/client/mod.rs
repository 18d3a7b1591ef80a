//! The clients that take locks for a workload through the Kubernetes API: `lockkeeper gate`
//! (an init container: waits for its pod's claims) and `lockkeeper run` (holds claims while a
//! command runs), on the claim client and the lock set they share.

pub mod claim_client;
pub mod gate;
pub mod lock_set;
pub mod run;
