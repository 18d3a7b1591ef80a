//! A fault-injecting proxy in front of a real kube-apiserver: the API faults of the end-to-end
//! tests sit here, between a client and the real server, rather than in an imitation of it.
//!
//! It listens for plain HTTP on 127.0.0.1 and forwards every request over TLS to the API
//! server, Authorization header and all (so RBAC still judges the client, not the proxy).
//! Faults, changed at any time: end every open watch; answer the next N requests of a verb and
//! resource with an error (500, 429 with Retry-After, 409), as a Kubernetes `Status`; delay
//! every request. It also counts requests by verb and resource.
//!
//! Hand-written on hyper because no maintained crate proxies the Kubernetes API with faults;
//! the verbs and resources are read from the request the way kube-apiserver's RequestInfo
//! does.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::config::Kubeconfig;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Answer the next `count` requests of `verb` on `resource` (any when `None`) with `code`.
/// `resource` is a plural resource name (`pods`), matching its subresources too, or
/// `resource/subresource` (`lockclaims/status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorRule {
    pub code: u16,
    pub count: u32,
    pub verb: Option<String>,
    pub resource: Option<String>,
}

/// What a request does, as kube-apiserver names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestKind {
    /// get, list, watch, create, update, patch, delete, deletecollection; or the HTTP method
    /// of a request outside the resource API (discovery, /version, /readyz).
    pub verb: String,
    /// `pods`, `lockclaims/status`; empty outside the resource API.
    pub resource: String,
}

impl RequestKind {
    /// Reads the verb and resource of a request the way kube-apiserver does.
    pub fn of(method: &Method, uri: &Uri) -> RequestKind {
        let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
        // /api/v1/… and /apis/GROUP/VERSION/…
        let rest = match segments.as_slice() {
            ["api", _version, rest @ ..] => rest,
            ["apis", _group, _version, rest @ ..] => rest,
            _ => &[][..],
        };
        // namespaces/NS/RESOURCE… is namespaced; namespaces and namespaces/NAME are not.
        let rest = match rest {
            ["namespaces", _namespace, resource, more @ ..] => {
                let mut all = vec![*resource];
                all.extend_from_slice(more);
                all
            }
            other => other.to_vec(),
        };
        let Some((resource, named)) = rest.split_first() else {
            return RequestKind {
                verb: method.as_str().to_lowercase(),
                resource: String::new(),
            };
        };
        let resource = match named.get(1) {
            Some(subresource) => format!("{resource}/{subresource}"),
            None => resource.to_string(),
        };
        let has_name = !named.is_empty();
        let watching = uri.query().is_some_and(|query| {
            query
                .split('&')
                .any(|pair| pair == "watch=true" || pair == "watch=1")
        });
        let verb = match *method {
            Method::GET if watching => "watch",
            Method::GET if has_name => "get",
            Method::GET => "list",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if has_name => "delete",
            Method::DELETE => "deletecollection",
            _ => method.as_str(),
        };
        RequestKind {
            verb: verb.to_lowercase(),
            resource,
        }
    }
}

impl ErrorRule {
    fn matches(&self, kind: &RequestKind) -> bool {
        let resource_matches = self.resource.as_deref().is_none_or(|wanted| {
            wanted == kind.resource
                || kind
                    .resource
                    .split_once('/')
                    .is_some_and(|(base, _)| base == wanted)
        });
        self.count > 0 && self.verb.as_deref().is_none_or(|v| v == kind.verb) && resource_matches
    }
}

#[derive(Default)]
struct Faults {
    rules: Mutex<Vec<ErrorRule>>,
    latency: Mutex<Duration>,
    answered: AtomicU64,
    counts: Mutex<BTreeMap<RequestKind, u64>>,
}

impl Faults {
    /// The injected error this request gets, if any (counting it down).
    fn error_for(&self, kind: &RequestKind) -> Option<u16> {
        let mut rules = self.rules.lock().expect("faults lock");
        let rule = rules.iter_mut().find(|rule| rule.matches(kind))?;
        rule.count -= 1;
        self.answered.fetch_add(1, Ordering::Relaxed);
        Some(rule.code)
    }
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;
type Upstream = Client<HttpsConnector<HttpConnector>, Incoming>;

struct Shared {
    faults: Faults,
    upstream: Upstream,
    upstream_authority: hyper::http::uri::Authority,
    /// Bumped to end every open watch.
    closer: watch::Sender<u64>,
}

/// The running proxy; stops when dropped.
pub struct ApiFaultProxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl ApiFaultProxy {
    /// Starts a proxy to the API server of `kubeconfig`'s current context, trusting its CA.
    pub async fn in_front_of(kubeconfig: &Path) -> std::io::Result<ApiFaultProxy> {
        let failed = |what: String| std::io::Error::other(what);
        let read = Kubeconfig::read_from(kubeconfig)
            .map_err(|err| failed(format!("{}: {err}", kubeconfig.display())))?;
        let config = kube::Config::from_custom_kubeconfig(read, &Default::default())
            .await
            .map_err(|err| failed(format!("{}: {err}", kubeconfig.display())))?;
        Self::start(
            &config.cluster_url.to_string(),
            &config.root_cert.unwrap_or_default(),
        )
        .await
    }

