//! lockkeeper: distributed locks for Kubernetes workloads, kept in ZooKeeper.
//!
//! - [`lock_rules`]: who holds a lock, given its queue (pure).
//! - [`znode_name`]: contender node names shared with Curator and kazoo, path checks (pure).
//! - [`zookeeper`]: the lock engine, ZooKeeper I/O.
//! - [`resources`]: the DistributedLock and LockClaim custom resources.
//! - [`claim_lifecycle`]: what happens next to a claim (pure).
//! - [`lock_status`]: what a lock's status says (pure).
//! - [`controller`]: `lockkeeper controller`, Kubernetes I/O around the engine.
//! - [`claim_client`], [`gate`], [`run`]: `lockkeeper gate` and `lockkeeper run`, which make a
//!   claim and follow it through the Kubernetes API.
//! - [`cli`]: the `lockkeeper` command.

pub mod claim_client;
pub mod claim_lifecycle;
pub mod cli;
pub mod controller;
pub mod gate;
pub mod lock_rules;
pub mod lock_status;
pub mod resources;
pub mod run;
pub mod znode_name;
pub mod zookeeper;
