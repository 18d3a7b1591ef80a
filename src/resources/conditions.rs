//! Standard conditions (`metav1.Condition`) in the resources' status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// A condition of `type_`; `lastTransitionTime` stays what it was in `previous` while the
/// condition's status holds, and is `now` when it changes.
pub fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    previous: &[Condition],
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: since,
        observed_generation: generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transition_time_moves_only_when_the_status_changes() {
        let before: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let now: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let held = condition(
            "Granted",
            "True",
            "Granted",
            "a".into(),
            &[],
            Some(1),
            before,
        );
        let still = condition(
            "Granted",
            "True",
            "Granted",
            "b".into(),
            std::slice::from_ref(&held),
            Some(2),
            now,
        );
        assert_eq!(still.last_transition_time, Time(before));
        assert_eq!(
            (still.message.as_str(), still.observed_generation),
            ("b", Some(2))
        );
        let ended = condition(
            "Granted",
            "False",
            "Released",
            "c".into(),
            &[held],
            Some(2),
            now,
        );
        assert_eq!(ended.last_transition_time, Time(now));
    }
}