    /// Writes to `to` a copy of `kubeconfig` whose clusters' server is this proxy (plain
    /// HTTP, so without a CA); its users and their tokens stay.
    pub fn write_kubeconfig_through(&self, kubeconfig: &Path, to: &Path) -> std::io::Result<()> {
        let failed = |what: String| std::io::Error::other(what);
        let mut copy = Kubeconfig::read_from(kubeconfig)
            .map_err(|err| failed(format!("{}: {err}", kubeconfig.display())))?;
        for named in &mut copy.clusters {
            named.cluster = Some(kube::config::Cluster {
                server: Some(self.url()),
                ..Default::default()
            });
        }
        let yaml = serde_yaml::to_string(&copy).map_err(|err| failed(err.to_string()))?;
        std::fs::write(to, yaml)
    }

    /// Starts a proxy to the API server at `server` (`https://HOST:PORT`), trusting the CA
    /// certificates `roots` (DER) for it. Must run within a Tokio runtime, which its tasks
    /// live on.
    pub async fn start(server: &str, roots: &[Vec<u8>]) -> std::io::Result<ApiFaultProxy> {
        let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
        let uri: Uri = server
            .parse()
            .map_err(|err| invalid(format!("API server URL {server:?}: {err}")))?;
        let upstream_authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| invalid(format!("API server URL {server:?} has no host")))?;
        let mut trusted = rustls::RootCertStore::empty();
        for root in roots {
            trusted
                .add(root.clone().into())
                .map_err(|err| invalid(format!("API server CA: {err}")))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|err| invalid(format!("TLS: {err}")))?
        .with_root_certificates(trusted)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let upstream = Client::builder(TokioExecutor::new()).build(connector);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            faults: Faults::default(),
            upstream,
            upstream_authority,
            closer: watch::channel(0).0,
        });
        let accept = tokio::spawn(accept(listener, shared.clone()));
        Ok(ApiFaultProxy {
            address,
            shared,
            accept,
        })
    }

    /// The proxy's URL, `http://127.0.0.1:PORT`, for a kubeconfig's `server`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn inject(&self, rule: ErrorRule) {
        self.shared
            .faults
            .rules
            .lock()
            .expect("faults lock")
            .push(rule);
    }

    /// Delays every request from now on by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        *self.shared.faults.latency.lock().expect("faults lock") = latency;
    }

    /// Drops the error rules not used up yet, and the latency.
    pub fn reset(&self) {
        self.shared
            .faults
            .rules
            .lock()
            .expect("faults lock")
            .clear();
        self.set_latency(Duration::ZERO);
    }

    /// Ends every watch open now: its client sees the stream end and must watch again.
    pub fn close_watches(&self) {
        self.shared.closer.send_modify(|epoch| *epoch += 1);
    }

    /// How many requests got an injected error.
    pub fn errors_answered(&self) -> u64 {
        self.shared.faults.answered.load(Ordering::Relaxed)
    }

    /// Requests so far, by verb and resource.
    pub fn request_counts(&self) -> BTreeMap<RequestKind, u64> {
        self.shared
            .faults
            .counts
            .lock()
            .expect("faults lock")
            .clone()
    }
}

impl Drop for ApiFaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.close_watches();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(forward(request, &shared).await) }
            });
            // A client that hangs up mid-request is no fault of the proxy's.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(request: Request<Incoming>, shared: &Shared) -> Response<ProxyBody> {
    let kind = RequestKind::of(request.method(), request.uri());
    *shared
        .faults
        .counts
        .lock()
        .expect("faults lock")
        .entry(kind.clone())
        .or_default() += 1;
    let latency = *shared.faults.latency.lock().expect("faults lock");
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(code) = shared.faults.error_for(&kind) {
        return injected(code, &kind);
    }
    let (mut parts, body) = request.into_parts();
    let mut upstream_uri = Uri::builder()
        .scheme("https")
        .authority(shared.upstream_authority.clone());
    if let Some(path) = parts.uri.path_and_query() {
        upstream_uri = upstream_uri.path_and_query(path.clone());
    }
    parts.uri = upstream_uri.build().expect("a valid upstream URI");
    parts.headers.remove(hyper::header::HOST);
    let closed = shared.closer.subscribe();
    match shared
        .upstream
        .request(Request::from_parts(parts, body))
        .await
    {
        Ok(response) if kind.verb == "watch" => {
            let (parts, body) = response.into_parts();
            Response::from_parts(parts, until_closed(body, closed))
        }
        Ok(response) => response.map(BodyExt::boxed),
        Err(err) => status(
            StatusCode::BAD_GATEWAY,
            "ServiceUnavailable",
            &format!("the API fault proxy could not reach the API server: {err}"),
        ),
    }
}

