//! An in-memory fake Kubernetes apiserver for benchmarks: HTTPS on 127.0.0.1 with a self-signed
//! certificate, and a kubeconfig pointing at it, so the release agent and operator run against
//! it unchanged.
//!
//! Objects are JSON values stored by (collection, namespace, name), where the collection is the
//! API path of the kind without namespace (`/api/v1/pods`,
//! `/apis/kubetune.dev/v1alpha1/tuningpolicies`); one resourceVersion counter covers all of
//! them. What the kubetune binaries call is served:
//!
//! * GET list (one page: `limit`/`continue` are ignored) and GET `watch=true` from a
//!   resourceVersion (kube-runtime's default list-then-watch; no `sendInitialEvents`, no
//!   bookmarks — the watcher does not need them), both filtered by namespace, `labelSelector`
//!   (`k=v`, `k==v`, `k!=v`, `k`, `!k`) and `fieldSelector` (`path=value`, `path!=value` over
//!   the object's JSON, e.g. `spec.nodeName`, `metadata.name`); GET one.
//! * POST create (`generateName` honoured), PUT replace, DELETE, PATCH: server-side apply
//!   (`application/apply-patch+yaml`, whose body kube sends as JSON) creates or merges — the
//!   body's top-level fields replace the stored ones, `metadata` labels and annotations merge
//!   (one field manager per object, as in these benches); merge patches (JSON merge patch,
//!   strategic merge treated alike) merge with `null` deleting. Writes to the `status`
//!   subresource change only `status`.
//! * Anything else (discovery included) answers 404, which the binaries handle.
//!
//! Every write is recorded with the [`Instant`] its body arrived ([`FakeApiserver::writes`]), so
//! a benchmark can ask when the first write of some kind showing some value came in.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response};
use serde_json::{json, Value};
use tokio_rustls::rustls;

/// Errors starting the fake apiserver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Socket or runtime.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The self-signed certificate.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// The TLS configuration.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
}

/// One write (POST, PUT, PATCH, DELETE) as received.
#[derive(Debug, Clone)]
pub struct Write {
    /// When its body had arrived.
    pub at: Instant,
    /// HTTP method.
    pub method: String,
    /// Collection, e.g. `/apis/kubetune.dev/v1alpha1/listenerreports`.
    pub collection: String,
    /// Namespace (empty: cluster-scoped).
    pub namespace: String,
    /// Object name (empty for a create without a name).
    pub name: String,
    /// Subresource (`status`), if any.
    pub subresource: Option<String>,
    /// The request body (`null` when empty or not JSON).
    pub body: Value,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    collection: String,
    namespace: String,
    name: String,
}

struct WatchEvent {
    rv: u64,
    kind: &'static str,
    key: Key,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    uids: u64,
    objects: BTreeMap<Key, Value>,
    events: Vec<WatchEvent>,
    writes: Vec<Write>,
}

impl Store {
    /// Stores `obj` under `key` with the next resourceVersion and notes the watch event.
    fn put(&mut self, key: Key, mut obj: Value, kind: &'static str) -> Value {
        self.rv += 1;
        let meta = &mut obj["metadata"];
        meta["resourceVersion"] = self.rv.to_string().into();
        meta["name"] = key.name.clone().into();
        if !key.namespace.is_empty() {
            meta["namespace"] = key.namespace.clone().into();
        }
        if meta.get("uid").is_none_or(Value::is_null) {
            self.uids += 1;
            meta["uid"] = format!("00000000-0000-4000-8000-{:012x}", self.uids).into();
        }
        if meta.get("generation").is_none_or(Value::is_null) {
            meta["generation"] = 1.into();
        }
        self.events.push(WatchEvent {
            rv: self.rv,
            kind,
            key: key.clone(),
            object: obj.clone(),
        });
        if kind == "DELETED" {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key, obj.clone());
        }
        obj
    }
}

