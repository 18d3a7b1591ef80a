//! lockkeeper: distributed locks for Kubernetes workloads, kept in ZooKeeper.
//!
//! - [`lock_rules`]: who holds a lock, given its queue (pure).
//! - [`zookeeper`]: the lock engine, ZooKeeper I/O, and the contender node names it shares
//!   with Curator and kazoo.
//! - [`resources`]: the DistributedLock and LockClaim custom resources.
//! - [`claim_lifecycle`]: what happens next to a claim, and what its holder's state is (pure).
//! - [`deadlock`]: the wait-for graph of holders, and the cycles in it (pure).
//! - [`lock_status`]: what a lock's status says (pure), with [`lock_history`], its last grants.
//! - [`lock_paths`]: where in ZooKeeper a namespace's locks may live (pure).
//! - [`controller`]: `lockkeeper controller`, Kubernetes I/O around the engine.
//! - [`client`]: `lockkeeper gate` and `lockkeeper run`, which make a claim and follow it
//!   through the Kubernetes API.
//! - [`cli`]: the `lockkeeper` command.
//! - [`plugin`]: `kubectl lock`, the kubectl plugin (`kubectl-lock`).

pub mod claim_lifecycle;
pub mod cli;
pub mod client;
pub mod controller;
pub mod deadlock;
pub mod lock_history;
pub mod lock_paths;
pub mod lock_rules;
pub mod lock_status;
pub mod plugin;
pub mod resources;
pub mod zookeeper;
