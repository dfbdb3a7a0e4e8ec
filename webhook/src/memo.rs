//! The per-snapshot plan memos: replicas of one pod template are planned once (and their
//! reviews not even decoded again), and so is one plan input with one set of selecting policies
//! (the first pods of rollouts that change nothing kubetune reads, Deployments the same policies
//! select).

use std::collections::HashMap;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock};

use crate::review::{Answer, ReviewOutcome};
use crate::skeleton::{skeleton, Reads, Skeleton};

/// Most keys one snapshot's memo remembers; the memo is emptied when it is full.
pub const MEMO_CAPACITY: usize = 1024;
/// Most bytes (keys + encoded patches) one snapshot's memo holds; emptied when exceeded.
pub const MEMO_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Keys (review or plan-input JSON) larger than this are never memoised.
pub const MEMO_MAX_OBJECT_BYTES: usize = 16 * 1024;
/// Most distinct positions of `request.uid` the review memo tries per review.
pub const MEMO_UID_OFFSETS: usize = 4;

/// The plan + patch of each key seen with one [`Snapshot`](crate::admission::Snapshot), in a
/// scope (the plan-input memo's scope is the pod's namespace).
///
/// The snapshot keeps two: the [`ReviewMemo`] (whole reviews but their uid: replicas) and one
/// keyed by the policies that select the pod (their positions in the snapshot) and the canonical
/// JSON of the pod's plan input
/// ([`PodSubset::plan_input`](crate::podview::PodSubset::plan_input)): exactly what plan and
/// patch are computed from, so a hit there is exact. A new snapshot (any policy, namespace or
/// cluster-facts change) comes with empty memos, or — when only namespaces changed — with the
/// entries of the unchanged namespaces ([`PlanMemo::carried`]), so nothing outlives what it was
/// computed from.
/// Bounded: [`MEMO_CAPACITY`] keys, [`MEMO_MAX_BYTES`] in all, keys of at most
/// [`MEMO_MAX_OBJECT_BYTES`].
#[derive(Default)]
pub struct PlanMemo {
    hasher: foldhash::quality::RandomState,
    inner: Mutex<MemoInner>,
}

#[derive(Default)]
struct MemoInner {
    /// Hash of (scope, key) -> entries with that hash.
    map: HashMap<u64, Vec<MemoEntry>>,
    entries: usize,
    bytes: usize,
}

#[derive(Clone)]
struct MemoEntry {
    scope: Box<str>,
    key: Box<[u8]>,
    planned: Arc<Planned>,
}

impl MemoEntry {
    fn size(&self) -> usize {
        entry_size(&self.scope, &self.key, &self.planned)
    }
}

/// The bytes an entry counts against [`MEMO_MAX_BYTES`].
fn entry_size(scope: &str, key: &[u8], planned: &Planned) -> usize {
    scope.len() + key.len() + planned.patch_b64.as_ref().map_or(0, String::len)
}

/// The part of a `/mutate` answer that depends only on the pod object, its namespace and the
/// snapshot (not on the request's uid): what the memos remember.
#[derive(Debug)]
pub struct Planned {
    /// The namespace the pod was planned in.
    pub namespace: String,
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

impl Drop for PlanMemo {
    /// A replaced snapshot's memo is freed on another thread too.
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        free_elsewhere(std::mem::take(inner));
    }
}

/// Frees an emptied memo on a thread of its own. Freeing a full memo's ~1,000 entries takes
/// 0.1–1.3 ms (measured at 5,000 reviews/s), which on the review path stalls every review queued
/// on that runtime worker behind the one that emptied it. At most [`FREE_QUEUE`] memos wait;
/// beyond that (or without the thread) the caller frees it, so memory stays bounded.
fn free_elsewhere(stale: MemoInner) {
    static QUEUE: OnceLock<Option<SyncSender<MemoInner>>> = OnceLock::new();
    if stale.entries == 0 {
        return;
    }
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<MemoInner>(FREE_QUEUE);
        let freer = move || rx.into_iter().for_each(drop);
        let spawned = std::thread::Builder::new()
            .name("memo-free".into())
            .spawn(freer);
        spawned.ok().map(|_| tx)
    });
    if let Some(tx) = queue {
        // Queue full (or the thread gone): the error holds the memo, freed here.
        let _ = tx.try_send(stale);
    }
}

