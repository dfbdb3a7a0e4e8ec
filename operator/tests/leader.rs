//! Two operator electors against one in-memory Lease API (the Kubernetes API boundary is the
//! only mock): exactly one leads at any time; a crashed leader (no renewals, no release) is
//! replaced after its lease expires and not before; a leader stepping down (SIGTERM) hands
//! over at once; `lead` runs the work only while leading.
//!
//! The fake implements what the lock relies on: GET, and PATCH of `spec` fields as server-side
//! apply (a field set to another value by another field manager is a 409 Conflict) or as a
//! strategic merge (sets or, with `null`, removes fields; the patcher owns what it sets).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kubetune_operator::leader::{self, ElectionConfig, Ended, Leadership};
use serde_json::{json, Map, Value};

const NS: &str = "kubetune-system";

#[derive(Default)]
struct LeaseStore {
    spec: Map<String, Value>,
    owners: BTreeMap<String, String>,
    resource_version: u64,
}

fn status(code: StatusCode, reason: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": reason, "reason": reason, "code": code.as_u16()});
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn lease_json(s: &LeaseStore) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": leader::LEASE_NAME, "namespace": NS,
                     "resourceVersion": s.resource_version.to_string()},
        "spec": s.spec})
}

/// Applies one PATCH to the store; `Err` is the refusal.
fn patch(s: &mut LeaseStore, manager: &str, apply: bool, body: &Value) -> Result<(), StatusCode> {
    let fields = body["spec"].as_object().cloned().unwrap_or_default();
    if apply {
        for (k, v) in &fields {
            let owner = s.owners.get(k).map(String::as_str);
            if s.spec.get(k).is_some_and(|cur| cur != v) && owner.is_some_and(|o| o != manager) {
                return Err(StatusCode::CONFLICT);
            }
        }
    }
    for (k, v) in fields {
        if v.is_null() {
            s.spec.remove(&k);
            s.owners.remove(&k);
        } else {
            s.spec.insert(k.clone(), v);
            s.owners.insert(k, manager.to_string());
        }
    }
    s.resource_version += 1;
    Ok(())
}

async fn serve(store: Arc<Mutex<LeaseStore>>, req: Request<Body>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let method = req.method().clone();
    let apply = req
        .headers()
        .get("content-type")
        .is_some_and(|c| c.to_str().unwrap().starts_with("application/apply-patch"));
    let want = format!(
        "/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{}",
        leader::LEASE_NAME
    );
    if path != want {
        return status(StatusCode::NOT_FOUND, "NotFound");
    }
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let mut s = store.lock().unwrap();
    match method.as_str() {
        "GET" => {}
        "PATCH" => {
            let manager = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("fieldManager="))
                .unwrap_or("unknown")
                .to_string();
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            if let Err(code) = patch(&mut s, &manager, apply, &body) {
                return status(code, "Conflict");
            }
        }
        _ => return status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
    }
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&lease_json(&s)).unwrap()))
        .unwrap()
}

/// A client of the fake; once `dead` is set its requests fail (the process is gone or cut off).
fn client_with(store: &Arc<Mutex<LeaseStore>>, dead: Arc<AtomicBool>) -> kube::Client {
    let store = store.clone();
    let svc = tower::service_fn(move |req| {
        let (store, dead) = (store.clone(), dead.clone());
        async move {
            if dead.load(Ordering::SeqCst) {
                return Ok(status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                ));
            }
            Ok::<_, std::convert::Infallible>(serve(store, req).await)
        }
    });
    kube::Client::new(svc, NS)
}

fn client(store: &Arc<Mutex<LeaseStore>>) -> kube::Client {
    client_with(store, Arc::default())
}

fn config(identity: &str) -> ElectionConfig {
    ElectionConfig {
        namespace: NS.into(),
        lease_name: leader::LEASE_NAME.into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(3),
        renew_before: Duration::from_secs(1),
        retry: Duration::from_millis(500),
    }
}

async fn two(store: &Arc<Mutex<LeaseStore>>) -> (Leadership, Leadership) {
    let a = leader::campaign(client(store), &config("operator-a"))
        .await
        .unwrap();
    let b = leader::campaign(client(store), &config("operator-b"))
        .await
        .unwrap();
    (a, b)
}