/// A watch's body, ending when the proxy closes watches.
fn until_closed(body: Incoming, mut closed: watch::Receiver<u64>) -> ProxyBody {
    let closing = async move {
        let _ = closed.changed().await;
    };
    BodyExt::boxed(StreamBody::new(
        BodyStream::new(body).take_until(Box::pin(closing)),
    ))
}

/// The error the API server would answer, as a Kubernetes `Status`.
fn injected(code: u16, kind: &RequestKind) -> Response<ProxyBody> {
    let message = format!(
        "injected by the API fault proxy: {} {}",
        kind.verb, kind.resource
    );
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reason = match code {
        StatusCode::CONFLICT => "Conflict",
        StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
        _ => "InternalError",
    };
    let mut response = status(code, reason, &message);
    if code == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(hyper::header::RETRY_AFTER, 1.into());
    }
    response
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    Response::builder()
        .status(code)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_verbs_and_resources_as_the_api_server_does() {
        let claims = "/apis/lockkeeper.dev/v1alpha1/namespaces/team/lockclaims";
        let cases = [
            (Method::GET, claims.to_string(), "list", "lockclaims"),
            (
                Method::GET,
                format!("{claims}?watch=true&resourceVersion=5"),
                "watch",
                "lockclaims",
            ),
            (Method::GET, format!("{claims}/a"), "get", "lockclaims"),
            (
                Method::PATCH,
                format!("{claims}/a/status?force=true"),
                "patch",
                "lockclaims/status",
            ),
            (Method::POST, claims.to_string(), "create", "lockclaims"),
            (
                Method::DELETE,
                "/api/v1/namespaces/team/pods".into(),
                "deletecollection",
                "pods",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/team/pods/p".into(),
                "delete",
                "pods",
            ),
            (Method::GET, "/api/v1/pods?watch=1".into(), "watch", "pods"),
            // Namespaces themselves are cluster-scoped.
            (
                Method::GET,
                "/api/v1/namespaces/team".into(),
                "get",
                "namespaces",
            ),
            (
                Method::GET,
                "/api/v1/namespaces".into(),
                "list",
                "namespaces",
            ),
            // Outside the resource API: the method.
            (Method::GET, "/version".into(), "get", ""),
            (Method::GET, "/apis".into(), "get", ""),
        ];
        for (method, uri, verb, resource) in cases {
            let kind = RequestKind::of(&method, &uri.parse().unwrap());
            assert_eq!(
                (kind.verb.as_str(), kind.resource.as_str()),
                (verb, resource),
                "{method} {uri}"
            );
        }
    }

    #[test]
    fn a_rule_matches_its_resource_with_subresources_and_counts_down() {
        let faults = Faults::default();
        faults.rules.lock().unwrap().push(ErrorRule {
            code: 500,
            count: 2,
            verb: Some("patch".into()),
            resource: Some("lockclaims".into()),
        });
        let request = |verb: &str, resource: &str| RequestKind {
            verb: verb.into(),
            resource: resource.into(),
        };
        let status_patch = request("patch", "lockclaims/status");
        let pod_patch = request("patch", "pods");
        let claim_get = request("get", "lockclaims");
        assert_eq!(faults.error_for(&pod_patch), None);
        assert_eq!(faults.error_for(&claim_get), None);
        assert_eq!(faults.error_for(&status_patch), Some(500));
        assert_eq!(faults.error_for(&status_patch), Some(500));
        assert_eq!(faults.error_for(&status_patch), None, "used up");
        assert_eq!(faults.answered.load(Ordering::Relaxed), 2);
        // A rule for a subresource does not match the resource itself.
        faults.rules.lock().unwrap().push(ErrorRule {
            code: 409,
            count: 1,
            verb: None,
            resource: Some("lockclaims/status".into()),
        });
        assert_eq!(faults.error_for(&claim_get), None);
        assert_eq!(faults.error_for(&status_patch), Some(409));
    }
}