/// Most emptied memos waiting to be freed.
const FREE_QUEUE: usize = 4;

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
    fn hash(&self, scope: &str, key: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one((scope, key))
    }
    /// Number of remembered keys.
    pub fn len(&self) -> usize {
        self.lock().entries
    }
    /// Bytes held (keys + encoded patches).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The answer remembered for `key` in `scope`.
    pub fn get(&self, scope: &str, key: &[u8]) -> Option<Arc<Planned>> {
        let h = self.hash(scope, key);
        self.lock()
            .map
            .get(&h)?
            .iter()
            .find(|e| &*e.scope == scope && &*e.key == key)
            .map(|e| e.planned.clone())
    }
    /// A memo with the entries of this one whose answer `keep` accepts (for a new snapshot in
    /// which those answers still hold).
    pub fn carried(&self, keep: impl Fn(&Planned) -> bool) -> PlanMemo {
        let m = self.lock();
        let mut out = MemoInner::default();
        for (h, bucket) in &m.map {
            let kept: Vec<MemoEntry> = bucket
                .iter()
                .filter(|e| keep(&e.planned))
                .cloned()
                .collect();
            if kept.is_empty() {
                continue;
            }
            out.entries += kept.len();
            out.bytes += kept.iter().map(MemoEntry::size).sum::<usize>();
            out.map.insert(*h, kept);
        }
        PlanMemo {
            hasher: self.hasher.clone(),
            inner: Mutex::new(out),
        }
    }
    /// Remember the answer for `key` in `scope` (within the bounds).
    pub fn insert(&self, scope: &str, key: &[u8], planned: Arc<Planned>) {
        if key.len() > MEMO_MAX_OBJECT_BYTES {
            return;
        }
        let size = entry_size(scope, key, &planned);
        let h = self.hash(scope, key);
        let mut m = self.lock();
        if m.entries >= MEMO_CAPACITY || m.bytes + size > MEMO_MAX_BYTES {
            // A full memo is emptied, and its entries freed on another thread.
            free_elsewhere(std::mem::take(&mut *m));
        }
        let bucket = m.map.entry(h).or_default();
        if bucket.iter().any(|e| &*e.scope == scope && &*e.key == key) {
            return;
        }
        bucket.push(MemoEntry {
            scope: scope.into(),
            key: key.into(),
            planned,
        });
        m.entries += 1;
        m.bytes += size;
    }
}

/// Answers by whole AdmissionReview body but its `request.uid`: replicas of one ReplicaSet.
///
/// The apiserver sends the reviews of one ReplicaSet's pods as the same bytes but the uid (the
/// pods have a generateName and no name yet; the requester, options and object are the same), so
/// a scale-up, a rollout or a drain is answered once per pod template, without decoding the
/// review again. Exact: an entry is made only for a review whose uid was decoded verbatim (no
/// escapes) at offset `o`; a later review hits only when its bytes before `o` are the same, the
/// string from `o` up to the next `"` is plain printable ASCII without `\`, and its bytes from
/// that quote on are the same as after the remembered uid. Such a review parses exactly as the
/// remembered one with another uid, so it gets the same answer with its own uid.
#[derive(Default, Debug)]
pub struct ReviewMemo {
    memo: PlanMemo,
    /// Offsets of `request.uid` in the remembered reviews (a handful: the apiserver writes the
    /// uid first in `request`, at one offset).
    uid_offsets: Mutex<UidOffsets>,
}

/// At most [`MEMO_UID_OFFSETS`] offsets, copied out of the lock without allocating.
#[derive(Default, Debug, Clone, Copy)]
struct UidOffsets {
    at: [usize; MEMO_UID_OFFSETS],
    len: usize,
}

impl UidOffsets {
    fn as_slice(&self) -> &[usize] {
        &self.at[..self.len]
    }
    /// Adds `o` unless full; true when `o` is (now) among the offsets.
    fn add(&mut self, o: usize) -> bool {
        if self.as_slice().contains(&o) {
            return true;
        }
        if self.len == MEMO_UID_OFFSETS {
            return false;
        }
        self.at[self.len] = o;
        self.len += 1;
        true
    }
}

