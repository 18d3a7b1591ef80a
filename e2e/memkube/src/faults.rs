//! Fault injection, controlled at run time through `POST /memkube/{action}` or in-process:
//! close every open watch, answer the next N matching requests with an error, add latency,
//! compact history so that resumes get 410 Gone.

use std::sync::Mutex;
use std::time::Duration;

use axum::http::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api_error::ApiError;
use crate::store::Store;

/// The watch closer's value once the server stops: watches end as soon as they open.
pub const WATCHES_STOPPED: u64 = u64::MAX;

/// Answer the next `count` requests matching `verb` / `resource` (any when absent) with `code`
/// (500, 429 with Retry-After, or 409).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ErrorRule {
    pub code: u16,
    pub count: u32,
    #[serde(default)]
    pub verb: Option<String>,
    #[serde(default)]
    pub resource: Option<String>,
}

pub struct Faults {
    rules: Mutex<Vec<ErrorRule>>,
    /// Errors answered so far, so a test can show its faults happened.
    answered: std::sync::atomic::AtomicU64,
    latency: Mutex<Duration>,
    closer: tokio::sync::watch::Sender<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            rules: Mutex::default(),
            answered: Default::default(),
            latency: Mutex::default(),
            closer: tokio::sync::watch::channel(0).0,
        }
    }
}

impl Faults {
    /// Called before each resource request: waits the injected latency, then returns the
    /// injected error the request must get, if any.
    pub async fn before(&self, verb: &str, resource: &str) -> Option<ApiError> {
        let latency = *self.latency.lock().expect("faults lock");
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut rules = self.rules.lock().expect("faults lock");
        let rule = rules.iter_mut().find(|rule| {
            rule.count > 0
                && rule.verb.as_deref().is_none_or(|v| v == verb)
                && rule.resource.as_deref().is_none_or(|r| r == resource)
        })?;
        rule.count -= 1;
        self.answered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let message = format!("memkube injected fault for {verb} {resource}");
        Some(match rule.code {
            429 => ApiError::too_many_requests(message),
            409 => ApiError {
                code: 409,
                reason: "Conflict",
                message,
                details: None,
            },
            code => ApiError {
                code,
                reason: "InternalError",
                message,
                details: None,
            },
        })
    }

    pub fn inject(&self, rule: ErrorRule) {
        self.rules.lock().expect("faults lock").push(rule);
    }

    /// How many requests got an injected error.
    pub fn errors_answered(&self) -> u64 {
        self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_latency(&self, latency: Duration) {
        *self.latency.lock().expect("faults lock") = latency;
    }

    /// Drops the error rules and the latency.
    pub fn reset(&self) {
        self.rules.lock().expect("faults lock").clear();
        self.set_latency(Duration::ZERO);
    }

    /// Ends every watch open now (clients see the stream end and must resume).
    pub fn close_watches(&self) {
        // Saturating: once stopped, the value stays `WATCHES_STOPPED`.
        self.closer
            .send_modify(|epoch| *epoch = epoch.saturating_add(1));
    }

    /// Ends every watch open now and every one opened later at once (the server stops:
    /// a client that resumes its watch on a kept-alive connection must not hold it open).
    pub fn stop_watches(&self) {
        self.closer.send_replace(WATCHES_STOPPED);
    }

    pub fn watch_closer(&self) -> tokio::sync::watch::Receiver<u64> {
        self.closer.subscribe()
    }

    /// The admin endpoint: `POST /memkube/close-watches`, `/compact`, `/errors` (an
    /// [`ErrorRule`] as JSON), `/latency` (`{"millis": N}`), `/reset`.
    pub fn admin(
        &self,
        store: &Store,
        method: &Method,
        action: &str,
        body: &[u8],
    ) -> Result<Value, ApiError> {
        if method != Method::POST {
            return Err(ApiError::method_not_allowed(
                "memkube's admin actions are POSTs",
            ));
        }
        let parse = |what: &str| -> Result<Value, ApiError> {
            serde_json::from_slice(body)
                .map_err(|err| ApiError::bad_request(format!("{what}: {err}")))
        };
        match action {
            "close-watches" => self.close_watches(),
            "compact" => store.compact(),
            "errors" => {
                let rule: ErrorRule = serde_json::from_value(parse("an error rule")?)
                    .map_err(|err| ApiError::bad_request(format!("an error rule: {err}")))?;
                self.inject(rule);
            }
            "latency" => {
                let millis = parse("a latency")?["millis"]
                    .as_u64()
                    .ok_or_else(|| ApiError::bad_request("latency needs {\"millis\": N}"))?;
                self.set_latency(Duration::from_millis(millis));
            }
            "reset" => self.reset(),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown admin action {other:?}"
                )));
            }
        }
        Ok(json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "message": action}))
    }
}
