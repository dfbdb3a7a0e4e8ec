//! The per-snapshot plan memo: replicas of one pod template are planned once, and so is one
//! plan input (the first pods of rollouts that change nothing kubetune reads).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::review::{Answer, ReviewOutcome};

/// Most pod objects one snapshot remembers; the memo is emptied when it is full.
pub const MEMO_CAPACITY: usize = 1024;
/// Most bytes (object JSON + encoded patch) one snapshot's memo holds; emptied when exceeded.
pub const MEMO_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Pod objects larger than this (JSON bytes) are never memoised.
pub const MEMO_MAX_OBJECT_BYTES: usize = 16 * 1024;

/// The plan + patch of each pod object seen with one [`Snapshot`](crate::admission::Snapshot).
///
/// Plan and patch are pure functions of the pod object, its namespace and the snapshot, so the
/// same object in the same namespace gets the same answer. Replicas of one ReplicaSet reach the
/// webhook as the same JSON (the apiserver generates their names and uids after admission), so
/// a scale-up, a rollout or a node drain plans once per pod template instead of once per pod.
/// The key is the object's exact JSON: nothing that could change the answer can differ between
/// a hit and the request it was computed for. The snapshot keeps a second memo of the same type
/// keyed by the canonical JSON of the pod's plan input
/// ([`PodSubset::plan_input`](crate::podview::PodSubset::plan_input)): exactly what plan and
/// patch are computed from, so a hit there is equally exact. A new snapshot (any policy,
/// namespace or cluster-facts change) comes with empty memos, so nothing outlives what it was
/// computed from. Bounded: [`MEMO_CAPACITY`] objects, [`MEMO_MAX_BYTES`] in all, objects of at most
/// [`MEMO_MAX_OBJECT_BYTES`].
#[derive(Default)]
pub struct PlanMemo {
    hasher: foldhash::quality::RandomState,
    inner: Mutex<MemoInner>,
}

#[derive(Default)]
struct MemoInner {
    /// Hash of (namespace, object JSON) -> entries with that hash.
    map: HashMap<u64, Vec<MemoEntry>>,
    entries: usize,
    bytes: usize,
}

struct MemoEntry {
    namespace: Box<str>,
    object: Box<str>,
    planned: Arc<Planned>,
}

/// The part of a `/mutate` answer that depends only on the pod object, its namespace and the
/// snapshot (not on the request's uid): what the memo remembers.
#[derive(Debug)]
pub struct Planned {
    /// The JSONPatch, serialised and base64-encoded, when the pod is patched.
    pub patch_b64: Option<String>,
    /// Patched, Unchanged or Skipped.
    pub outcome: ReviewOutcome,
    /// Delivery kinds patched (metrics).
    pub delivered: Vec<&'static str>,
}

impl Planned {
    /// The answer to the request `uid`.
    pub fn answer(&self, uid: &str, warning: Option<&str>, memo_hit: bool) -> Answer {
        let mut a = Answer::patched(uid, self.patch_b64.as_deref(), warning, self.outcome);
        a.delivered.clone_from(&self.delivered);
        a.memo_hit = memo_hit;
        a
    }
}

impl Clone for PlanMemo {
    /// A copied snapshot starts with an empty memo.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for PlanMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.lock();
        f.debug_struct("PlanMemo")
            .field("entries", &m.entries)
            .field("bytes", &m.bytes)
            .finish()
    }
}

impl PlanMemo {
    fn lock(&self) -> MutexGuard<'_, MemoInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn hash(&self, namespace: &str, object: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one((namespace, object))
    }
    /// Number of remembered pod objects.
    pub fn len(&self) -> usize {
        self.lock().entries
    }
    /// Bytes held (object JSON + encoded patches).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The answer remembered for `object` in `namespace`.
    pub fn get(&self, namespace: &str, object: &str) -> Option<Arc<Planned>> {
        let h = self.hash(namespace, object);
        self.lock()
            .map
            .get(&h)?
            .iter()
            .find(|e| &*e.namespace == namespace && &*e.object == object)
            .map(|e| e.planned.clone())
    }
    /// Remember the answer for `object` in `namespace` (within the bounds).
    pub fn insert(&self, namespace: &str, object: &str, planned: Arc<Planned>) {
        if object.len() > MEMO_MAX_OBJECT_BYTES {
            return;
        }
        let size =
            namespace.len() + object.len() + planned.patch_b64.as_ref().map_or(0, String::len);
        let h = self.hash(namespace, object);
        let mut m = self.lock();
        if m.entries >= MEMO_CAPACITY || m.bytes + size > MEMO_MAX_BYTES {
            *m = MemoInner::default();
        }
        let bucket = m.map.entry(h).or_default();
        if bucket
            .iter()
            .any(|e| &*e.namespace == namespace && &*e.object == object)
        {
            return;
        }
        bucket.push(MemoEntry {
            namespace: namespace.into(),
            object: object.into(),
            planned,
        });
        m.entries += 1;
        m.bytes += size;
    }
}