impl Clone for ReviewMemo {
    /// A copied snapshot starts with an empty memo.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl ReviewMemo {
    /// The answer to `body` and its uid, when a review equal but for its uid was answered; else
    /// the keys looked up, for [`ReviewMemo::insert`].
    pub fn get<'b>(&self, body: &'b [u8]) -> Result<(Arc<Planned>, &'b str), Miss> {
        let offsets = *self.uid_offsets.lock().unwrap_or_else(|e| e.into_inner());
        let mut miss = Miss::default();
        for &o in offsets.as_slice() {
            let Some((key, uid)) = excise_uid(body, o) else {
                continue;
            };
            if let Some(hit) = self.memo.get("", &key) {
                return Ok((hit, uid));
            }
            miss.0.push((o, key));
        }
        Err(miss)
    }
    /// Remember the answer to `body`, whose `request.uid` was decoded as `uid` (borrowed from
    /// `body`, so it had no escapes); anything else is not remembered. `miss`: what
    /// [`ReviewMemo::get`] looked up for this body.
    pub fn insert(&self, body: &[u8], uid: &str, planned: Arc<Planned>, miss: Miss) {
        let Some(o) = (uid.as_ptr() as usize)
            .checked_sub(body.as_ptr() as usize)
            .filter(|o| o + uid.len() <= body.len())
        else {
            return; // not borrowed from the body
        };
        let looked_up = miss.0.into_iter().find(|(at, _)| *at == o);
        let Some(key) = looked_up
            .map(|(_, key)| key)
            .or_else(|| excise_uid(body, o).map(|(key, _)| key))
        else {
            return;
        };
        // The string excised at `o` must be the decoded uid, all of it.
        if key.len() != KEY_HEADER + body.len() - uid.len() {
            return;
        }
        if self
            .uid_offsets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(o)
        {
            self.memo.insert("", &key, planned);
        }
    }
    /// A memo with the reviews of this one whose answer `keep` accepts (see
    /// [`PlanMemo::carried`]).
    pub fn carried(&self, keep: impl Fn(&Planned) -> bool) -> ReviewMemo {
        let offsets = *self.uid_offsets.lock().unwrap_or_else(|e| e.into_inner());
        ReviewMemo {
            memo: self.memo.carried(keep),
            uid_offsets: Mutex::new(offsets),
        }
    }
    /// Number of remembered reviews.
    pub fn len(&self) -> usize {
        self.memo.len()
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.memo.bytes()
    }
    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.memo.is_empty()
    }
}

/// Answers by review skeleton ([`crate::skeleton`]): reviews that differ only in string values
/// `/mutate` does not read — the first pods of successive rollouts of one Deployment (new
/// `pod-template-hash`, `restartedAt`, images, owner), answered without being decoded. What is
/// read of labels and annotations depends on the snapshot's policies ([`Reads`], worked out once
/// per memo).
///
/// Working out a skeleton costs about half of decoding the review, wasted when it is not
/// remembered, so it is worked out only while that pays: every workload (a pod's
/// `generateName` without the last `-` part: the Deployment's name for a ReplicaSet's pods) that
/// was answered before keeps its own count, the workloads not seen yet (and pods without a
/// `generateName`) share one; after [`SKELETON_MISSES`] misses in a row, only one review in
/// [`SKELETON_RETRY`] tries until one hits again. A workload whose every pod is planned anew, or
/// new Deployments that each select other policies, then cost next to nothing more.
#[derive(Default, Debug)]
pub struct SkeletonMemo {
    memo: PlanMemo,
    reads: OnceLock<Reads>,
    workloads: Mutex<Workloads>,
}

/// The skeleton lookups of the workloads answered before, and of the others.
#[derive(Default, Debug, Clone)]
struct Workloads {
    seen: HashMap<u64, Tries>,
    new: Tries,
}

/// Misses in a row after which a workload's skeletons are worked out only now and then.
pub const SKELETON_MISSES: u32 = 2;
/// One review in this many of such a workload still works its skeleton out.
pub const SKELETON_RETRY: u32 = 16;
/// Most workloads tracked; all are forgotten when there are more.
const WORKLOADS: usize = 4096;

/// A workload's recent skeleton lookups.
#[derive(Default, Debug, Clone, Copy)]
struct Tries {
    misses: u32,
    skipped: u32,
}

impl Tries {
    /// Whether to try now (see [`SkeletonMemo`]); a try counts as a miss until it hits.
    fn try_now(&mut self) -> bool {
        if self.misses >= SKELETON_MISSES {
            self.skipped += 1;
            if self.skipped < SKELETON_RETRY {
                return false;
            }
            self.skipped = 0;
        }
        self.misses += 1;
        true
    }
}

/// What a [`SkeletonMemo::get`] that found nothing leaves for [`SkeletonMemo::insert`].
#[derive(Debug)]
pub struct SkeletonMiss<'b> {
    skeleton: Option<Skeleton<'b>>,
    workload: Option<u64>,
}

