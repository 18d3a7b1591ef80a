//! Names of contender znodes, shared with Apache Curator and kazoo so that all three contend
//! on one path, and validation of lock paths and contender ids. Pure, no I/O.
//!
//! | lock            | lockkeeper and Curator                 | kazoo                      |
//! |-----------------|----------------------------------------|----------------------------|
//! | mutex           | `_c_<id>-lock-0000000007`              | `<hex>__lock__0000000007`  |
//! | read-write      | `_c_<id>-__READ__…` / `_c_<id>-__WRIT__…` | `<hex>__rlock__…` / `<hex>__lock__…` |
//! | semaphore       | `<path>/leases/_c_<id>-lease-…` (Curator `InterProcessSemaphoreV2`) | — |
//!
//! ZooKeeper appends the parent's 10-digit sequence counter to each name; queue order is
//! that number. The `_c_<id>-` prefix is Curator's "protected" form: it lets a client find
//! its own node again after a connection loss during create.

use crate::lock_rules::{LockKind, Mode};

pub const PROTECTED_PREFIX: &str = "_c_";
/// Subdirectory of a semaphore's path holding its leases, as Curator's InterProcessSemaphoreV2.
pub const SEMAPHORE_LEASES: &str = "leases";
/// Longest lock path accepted, in bytes. ZooKeeper caps a whole request at `jute.maxbuffer`
/// (1 MiB by default); this keeps a path far below that and readable in status fields.
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest contender id accepted (Kubernetes UIDs are 36 characters).
pub const MAX_ID_BYTES: usize = 128;

/// Markers that end a contender's name just before the sequence number, with the mode each
/// one means. Any other child of a lock path (Curator's `locks` / `leases` directories,
/// stray nodes) is not a contender.
const MARKERS: &[(&str, Mode)] = &[
    ("-lock-", Mode::Exclusive), // Curator InterProcessMutex, lockkeeper Mutex
    ("__WRIT__", Mode::Exclusive), // Curator InterProcessReadWriteLock writer
    ("__READ__", Mode::Shared),  // Curator InterProcessReadWriteLock reader
    ("__lock__", Mode::Exclusive), // kazoo Lock and WriteLock
    ("__rlock__", Mode::Shared), // kazoo ReadLock
    ("-lease-", Mode::Exclusive), // Curator InterProcessSemaphoreV2 lease
];

/// One contender found among a lock path's children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContenderNode {
    pub name: String,
    pub sequence: i64,
    pub mode: Mode,
    /// The id in a protected (`_c_<id>-…`) name: a claim UID for lockkeeper's nodes, a
    /// random UUID for Curator's. `None` for kazoo's and other unprotected names.
    pub owner: Option<String>,
}

impl ContenderNode {
    /// Parses a child name; `None` when it is not a contender.
    pub fn parse(name: &str) -> Option<ContenderNode> {
        let digits = name.bytes().rev().take_while(u8::is_ascii_digit).count();
        if digits < 10 {
            return None;
        }
        let (mut stem, digits) = name.split_at(name.len() - digits);
        let mut sequence: i64 = digits.parse().ok()?;
        let ends_with_marker =
            |stem: &str| MARKERS.iter().any(|(marker, _)| stem.ends_with(marker));
        // Past 2^31 creations under one parent ZooKeeper's counter wraps and prints a sign.
        if let Some(unsigned) = stem.strip_suffix('-')
            && ends_with_marker(unsigned)
        {
            stem = unsigned;
            sequence = -sequence;
        }
        let (marker, mode) = MARKERS.iter().find(|(marker, _)| stem.ends_with(marker))?;
        let before_marker = &stem[..stem.len() - marker.len()];
        let owner = before_marker
            .strip_prefix(PROTECTED_PREFIX)
            .map(|id| id.strip_suffix('-').unwrap_or(id))
            .filter(|id| !id.is_empty())
            .map(str::to_string);
        Some(ContenderNode {
            name: name.to_string(),
            sequence,
            mode: *mode,
            owner,
        })
    }
}

/// Contenders among `children`, in queue order.
pub fn queue_order(children: &[String]) -> Vec<ContenderNode> {
    let mut nodes: Vec<ContenderNode> = children
        .iter()
        .filter_map(|name| ContenderNode::parse(name))
        .collect();
    nodes.sort_by_key(|node| node.sequence);
    nodes
}

