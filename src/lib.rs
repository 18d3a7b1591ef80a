//! lockkeeper: distributed locks for Kubernetes workloads, kept in ZooKeeper.
//!
//! - [`lock_rules`]: who holds a lock, given its queue (pure).
//! - [`znode_name`]: contender node names shared with Curator and kazoo, path checks (pure).
//! - [`zookeeper`]: the lock engine, ZooKeeper I/O.
//! - [`cli`]: the `lockkeeper` command.

pub mod claim_lifecycle;
pub mod cli;
pub mod controller;
pub mod lock_rules;
pub mod resources;
pub mod znode_name;
pub mod zookeeper;
