//! Where in ZooKeeper a namespace's locks may live (pure).
//!
//! A lock's default path is `<root>/<namespace>/<name>`. `spec.zookeeper.path` may name
//! another, to share the lock with clients outside Kubernetes; but whoever may create a
//! DistributedLock in one namespace must not thereby join, hold or break the queues of another
//! namespace, nor those of any other client of the ensemble. So a lock's path must lie in its
//! namespace's own part, below `<root>/<namespace>/`, or under a prefix the installation
//! allows that namespace (`--allowed-lock-path NAMESPACE=PREFIX`, `*` for every namespace;
//! the chart's `zookeeper.allowedLockPaths`). The installation's root and its own nodes
//! (`<root>/_leader`, `<root>/_installation`) are never a lock's, whatever is allowed.

use std::fmt;
use std::str::FromStr;

/// A prefix the installation allows beyond a namespace's own part: a value of
/// `--allowed-lock-path`, `NAMESPACE=PREFIX` or `*=PREFIX`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedPrefix {
    /// The namespace whose locks may use the prefix; `None` (`*`) for every namespace.
    pub namespace: Option<String>,
    /// An absolute path; `/` allows every path.
    pub prefix: String,
}

impl AllowedPrefix {
    fn allows(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }
}

impl FromStr for AllowedPrefix {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let Some((namespace, prefix)) = value.split_once('=') else {
            return Err(format!(
                "{value:?} is not NAMESPACE=PREFIX (NAMESPACE may be *), e.g. team-a=/services/billing"
            ));
        };
        let namespace = match namespace {
            "*" => None,
            name if is_namespace_name(name) => Some(name.to_string()),
            name => {
                return Err(format!(
                    "{name:?} in {value:?} is neither * nor a namespace name"
                ));
            }
        };
        if prefix != "/" {
            if !prefix.starts_with('/') || prefix.ends_with('/') {
                return Err(format!(
                    "the prefix {prefix:?} in {value:?} must be an absolute path without a trailing / (or / for every path)"
                ));
            }
            if has_bad_segment(prefix) {
                return Err(format!(
                    "the prefix {prefix:?} in {value:?} has an empty, . or .. segment"
                ));
            }
        }
        Ok(AllowedPrefix {
            namespace,
            prefix: prefix.to_string(),
        })
    }
}

impl fmt::Display for AllowedPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={}",
            self.namespace.as_deref().unwrap_or("*"),
            self.prefix
        )
    }
}

/// Where locks live in ZooKeeper for one installation: the root of default paths, and the
/// prefixes allowed beyond a namespace's own part.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockPaths {
    /// Without a trailing `/` (empty for the root `/`).
    root: String,
    allowed: Vec<AllowedPrefix>,
}

impl LockPaths {
    pub fn new(root: &str, allowed: Vec<AllowedPrefix>) -> Self {
        LockPaths {
            root: root.trim_end_matches('/').to_string(),
            allowed,
        }
    }

    /// A lock's path when its spec names none: `<root>/<namespace>/<name>`.
    pub fn default_path(&self, namespace: &str, name: &str) -> String {
        format!("{}/{namespace}/{name}", self.root)
    }

    /// The namespace's own part of ZooKeeper: its locks may live anywhere below it.
    pub fn own_part(&self, namespace: &str) -> String {
        format!("{}/{namespace}", self.root)
    }

    /// Whether a lock of `namespace` may live at `path` (`spec.zookeeper.path`).
    pub fn check(&self, namespace: &str, path: &str) -> Result<(), PathRefused> {
        let refused = |why| {
            Err(PathRefused {
                path: path.to_string(),
                namespace: namespace.to_string(),
                why,
            })
        };
        if !path.starts_with('/') || path == "/" || path.ends_with('/') || has_bad_segment(path) {
            return refused(Why::Malformed);
        }
        if self.is_installations_own(path) {
            return refused(Why::Installations {
                root: self.root_or_slash().to_string(),
            });
        }
        let own = self.own_part(namespace);
        if (path != own && is_under(path, &own))
            || self
                .allowed
                .iter()
                .any(|allowed| allowed.allows(namespace) && is_under(path, &allowed.prefix))
        {
            return Ok(());
        }
        refused(Why::Outside {
            own,
            allowed: self
                .allowed
                .iter()
                .filter(|allowed| allowed.allows(namespace))
                .map(|allowed| allowed.prefix.clone())
                .collect(),
        })
    }