/// The name lockkeeper gives a new contender, before ZooKeeper appends the sequence.
pub fn contender_prefix(kind: LockKind, mode: Mode, id: &ContenderId) -> String {
    let marker = match (kind, mode) {
        (LockKind::Mutex, _) => "lock-",
        (LockKind::ReadWrite, Mode::Exclusive) => "__WRIT__",
        (LockKind::ReadWrite, Mode::Shared) => "__READ__",
        (LockKind::Semaphore { .. }, _) => "lease-",
    };
    format!("{PROTECTED_PREFIX}{}-{marker}", id.as_str())
}

/// The znode directory whose children queue for a lock at `path`.
pub fn contender_dir(kind: LockKind, path: &LockPath) -> String {
    match kind {
        LockKind::Semaphore { .. } => format!("{}/{SEMAPHORE_LEASES}", path.as_str()),
        LockKind::Mutex | LockKind::ReadWrite => path.as_str().to_string(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid lock path {path:?}: {reason}")]
    Path { path: String, reason: String },
    #[error("invalid contender id {id:?}: {reason}")]
    Id { id: String, reason: String },
}

/// A validated absolute ZooKeeper path of a lock.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LockPath(String);

impl LockPath {
    pub fn new(path: impl Into<String>) -> Result<Self, NameError> {
        let path = path.into();
        let fail = |reason: &str| {
            Err(NameError::Path {
                path: path.clone(),
                reason: reason.to_string(),
            })
        };
        if !path.starts_with('/') {
            return fail("it must start with /");
        }
        if path == "/" {
            return fail("the root cannot be a lock");
        }
        if path.len() > MAX_PATH_BYTES {
            return fail(&format!(
                "it is {} bytes long, the limit is {MAX_PATH_BYTES}",
                path.len()
            ));
        }
        if path.ends_with('/') {
            return fail("it must not end with /");
        }
        if path == "/zookeeper" || path.starts_with("/zookeeper/") {
            return fail("/zookeeper is reserved by ZooKeeper");
        }
        for segment in path[1..].split('/') {
            if segment.is_empty() {
                return fail("it has an empty segment (//)");
            }
            if segment == "." || segment == ".." {
                return fail("it has a . or .. segment");
            }
        }
        if let Some(bad) = path.chars().find(|c| is_forbidden_char(*c)) {
            return fail(&format!(
                "it contains the character {bad:?}, which ZooKeeper does not allow"
            ));
        }
        Ok(LockPath(path))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for LockPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Characters ZooKeeper's PathUtils rejects in a path.
fn is_forbidden_char(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{f000}'..='\u{f8ff}' | '\u{fff0}'..='\u{ffff}')
}

/// The id a contender carries in its node name: a claim's UID for the controller.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContenderId(String);

impl ContenderId {
    pub fn new(id: impl Into<String>) -> Result<Self, NameError> {
        let id = id.into();
        let fail = |reason: &str| {
            Err(NameError::Id {
                id: id.clone(),
                reason: reason.to_string(),
            })
        };
        if id.is_empty() {
            return fail("it is empty");
        }
        if id.len() > MAX_ID_BYTES {
            return fail(&format!(
                "it is {} bytes long, the limit is {MAX_ID_BYTES}",
                id.len()
            ));
        }
        if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return fail("only ASCII letters, digits, '-', '_' and '.' are allowed");
        }
        Ok(ContenderId(id))
    }

    /// A fresh random id, for contenders that are not claims.
    pub fn random() -> Self {
        ContenderId(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ContenderId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b8f0c2e-8a5e-4c55-9d2b-7f3c1e2a9b10";

    #[test]
    fn parses_the_names_of_every_peer() {
        let cases = [
            (
                format!("_c_{UID}-lock-0000000003"),
                3,
                Mode::Exclusive,
                Some(UID),
            ),
            (
                format!("_c_{UID}-__READ__0000000004"),
                4,
                Mode::Shared,
                Some(UID),
            ),
            (
                format!("_c_{UID}-__WRIT__0000000005"),
                5,
                Mode::Exclusive,
                Some(UID),
            ),
            (
                format!("_c_{UID}-lease-0000000006"),
                6,
                Mode::Exclusive,
                Some(UID),
            ),
            (
                "3f2a9c0d7e6b4a1f8c2d0e9b7a6f5c4d__lock__0000000007".to_string(),
                7,
                Mode::Exclusive,
                None,
            ),
            (
                "3f2a9c0d7e6b4a1f8c2d0e9b7a6f5c4d__rlock__0000000008".to_string(),
                8,
                Mode::Shared,
                None,
            ),
            (
                format!("_c_{UID}-lock--2147483647"),
                -2147483647,
                Mode::Exclusive,
                Some(UID),
            ),
        ];
        for (name, sequence, mode, owner) in cases {
            let node =
                ContenderNode::parse(&name).unwrap_or_else(|| panic!("{name} is a contender"));
            assert_eq!(
                (node.sequence, node.mode, node.owner.as_deref()),
                (sequence, mode, owner),
                "{name}"
            );
        }
    }

    #[test]
    fn other_children_are_not_contenders() {
        for name in [
            "leases",
            "locks",
            "lock-12",
            "_c_x-lock-",
            "_c_x-unknown-0000000001",
            "0000000001",
        ] {
            assert_eq!(ContenderNode::parse(name), None, "{name}");
        }
    }

    #[test]
    fn queue_order_is_sequence_order_across_peers() {
        let children = vec![
            format!("_c_{UID}-lock-0000000010"),
            "ab__lock__0000000002".to_string(),
            "locks".to_string(),
            format!("_c_{UID}-lock-0000000001"),
        ];
        let order: Vec<i64> = queue_order(&children).iter().map(|n| n.sequence).collect();
        assert_eq!(order, vec![1, 2, 10]);
    }

    #[test]
    fn our_prefix_round_trips_through_the_parser() {
        let id = ContenderId::new(UID).unwrap();
        for (kind, mode) in [
            (LockKind::Mutex, Mode::Exclusive),
            (LockKind::ReadWrite, Mode::Shared),
            (LockKind::ReadWrite, Mode::Exclusive),
            (LockKind::semaphore(2).unwrap(), Mode::Exclusive),
        ] {
            let name = format!("{}0000000042", contender_prefix(kind, mode, &id));
            let node = ContenderNode::parse(&name).unwrap();
            assert_eq!(
                (node.owner.as_deref(), node.mode, node.sequence),
                (Some(UID), mode, 42),
                "{name}"
            );
        }
    }

    #[test]
    fn semaphores_queue_under_leases_like_curator() {
        let path = LockPath::new("/lockkeeper/ns/pool").unwrap();
        assert_eq!(
            contender_dir(LockKind::semaphore(3).unwrap(), &path),
            "/lockkeeper/ns/pool/leases"
        );
        assert_eq!(contender_dir(LockKind::Mutex, &path), "/lockkeeper/ns/pool");
    }

    #[test]
    fn bad_paths_say_why() {
        for (path, why) in [
            ("relative/path", "start with /"),
            ("/", "root"),
            ("/a/", "end with /"),
            ("/a//b", "empty segment"),
            ("/a/../b", ". or .."),
            ("/zookeeper/quota", "reserved"),
            ("/a\u{1}b", "does not allow"),
        ] {
            let err = LockPath::new(path).unwrap_err().to_string();
            assert!(err.contains(why), "{path:?}: {err}");
        }
        let long = format!("/{}", "x".repeat(MAX_PATH_BYTES));
        assert!(
            LockPath::new(long)
                .unwrap_err()
                .to_string()
                .contains("the limit is 1024")
        );
        assert!(LockPath::new("/lockkeeper/default/migrations").is_ok());
    }

    #[test]
    fn bad_ids_say_why() {
        assert!(
            ContenderId::new("")
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        assert!(
            ContenderId::new("a/b")
                .unwrap_err()
                .to_string()
                .contains("only ASCII")
        );
        assert!(
            ContenderId::new("x".repeat(MAX_ID_BYTES + 1))
                .unwrap_err()
                .to_string()
                .contains("limit")
        );
        assert!(ContenderId::new(UID).is_ok());
    }
}