impl Clone for SkeletonMemo {
    /// A copied snapshot starts with an empty memo.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl SkeletonMemo {
    /// The answer to `body` and its uid, when a review with the same skeleton was answered;
    /// `reads` gives what is read when this memo has not worked it out yet.
    pub fn get<'b>(
        &self,
        body: &'b [u8],
        reads: impl FnOnce() -> Reads,
    ) -> Result<(Arc<Planned>, &'b str), SkeletonMiss<'b>> {
        let workload = workload(body).map(|w| self.memo.hash("", w));
        let mut miss = SkeletonMiss {
            skeleton: None,
            workload,
        };
        if !self.tries(workload, Tries::try_now) {
            return Err(miss);
        }
        if body.len() <= MEMO_MAX_OBJECT_BYTES {
            miss.skeleton = skeleton(body, self.reads.get_or_init(reads));
        }
        let hit = miss.skeleton.as_ref().and_then(|s| {
            let planned = self.memo.get("", &s.key)?;
            Some((planned, s.uid))
        });
        if hit.is_some() {
            self.tries(workload, |t| t.misses = 0);
        }
        hit.ok_or(miss)
    }
    /// `f` of the lookups counted for `workload` (its own when it was answered before).
    fn tries<T>(&self, workload: Option<u64>, f: impl FnOnce(&mut Tries) -> T) -> T {
        let mut workloads = self.workloads.lock().unwrap_or_else(|e| e.into_inner());
        let Workloads { seen, new } = &mut *workloads;
        f(workload.and_then(|w| seen.get_mut(&w)).unwrap_or(new))
    }
    /// Remember the answer to the review [`SkeletonMemo::get`] missed, whose `request.uid` was
    /// decoded as `uid`; its workload is tracked from now on.
    pub fn insert(&self, miss: SkeletonMiss<'_>, uid: &str, planned: Arc<Planned>) {
        if let Some(s) = miss.skeleton.filter(|s| s.uid == uid) {
            self.memo.insert("", &s.key, planned);
        }
        let Some(w) = miss.workload else {
            return;
        };
        let mut workloads = self.workloads.lock().unwrap_or_else(|e| e.into_inner());
        let seen = &mut workloads.seen;
        if seen.len() >= WORKLOADS && !seen.contains_key(&w) {
            seen.clear();
        }
        seen.entry(w).or_default();
    }
    /// A memo with the entries of this one whose answer `keep` accepts, for a snapshot with the
    /// same policies (see [`PlanMemo::carried`]).
    pub fn carried(&self, keep: impl Fn(&Planned) -> bool) -> SkeletonMemo {
        let workloads = self.workloads.lock().unwrap_or_else(|e| e.into_inner());
        SkeletonMemo {
            memo: self.memo.carried(keep),
            reads: self.reads.clone(),
            workloads: Mutex::new(workloads.clone()),
        }
    }
    /// Number of remembered skeletons.
    pub fn len(&self) -> usize {
        self.memo.len()
    }
    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.memo.is_empty()
    }
}