struct Shared {
    store: Mutex<Store>,
    /// The latest resourceVersion, for the watches to wake on.
    changed: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fake apiserver, serving on its own runtime until dropped.
pub struct FakeApiserver {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: String,
    _rt: tokio::runtime::Runtime,
}

impl FakeApiserver {
    /// Starts serving on an ephemeral port of 127.0.0.1.
    pub fn start() -> Result<FakeApiserver, Error> {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changed: tokio::sync::watch::channel(0).0,
        });
        let s = shared.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, s) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| handle(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok(FakeApiserver {
            shared,
            addr,
            ca_pem: cert.pem(),
            _rt: rt,
        })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The serving certificate (PEM), self-signed for 127.0.0.1.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes a kubeconfig for this server (token auth, any token) to `dir/kubeconfig`.
    pub fn write_kubeconfig(&self, dir: &Path) -> std::io::Result<PathBuf> {
        use base64::Engine as _;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster:\n    server: https://{}\n    certificate-authority-data: {ca}\nusers:\n- name: bench\n  user:\n    token: bench\ncontexts:\n- name: bench\n  context:\n    cluster: bench\n    user: bench\ncurrent-context: bench\n",
                self.addr
            ),
        )?;
        Ok(path)
    }

    /// Creates or replaces `obj` in `collection` (its namespace and name from its metadata), as
    /// if a client had written it (watchers see it; it is not recorded as a write).
    pub fn insert(&self, collection: &str, obj: Value) {
        let key = Key {
            collection: collection.trim_end_matches('/').to_string(),
            namespace: str_at(&obj, "metadata.namespace").to_string(),
            name: str_at(&obj, "metadata.name").to_string(),
        };
        let mut st = self.shared.store();
        let kind = if st.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.put(key, obj, kind);
        let rv = st.rv;
        drop(st);
        self.shared.changed.send_replace(rv);
    }

    /// The stored object, if any (`namespace` empty for cluster-scoped kinds).
    pub fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = Key {
            collection: collection.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        self.shared.store().objects.get(&key).cloned()
    }

    /// Every write so far, in arrival order.
    pub fn writes(&self) -> Vec<Write> {
        self.shared.store().writes.clone()
    }

    /// The writes so far that `keep` selects (cheaper than [`Self::writes`] when polling).
    pub fn writes_where(&self, keep: impl Fn(&Write) -> bool) -> Vec<Write> {
        let st = self.shared.store();
        st.writes.iter().filter(|w| keep(w)).cloned().collect()
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn respond(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .expect("a valid response")
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    respond(
        code,
        &json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "reason": reason, "code": code, "message": message}),
    )
}

/// A request path, parsed: collection, namespace, name, subresource.
#[derive(Debug, PartialEq)]
struct Target {
    collection: String,
    namespace: String,
    name: Option<String>,
    sub: Option<String>,
}

fn target(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (format!("/api/{v}"), rest),
        ["apis", g, v, rest @ ..] => (format!("/apis/{g}/{v}"), rest),
        _ => return None,
    };
    let own = |s: Option<&&str>| s.map(|s| s.to_string());
    let (namespace, plural, name, sub) = match rest {
        [] => return None,
        ["namespaces", ns, plural, more @ ..] => {
            (ns.to_string(), *plural, more.first(), more.get(1))
        }
        [plural, more @ ..] => (String::new(), *plural, more.first(), more.get(1)),
    };
    Some(Target {
        collection: format!("{prefix}/{plural}"),
        namespace,
        name: own(name),
        sub: own(sub),
    })
}

/// `%XX` and `+` decoding of one query value.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let (mut out, mut i) = (Vec::with_capacity(b.len()), 0);
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or(""), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// The string at a dotted path of `v` (`""` when absent or not a string).
fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// What a list or watch selects: namespace (empty: all), label and field requirements.
#[derive(Clone)]
struct Selector {
    namespace: String,
    labels: Vec<(String, Option<String>, bool)>,
    fields: Vec<(String, String, bool)>,
}