fn holder(store: &Arc<Mutex<LeaseStore>>) -> Option<String> {
    store
        .lock()
        .unwrap()
        .spec
        .get("holderIdentity")
        .map(|v| v.as_str().unwrap().to_string())
}

/// Samples both electors every 50 ms for `d`: never two leaders; returns the last leader seen.
async fn watch_exclusive(a: &Leadership, b: &Leadership, d: Duration) -> Option<&'static str> {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < d {
        assert!(!(a.is_leader() && b.is_leader()), "two leaders");
        last = match (a.is_leader(), b.is_leader()) {
            (true, _) => Some("operator-a"),
            (_, true) => Some("operator-b"),
            _ => last,
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_two_leads_and_keeps_the_lease_by_renewing() {
    let store = Arc::new(Mutex::new(LeaseStore::default()));
    let (a, b) = two(&store).await;
    // Three lease durations: the leader must renew to keep it; the other never leads.
    let first = watch_exclusive(&a, &b, Duration::from_secs(1)).await;
    let leader = first.expect("someone leads within a second");
    let last = watch_exclusive(&a, &b, Duration::from_secs(9)).await;
    assert_eq!(last, Some(leader), "leadership moved without a failure");
    assert_eq!(holder(&store).as_deref(), Some(leader));
    assert_eq!(a.is_leader() as u8 + b.is_leader() as u8, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_leader_is_replaced_after_its_lease_expires_and_stops_leading() {
    let store = Arc::new(Mutex::new(LeaseStore::default()));
    let dead = Arc::new(AtomicBool::new(false));
    let mut a = leader::campaign(client_with(&store, dead.clone()), &config("operator-a"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), a.acquired())
        .await
        .unwrap()
        .unwrap();
    let mut b = leader::campaign(client(&store), &config("operator-b"))
        .await
        .unwrap();
    // The leader's process dies: no renewal, no release.
    let crashed = Instant::now();
    dead.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), b.acquired())
        .await
        .unwrap()
        .unwrap();
    let took = crashed.elapsed();
    assert_eq!(holder(&store).as_deref(), Some("operator-b"));
    // Not before the crashed holder's lease ran out (it had renewed at most `duration` ago…
    // and at least `duration - renew_before` remained at the crash), and within duration + 2 s.
    assert!(
        took >= Duration::from_secs(1),
        "took over after {took:?}, before expiry"
    );
    assert!(took <= Duration::from_secs(5), "took over after {took:?}");
    // The cut-off leader knows it no longer leads (its renewals fail).
    assert!(!a.is_leader());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stepping_down_hands_over_at_once_and_lead_runs_work_only_while_leading() {
    let store = Arc::new(Mutex::new(LeaseStore::default()));
    let (a, b) = two(&store).await;
    let first = watch_exclusive(&a, &b, Duration::from_secs(1))
        .await
        .unwrap();
    let (leader, other) = if first == "operator-a" {
        (a, b)
    } else {
        (b, a)
    };
    let running = Arc::new(Mutex::new(0u32));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let r = running.clone();
    let work = async move {
        *r.lock().unwrap() += 1;
        std::future::pending::<()>().await
    };
    let led = tokio::spawn(leader::lead(leader, async { stopped.await.unwrap() }, work));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*running.lock().unwrap(), 1, "the leader runs its work");
    // SIGTERM: the leader stops and releases; the other takes over well within a lease duration.
    let t = Instant::now();
    stop.send(()).unwrap();
    assert_eq!(led.await.unwrap().unwrap(), Ended::SteppedDown);
    let mut other = other;
    tokio::time::timeout(Duration::from_secs(3), other.acquired())
        .await
        .unwrap()
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_ne!(holder(&store).as_deref(), Some(first));
    // A non-leader's work never starts: `lead` on a candidate that never wins steps down on
    // shutdown without running it.
    let c = leader::campaign(client(&store), &config("operator-c"))
        .await
        .unwrap();
    let never = Arc::new(Mutex::new(false));
    let n = never.clone();
    let ended = leader::lead(c, tokio::time::sleep(Duration::from_secs(1)), async move {
        *n.lock().unwrap() = true;
    })
    .await
    .unwrap();
    assert_eq!(ended, Ended::SteppedDown);
    assert!(!*never.lock().unwrap(), "work ran without the lease");
}