    fn root_or_slash(&self) -> &str {
        if self.root.is_empty() {
            "/"
        } else {
            &self.root
        }
    }

    /// The root itself, and its nodes that no namespace can be named (`_leader`,
    /// `_installation`, and whatever else starts with `_`).
    fn is_installations_own(&self, path: &str) -> bool {
        if path == self.root_or_slash() {
            return true;
        }
        path.strip_prefix(&self.root)
            .and_then(|below| below.strip_prefix('/'))
            .is_some_and(|below| below.starts_with('_'))
    }
}

/// Whether `path` is `prefix` or below it, on whole segments: `/a/b` is under `/a/b` and `/a`,
/// not under `/a/bc`; everything is under `/`.
pub fn is_under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// An empty (`//`), `.` or `..` segment: a path ZooKeeper refuses, and that a textual prefix
/// match must not be fooled by (`/lockkeeper/a/../b`).
fn has_bad_segment(path: &str) -> bool {
    path.split('/')
        .skip(1)
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
}

/// A Kubernetes namespace name: a DNS label.
fn is_namespace_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A lock path its namespace may not use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct PathRefused {
    pub path: String,
    pub namespace: String,
    pub why: Why,
}

/// Why a path is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// Not an absolute path of well-formed segments.
    Malformed,
    /// The installation's root, or one of its own nodes below it.
    Installations { root: String },
    /// Outside the namespace's own part and every prefix allowed to it.
    Outside { own: String, allowed: Vec<String> },
}