impl Selector {
    fn new(namespace: &str, q: &BTreeMap<String, String>) -> Selector {
        let reqs = |key: &str| -> Vec<String> {
            q.get(key)
                .map(|s| {
                    s.split(',')
                        .map(str::trim)
                        .filter(|r| !r.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default()
        };
        let labels: Vec<(String, Option<String>, bool)> = reqs("labelSelector")
            .iter()
            .map(|r| {
                if let Some((k, v)) = r.split_once("!=") {
                    (k.trim().into(), Some(v.trim().into()), false)
                } else if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
                    (k.trim().into(), Some(v.trim().into()), true)
                } else if let Some(k) = r.strip_prefix('!') {
                    (k.trim().into(), None, false)
                } else {
                    (r.clone(), None, true)
                }
            })
            .collect();
        let fields: Vec<(String, String, bool)> = reqs("fieldSelector")
            .iter()
            .filter_map(|r| {
                if let Some((k, v)) = r.split_once("!=") {
                    Some((k.trim().into(), v.trim().into(), false))
                } else {
                    let (k, v) = r.split_once("==").or_else(|| r.split_once('='))?;
                    Some((k.trim().into(), v.trim().into(), true))
                }
            })
            .collect();
        Selector {
            namespace: namespace.into(),
            labels,
            fields,
        }
    }

    fn matches(&self, obj: &Value) -> bool {
        if !self.namespace.is_empty() && str_at(obj, "metadata.namespace") != self.namespace {
            return false;
        }
        let labels = &obj["metadata"]["labels"];
        let labels_ok = self.labels.iter().all(|(k, v, eq)| {
            let have = labels.get(k).and_then(Value::as_str);
            match v {
                Some(v) => (have == Some(v.as_str())) == *eq,
                None => have.is_some() == *eq,
            }
        });
        labels_ok
            && self
                .fields
                .iter()
                .all(|(k, v, eq)| (str_at(obj, k) == v.as_str()) == *eq)
    }
}

/// JSON merge patch (RFC 7386): objects merge key by key, `null` deletes, anything else
/// replaces.
fn merge_patch(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(&k);
                } else {
                    merge_patch(a.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (a, b) => *a = b,
    }
}

/// Server-side apply as this fake does it: the body's top-level fields replace the stored ones,
/// except `metadata`, whose labels and annotations merge (name, uid, resourceVersion stay).
fn apply(stored: &mut Value, body: Value) {
    let Value::Object(body) = body else { return };
    for (k, v) in body {
        if k == "metadata" {
            for m in ["labels", "annotations"] {
                if let Some(v) = v.get(m).cloned() {
                    merge_patch(&mut stored["metadata"][m], v);
                }
            }
            if let Some(o) = v.get("ownerReferences").cloned() {
                stored["metadata"]["ownerReferences"] = o;
            }
        } else {
            stored[k.as_str()] = v;
        }
    }
}

async fn handle(s: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let q = query(req.uri().query().unwrap_or(""));
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let at = Instant::now();
    let Some(t) = target(&path) else {
        return Ok(status(404, "NotFound", "not served by the fake apiserver"));
    };
    if method == Method::GET {
        return Ok(get(&s, &t, &q));
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut st = s.store();
    st.writes.push(Write {
        at,
        method: method.to_string(),
        collection: t.collection.clone(),
        namespace: t.namespace.clone(),
        name: t.name.clone().unwrap_or_default(),
        subresource: t.sub.clone(),
        body: body.clone(),
    });
    let resp = write(&mut st, &method, &t, &content_type, body);
    let rv = st.rv;
    drop(st);
    s.changed.send_replace(rv);
    Ok(resp)
}

fn get(s: &Arc<Shared>, t: &Target, q: &BTreeMap<String, String>) -> Response<Body> {
    let st = s.store();
    if let Some(name) = &t.name {
        let key = Key {
            collection: t.collection.clone(),
            namespace: t.namespace.clone(),
            name: name.clone(),
        };
        return match st.objects.get(&key) {
            Some(o) => respond(200, o),
            None => status(
                404,
                "NotFound",
                &format!("{} {name} not found", t.collection),
            ),
        };
    }
    let sel = Selector::new(&t.namespace, q);
    let in_collection = |k: &Key| k.collection == t.collection;
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let from: u64 = q
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // From "0" (or none): the current objects as ADDED first.
        let initial: Vec<u8> = if from == 0 {
            st.objects
                .iter()
                .filter(|(k, o)| in_collection(k) && sel.matches(o))
                .flat_map(|(_, o)| watch_line("ADDED", o))
                .collect()
        } else {
            Vec::new()
        };
        let from = if from == 0 { st.rv } else { from };
        drop(st);
        return watch(s.clone(), t.collection.clone(), sel, from, initial);
    }
    let items: Vec<&Value> = st
        .objects
        .iter()
        .filter(|(k, o)| in_collection(k) && sel.matches(o))
        .map(|(_, o)| o)
        .collect();
    respond(
        200,
        &json!({"apiVersion": "v1", "kind": "List",
            "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
    )
}

fn watch_line(kind: &str, obj: &Value) -> Vec<u8> {
    let mut line = json!({"type": kind, "object": obj})
        .to_string()
        .into_bytes();
    line.push(b'\n');
    line
}

/// A watch response streaming the events after resourceVersion `from` that `sel` selects, one
/// JSON object per line, until the client goes away.
fn watch(
    s: Arc<Shared>,
    collection: String,
    sel: Selector,
    from: u64,
    initial: Vec<u8>,
) -> Response<Body> {
    let rx = s.changed.subscribe();
    let first =
        (!initial.is_empty()).then(|| Ok::<_, Infallible>(Frame::data(Bytes::from(initial))));
    let events = futures::stream::unfold((from, rx), move |(mut last, mut rx)| {
        let (s, collection, sel) = (s.clone(), collection.clone(), sel.clone());
        async move {
            loop {
                let batch: Vec<u8> = {
                    let st = s.store();
                    let start = st.events.partition_point(|e| e.rv <= last);
                    let batch = st.events[start..]
                        .iter()
                        .filter(|e| e.key.collection == collection && sel.matches(&e.object))
                        .flat_map(|e| watch_line(e.kind, &e.object))
                        .collect();
                    last = st.rv;
                    batch
                };
                if !batch.is_empty() {
                    let frame = Ok::<_, Infallible>(Frame::data(Bytes::from(batch)));
                    return Some((frame, (last, rx)));
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        }
    });
    let body = futures::stream::iter(first).chain(events);
    Response::builder()
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(body)))
        .expect("a valid response")
}

fn write(
    st: &mut Store,
    method: &Method,
    t: &Target,
    content_type: &str,
    body: Value,
) -> Response<Body> {
    let mut key = Key {
        collection: t.collection.clone(),
        namespace: t.namespace.clone(),
        name: t.name.clone().unwrap_or_default(),
    };
    let status_only = t.sub.as_deref() == Some("status");
    let stored = st.objects.get(&key).cloned();
    match *method {
        Method::POST => {
            if key.name.is_empty() {
                key.name = str_at(&body, "metadata.name").to_string();
            }
            if key.name.is_empty() {
                let prefix = str_at(&body, "metadata.generateName").to_string();
                key.name = format!("{prefix}{:05x}", st.rv + 1);
            }
            if st.objects.contains_key(&key) {
                return status(409, "AlreadyExists", &format!("{} exists", key.name));
            }
            let obj = st.put(key, body, "ADDED");
            respond(201, &obj)
        }
        Method::DELETE => match stored {
            Some(o) => {
                let obj = st.put(key, o, "DELETED");
                respond(200, &obj)
            }
            None => status(404, "NotFound", &format!("{} not found", key.name)),
        },
        Method::PUT | Method::PATCH => {
            let is_apply = content_type.starts_with("application/apply-patch");
            let (mut obj, kind) = match stored {
                Some(o) => (o, "MODIFIED"),
                None if is_apply => (json!({}), "ADDED"),
                None => return status(404, "NotFound", &format!("{} not found", key.name)),
            };
            let spec_before = obj.get("spec").cloned();
            let body = if status_only {
                json!({"status": body.get("status").cloned().unwrap_or(Value::Null)})
            } else {
                body
            };
            if *method == Method::PUT {
                if status_only {
                    obj["status"] = body["status"].clone();
                } else {
                    let meta = obj["metadata"].clone();
                    obj = body;
                    for k in ["uid", "generation", "creationTimestamp"] {
                        if let Some(v) = meta.get(k) {
                            obj["metadata"][k] = v.clone();
                        }
                    }
                }
            } else if is_apply {
                if kind == "ADDED" {
                    obj = body;
                } else {
                    apply(&mut obj, body);
                }
            } else {
                merge_patch(&mut obj, body);
            }
            if kind == "MODIFIED" && !status_only && obj.get("spec").cloned() != spec_before {
                let g = obj["metadata"]["generation"].as_i64().unwrap_or(1);
                obj["metadata"]["generation"] = (g + 1).into();
            }
            let obj = st.put(key, obj, kind);
            respond(if kind == "ADDED" { 201 } else { 200 }, &obj)
        }
        _ => status(
            405,
            "MethodNotAllowed",
            "method not supported by the fake apiserver",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths() {
        let t = target("/apis/kubetune.dev/v1alpha1/namespaces/shop/tuningpolicies/web/status")
            .unwrap();
        assert_eq!(
            t,
            Target {
                collection: "/apis/kubetune.dev/v1alpha1/tuningpolicies".into(),
                namespace: "shop".into(),
                name: Some("web".into()),
                sub: Some("status".into()),
            }
        );
        let t = target("/api/v1/pods").unwrap();
        assert_eq!((t.collection.as_str(), t.name), ("/api/v1/pods", None));
        let t = target("/api/v1/namespaces/shop").unwrap();
        assert_eq!(
            (
                t.collection.as_str(),
                t.namespace.as_str(),
                t.name.as_deref()
            ),
            ("/api/v1/namespaces", "", Some("shop"))
        );
        assert!(target("/apis").is_none() && target("/api/v1").is_none());
    }

    #[test]
    fn selects_by_labels_and_fields() {
        let q = query("labelSelector=app%3Dweb%2C%21skip&fieldSelector=spec.nodeName%3Dn1");
        let sel = Selector::new("", &q);
        let obj = |labels: Value, node: &str| json!({"metadata": {"name": "p", "labels": labels}, "spec": {"nodeName": node}});
        assert!(sel.matches(&obj(json!({"app": "web"}), "n1")));
        assert!(!sel.matches(&obj(json!({"app": "web", "skip": "x"}), "n1")));
        assert!(!sel.matches(&obj(json!({"app": "api"}), "n1")));
        assert!(!sel.matches(&obj(json!({"app": "web"}), "n2")));
    }

    #[test]
    fn writes_apply_merge_and_status() {
        let mut st = Store::default();
        let t = target("/apis/kubetune.dev/v1alpha1/namespaces/shop/tuningpolicies/web").unwrap();
        let apply_ct = "application/apply-patch+yaml";
        write(
            &mut st,
            &Method::PATCH,
            &t,
            apply_ct,
            json!({"metadata": {"name": "web", "labels": {"a": "1"}}, "spec": {"x": 1, "y": 2}}),
        );
        write(
            &mut st,
            &Method::PATCH,
            &t,
            apply_ct,
            json!({"metadata": {"labels": {"b": "2"}}, "spec": {"x": 3}}),
        );
        let st_t = Target {
            sub: Some("status".into()),
            ..target("/apis/kubetune.dev/v1alpha1/namespaces/shop/tuningpolicies/web").unwrap()
        };
        write(
            &mut st,
            &Method::PATCH,
            &st_t,
            apply_ct,
            json!({"spec": {"ignored": true}, "status": {"phase": "Pending"}}),
        );
        write(
            &mut st,
            &Method::PATCH,
            &t,
            "application/merge-patch+json",
            json!({"metadata": {"labels": {"a": null}}}),
        );
        let key = Key {
            collection: t.collection.clone(),
            namespace: "shop".into(),
            name: "web".into(),
        };
        let o = &st.objects[&key];
        assert_eq!(o["spec"], json!({"x": 3}));
        assert_eq!(o["status"], json!({"phase": "Pending"}));
        assert_eq!(o["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(o["metadata"]["generation"], 2);
        assert_eq!(o["metadata"]["resourceVersion"], "4");
        assert_eq!(st.events.len(), 4);
        assert_eq!(st.events[0].kind, "ADDED");
    }
}