/// The pod's workload as far as the skeleton memo goes: the first `generateName` in the body
/// without its trailing `-` and the part before it (`web-7d9f8c6b5-` → `web`). Only a hint of
/// where a skeleton may be remembered: answers never depend on it.
fn workload(body: &[u8]) -> Option<&[u8]> {
    static KEY: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(br#""generateName":""#));
    let rest = &body[KEY.find(body)? + KEY.needle().len()..];
    let name = &rest[..memchr::memchr(b'"', rest)?];
    let name = name.strip_suffix(b"-").unwrap_or(name);
    Some(
        name.iter()
            .rposition(|&b| b == b'-')
            .map_or(name, |i| &name[..i]),
    )
}

/// The keys a [`ReviewMemo::get`] looked up and did not find (offset, key).
#[derive(Debug, Default)]
pub struct Miss(Vec<(usize, Vec<u8>)>);

/// Bytes of the offset in front of a review memo key.
const KEY_HEADER: usize = 8;

/// `body` without the string that starts at `o` (up to the next `"`), the offset in front, and
/// that string — when it is plain printable ASCII without `\` (so JSON reads it verbatim).
fn excise_uid(body: &[u8], o: usize) -> Option<(Vec<u8>, &str)> {
    let rest = body.get(o..)?;
    let end = o + memchr::memchr(b'"', rest)?;
    let uid = &body[o..end];
    if !uid.iter().all(|&b| (0x20..0x7f).contains(&b) && b != b'\\') {
        return None;
    }
    let mut key = Vec::with_capacity(KEY_HEADER + body.len() - uid.len());
    key.extend_from_slice(&(o as u64).to_le_bytes());
    key.extend_from_slice(&body[..o]);
    key.extend_from_slice(&body[end..]);
    Some((key, std::str::from_utf8(uid).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A review as the apiserver writes it: `request.uid` first.
    fn review(uid: &str, object: &str) -> String {
        format!(
            r#"{{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{{"uid":"{uid}","kind":{{"group":"","version":"v1","kind":"Pod"}},"namespace":"shop","operation":"CREATE","object":{object}}}}}"#
        )
    }

    fn planned(tag: &str) -> Arc<Planned> {
        Arc::new(Planned {
            namespace: "shop".into(),
            patch_b64: Some(tag.into()),
            outcome: ReviewOutcome::Patched,
            delivered: vec![],
        })
    }

    /// Remember `body` the way `/mutate` does: with the uid as decoded (borrowed from it).
    fn remember(m: &ReviewMemo, body: &str, tag: &str) {
        let r: serde_json::Value = serde_json::from_str(body).unwrap();
        let uid = r["request"]["uid"].as_str().unwrap();
        let at = body.find(&format!(r#""uid":"{uid}""#)).unwrap() + 7;
        m.insert(
            body.as_bytes(),
            &body[at..at + uid.len()],
            planned(tag),
            Miss::default(),
        );
    }

    fn hit(m: &ReviewMemo, body: &str) -> Option<(String, String)> {
        let (p, uid) = m.get(body.as_bytes()).ok()?;
        Some((p.patch_b64.clone().unwrap(), uid.to_string()))
    }

    #[test]
    fn a_review_equal_but_its_uid_is_answered_with_its_own_uid() {
        let m = ReviewMemo::default();
        let obj = r#"{"metadata":{"generateName":"web-","ownerReferences":[{"uid":"rs-1"}]}}"#;
        remember(&m, &review("0f2c-11", obj), "P");
        assert_eq!(m.len(), 1);
        for uid in ["0f2c-12", "", "a-much-longer-uid-than-before-0000", "x y'z"] {
            assert_eq!(
                hit(&m, &review(uid, obj)),
                Some(("P".into(), uid.into())),
                "{uid}"
            );
        }
        assert!(m.clone().is_empty(), "a copied snapshot starts empty");
    }

    #[test]
    fn anything_else_that_differs_misses() {
        let m = ReviewMemo::default();
        let obj = r#"{"metadata":{"generateName":"web-"}}"#;
        let body = review("u1", obj);
        remember(&m, &body, "P");
        let misses = [
            // A uid JSON would read differently from its bytes.
            review(r#"u\"2"#, obj),
            review(r"u\u0032", obj),
            review("u\u{1}2", obj),
            review("u\\", obj),
            review("ü2", obj),
            // Another object, namespace or operation; the uid at another offset.
            review("u2", r#"{"metadata":{"generateName":"api-"}}"#),
            review("u2", obj).replace("shop", "shoq"),
            review("u2", obj).replace("CREATE", "UPDATE"),
            review("u2", obj).replace(r#"{"kind""#, r#"{ "kind""#),
            // Truncated after the uid.
            review("u2", obj)[..70].to_string(),
        ];
        for b in &misses {
            assert_eq!(hit(&m, b), None, "{b}");
        }
        assert_eq!(hit(&m, &body), Some(("P".into(), "u1".into())));
    }

    #[test]
    fn only_a_uid_decoded_verbatim_from_the_body_is_remembered() {
        let m = ReviewMemo::default();
        let body = review("u1", "{}");
        // Not borrowed from the body (as when the uid had escapes).
        m.insert(body.as_bytes(), "u1", planned("P"), Miss::default());
        // Borrowed, but not the whole string up to the quote.
        let at = body.find("u1").unwrap();
        m.insert(
            body.as_bytes(),
            &body[at..at + 1],
            planned("P"),
            Miss::default(),
        );
        // The same, with the keys a lookup made.
        let miss = m.get(body.as_bytes()).unwrap_err();
        m.insert(body.as_bytes(), &body[at..at + 1], planned("P"), miss);
        assert!(m.is_empty());
        // A handful of uid offsets, no more.
        for pad in 0..MEMO_UID_OFFSETS + 2 {
            remember(
                &m,
                &review("u1", "{}").replacen('{', &format!("{{{}", " ".repeat(pad)), 1),
                "P",
            );
        }
        assert_eq!(m.len(), MEMO_UID_OFFSETS);
    }

    #[test]
    fn emptied_and_dropped_memos_are_freed() {
        // Entries of a memo emptied when full, and of a dropped memo, are freed (on the freeing
        // thread): nothing holds their answers afterwards.
        let m = PlanMemo::default();
        let first = planned("P");
        let weak = Arc::downgrade(&first);
        m.insert("shop", b"k-0", first);
        for i in 1..=MEMO_CAPACITY {
            m.insert("shop", format!("k-{i}").as_bytes(), planned("P"));
        }
        assert_eq!(m.len(), 1, "emptied when full, then the new key");
        let last = m
            .get("shop", format!("k-{MEMO_CAPACITY}").as_bytes())
            .unwrap();
        let weak_last = Arc::downgrade(&last);
        drop((last, m));
        let freed = |w: &std::sync::Weak<Planned>| {
            (0..500).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(10));
                w.strong_count() == 0
            })
        };
        assert!(freed(&weak), "the emptied memo's entries are freed");
        assert!(freed(&weak_last), "the dropped memo's entries are freed");
    }

    #[test]
    fn a_workload_is_the_generate_name_without_its_last_part() {
        let w = |meta: &str| {
            workload(review("u", &format!(r#"{{"metadata":{meta}}}"#)).as_bytes())
                .map(<[u8]>::to_vec)
        };
        assert_eq!(
            w(r#"{"generateName":"web-7d9f8c6b5-"}"#),
            Some(b"web".to_vec())
        );
        assert_eq!(
            w(r#"{"generateName":"kube-proxy-"}"#),
            Some(b"kube".to_vec())
        );
        assert_eq!(
            w(r#"{"generateName":"fluentd-"}"#),
            Some(b"fluentd".to_vec())
        );
        assert_eq!(w(r#"{"name":"web-0"}"#), None);
    }

    #[test]
    fn skeletons_are_worked_out_until_they_keep_missing_then_seldom() {
        let m = SkeletonMemo::default();
        // Every review of workload `web` with a skeleton of its own (the object's namespace is
        // read), so every lookup misses.
        let body = |w: &str, i: usize| {
            let obj =
                format!(r#"{{"metadata":{{"generateName":"{w}-{i:x}-","namespace":"{w}{i}"}}}}"#);
            review(&format!("u{i}"), &obj)
        };
        let (n, retry) = (SKELETON_MISSES as usize, SKELETON_RETRY as usize);
        let lookups = |w: &str, range: std::ops::RangeInclusive<usize>| -> Vec<usize> {
            let tried = range.filter(|&i| {
                let b = body(w, i);
                let miss = m.get(b.as_bytes(), Reads::default).unwrap_err();
                let tried = miss.skeleton.is_some();
                m.insert(miss, &format!("u{i}"), planned("P"));
                tried
            });
            tried.collect()
        };
        // The first review of a workload is tried (nothing missed yet), then the workload keeps
        // its own count.
        assert_eq!(lookups("web", 0..=0), [0]);
        assert_eq!(lookups("web", 1..=40), [1, 2, n + retry, n + 2 * retry]);
        // A remembered skeleton answers when it is tried again, and a hit makes the workload
        // worth trying every time.
        let again = body("web", 34).replace("u34", "u99");
        let hit_after = (1..=retry).find(|_| m.get(again.as_bytes(), Reads::default).is_ok());
        assert_eq!(hit_after, Some(retry - (40 - 34)));
        assert_eq!(lookups("web", 41..=41), [41]);
        // Workloads not seen yet share one count: one review each, every one missing.
        let tried: Vec<usize> = (1..=40)
            .filter(|&i| lookups(&format!("new{i}"), i..=i) == [i])
            .collect();
        assert_eq!(tried, [1, n + retry - 1, n + 2 * retry - 1]);
        // Pods without a generateName count with them.
        let bare = review("u0", r#"{"metadata":{"name":"db-0","namespace":"n0"}}"#);
        let tried = (0..retry).filter(|_| {
            m.get(bare.as_bytes(), Reads::default)
                .unwrap_err()
                .skeleton
                .is_some()
        });
        assert_eq!(tried.count(), 1);
    }
}