impl PathRefused {
    fn message(&self) -> String {
        let (path, namespace) = (&self.path, &self.namespace);
        match &self.why {
            Why::Malformed => format!(
                "spec.zookeeper.path {path} is not allowed: it must be an absolute path without empty, . or .. segments"
            ),
            Why::Installations { root } => format!(
                "spec.zookeeper.path {path} is not allowed: it is the lockkeeper installation's root {root} or one of its own nodes"
            ),
            Why::Outside { own, allowed } => {
                let others = match allowed.as_slice() {
                    [] => "is under no prefix allowed to it".to_string(),
                    prefixes => format!(
                        "is under none of the prefixes allowed to it ({})",
                        prefixes.join(", ")
                    ),
                };
                format!(
                    "spec.zookeeper.path {path} is not allowed: it is outside namespace {namespace}'s part of ZooKeeper ({own}/…) and {others}; an administrator may allow a prefix with the controller's --allowed-lock-path {namespace}=PREFIX (Helm value zookeeper.allowedLockPaths)"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(values: &[&str]) -> Vec<AllowedPrefix> {
        values.iter().map(|v| v.parse().unwrap()).collect()
    }

    fn paths(values: &[&str]) -> LockPaths {
        LockPaths::new("/lockkeeper", allowed(values))
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(is_under("/a/b", "/a/b"));
        assert!(is_under("/a/b/c", "/a/b"));
        assert!(is_under("/a/b/c", "/a"));
        assert!(!is_under("/a/bc", "/a/b"));
        assert!(!is_under("/a", "/a/b"));
        assert!(!is_under("/b/a", "/a"));
        assert!(is_under("/anything/at/all", "/"));
    }

    #[test]
    fn a_namespace_may_use_its_own_part_and_nothing_else_by_default() {
        let paths = paths(&[]);
        assert_eq!(paths.default_path("a", "db"), "/lockkeeper/a/db");
        assert_eq!(paths.check("a", "/lockkeeper/a/db"), Ok(()));
        assert_eq!(paths.check("a", "/lockkeeper/a/team/db/deep"), Ok(()));
        for path in [
            "/lockkeeper/b/prod",
            "/lockkeeper/ab/prod",
            "/lockkeeper/a",
            "/services/billing/ledger",
            "/lockkeeper-a/db",
        ] {
            let refused = paths.check("a", path).unwrap_err();
            assert!(
                matches!(&refused.why, Why::Outside { own, allowed } if own == "/lockkeeper/a" && allowed.is_empty()),
                "{path}: {refused:?}"
            );
        }
    }

    #[test]
    fn dot_dot_and_empty_segments_are_refused_before_any_prefix_matches() {
        let paths = paths(&["a=/services"]);
        for path in [
            "/lockkeeper/a/../b/prod",
            "/lockkeeper/a/./db",
            "/lockkeeper/a//db",
            "/services/../lockkeeper/b/prod",
            "/lockkeeper/a/db/",
            "lockkeeper/a/db",
            "/",
            "",
        ] {
            assert_eq!(
                paths.check("a", path).map_err(|r| r.why),
                Err(Why::Malformed),
                "{path}"
            );
        }
    }

    #[test]
    fn an_allowed_prefix_counts_for_its_namespace_or_for_all_with_a_star() {
        let paths = paths(&["a=/services/billing", "*=/shared"]);
        assert_eq!(paths.check("a", "/services/billing"), Ok(()));
        assert_eq!(paths.check("a", "/services/billing/ledger"), Ok(()));
        assert!(paths.check("a", "/services/billingx/ledger").is_err());
        assert!(paths.check("b", "/services/billing/ledger").is_err());
        assert_eq!(paths.check("a", "/shared/x"), Ok(()));
        assert_eq!(paths.check("b", "/shared/x"), Ok(()));
        // Another namespace's part is refused unless allowed in so many words.
        assert!(paths.check("a", "/lockkeeper/b/prod").is_err());
        let paths = self::paths(&["a=/lockkeeper/b"]);
        assert_eq!(paths.check("a", "/lockkeeper/b/prod"), Ok(()));
        assert!(paths.check("c", "/lockkeeper/b/prod").is_err());
    }

    #[test]
    fn the_installations_own_nodes_are_refused_even_under_an_allowed_prefix() {
        let paths = paths(&["*=/"]);
        assert_eq!(paths.check("a", "/services/x"), Ok(()));
        assert_eq!(paths.check("a", "/lockkeeper/b/prod"), Ok(()));
        for path in [
            "/lockkeeper",
            "/lockkeeper/_leader",
            "/lockkeeper/_installation",
            "/lockkeeper/_leader/x",
        ] {
            assert_eq!(
                paths.check("a", path).map_err(|r| r.why),
                Err(Why::Installations {
                    root: "/lockkeeper".into()
                }),
                "{path}"
            );
        }
        // A root of `/`: namespaces' parts are `/<namespace>`.
        let paths = LockPaths::new("/", vec![]);
        assert_eq!(paths.default_path("a", "db"), "/a/db");
        assert_eq!(paths.check("a", "/a/db"), Ok(()));
        assert!(paths.check("a", "/b/db").is_err());
        assert!(paths.check("a", "/_leader").is_err());
    }

    #[test]
    fn the_refusal_says_what_is_allowed_and_how_to_allow_more() {
        let refused = paths(&[]).check("a", "/lockkeeper/b/prod").unwrap_err();
        assert_eq!(
            refused.to_string(),
            "spec.zookeeper.path /lockkeeper/b/prod is not allowed: it is outside namespace a's part of ZooKeeper (/lockkeeper/a/…) and is under no prefix allowed to it; an administrator may allow a prefix with the controller's --allowed-lock-path a=PREFIX (Helm value zookeeper.allowedLockPaths)"
        );
        let refused = paths(&["a=/x", "*=/y", "b=/z"])
            .check("a", "/w")
            .unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("and is under none of the prefixes allowed to it (/x, /y);"),
            "{refused}"
        );
    }

    #[test]
    fn allowed_prefixes_parse_from_namespace_equals_prefix() {
        assert_eq!(
            "team-a=/services/billing".parse(),
            Ok(AllowedPrefix {
                namespace: Some("team-a".into()),
                prefix: "/services/billing".into()
            })
        );
        let all: AllowedPrefix = "*=/".parse().unwrap();
        assert_eq!((all.namespace, all.prefix.as_str()), (None, "/"));
        assert_eq!(
            "*=/a/b".parse::<AllowedPrefix>().unwrap().to_string(),
            "*=/a/b"
        );
        for bad in [
            "/services",
            "=/services",
            "Team=/services",
            "a=services",
            "a=/services/",
            "a=/services/../x",
            "a=",
        ] {
            assert!(bad.parse::<AllowedPrefix>().is_err(), "{bad}");
        }
    }
}
