//! Feeds a controller its triggers at the pace it reconciles them, so that kube-runtime's
//! scheduler never holds more than a few dozen of them.
//!
//! Why: kube-runtime's scheduler keeps every triggered object in a map, a delay queue and (when
//! all reconcile slots are busy) a set, and none of them shrinks once drained. A restart over
//! 10,000 requests triggers each of them at once, several times (the cache's initial objects,
//! the bindings' owners, everything again when the replica starts acting), and the queues kept
//! the capacity for all of them: 13 of the 16 MB the operator held above its steady figure
//! after a restart (BENCHMARKS.md, run M). Here the waiting triggers queue in [`Paced`], which
//! gives its memory back once drained, and only [`PACE_LIMIT`] of them at a time go on to the
//! scheduler.
//!
//! What it must never do is hold back a revocation. So:
//! - **No trigger is dropped.** A trigger for an object already waiting here is merged with it:
//!   the waiting one is handed on later, and its reconcile reads the cache as it is then, which
//!   already holds whatever caused the new trigger (the caches are written before their
//!   subscribers hear of it). A trigger for an object handed on but not yet started is queued
//!   again like any other.
//! - **Order is arrival order**, as in the scheduler (whose entries here all run at once).
//! - **The runner never idles while triggers wait:** [`PACE_LIMIT`] is four times the
//!   reconcile concurrency, and a slot is freed the moment a reconcile of the object starts
//!   (or the object turns out to be gone), not when it ends.
//! - **A slot that is never freed is freed anyway** after [`STALE`], so no path this module
//!   does not know of can stall the controller; it can only let the scheduler grow as before.
//! - **Timed requeues bypass it**: an expiry or a start a reconcile asks for goes straight to
//!   the scheduler at its time, not behind triggers waiting here.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context as TaskContext, Poll},
    time::Duration,
};

use futures::{Stream, StreamExt, stream::BoxStream, task::AtomicWaker};
use kube::runtime::reflector::ObjectRef;
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep};

use super::{Watched, hash_of};

/// Triggers handed on to the scheduler and not yet started, at most: four times the reconcile
/// concurrency, so that slots freed by finished reconciles always find work waiting.
pub const PACE_LIMIT: usize = 4 * super::RECONCILE_CONCURRENCY as usize;

/// How long a trigger handed on may go unstarted before its slot is freed regardless. Far
/// beyond any real wait (the scheduler holds at most [`PACE_LIMIT`] triggers and runs 16 at
/// once): only a reconcile of the same object running that long (the next waits for it) or
/// a path that never starts one reaches it.
pub const STALE: Duration = Duration::from_secs(30);

/// Queues above this many entries' capacity are given back once drained.
const SHRINK_ABOVE: usize = 256;

/// The triggers of one controller handed on and not yet started, shared between the paced
/// stream (which hands them on) and the reconciler (which reports starts).
pub struct Pace {
    limit: usize,
    /// By [`key`], when each was first handed on.
    in_flight: Mutex<HashMap<u64, Instant>>,
    waker: AtomicWaker,
    /// Slots freed because they went [`STALE`].
    stale: Counter,
}

impl Pace {
    /// A pace of at most `limit` triggers between the queue and the reconciler; slots freed
    /// because they went stale are counted in `stale`.
    pub fn new(limit: usize, stale: Counter) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            in_flight: Mutex::default(),
            waker: AtomicWaker::new(),
            stale,
        })
    }

    /// A reconcile of the object started (or it was found gone): its slot is free.
    pub fn started(&self, namespace: Option<&str>, name: &str) {
        let freed = self.lock().remove(&key(namespace, name)).is_some();
        if freed {
            self.waker.wake();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        // A panic while holding it leaves a plain map: still consistent.
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Triggers handed on and not yet started (for tests and logs).
    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }
}

/// A slot's key: the object's namespace and name. Two objects sharing a hash share a slot,
/// which only lets one more trigger through early; which triggers are handed on never
/// depends on it.
fn key(namespace: Option<&str>, name: &str) -> u64 {
    hash_of((namespace, name))
}

fn key_of<K: Watched>(r: &ObjectRef<K>) -> u64 {
    key(r.namespace.as_deref(), &r.name)
}

/// `triggers`, handed on at `pace` (see the module's doc).
pub fn paced<K: Watched>(
    triggers: impl Stream<Item = ObjectRef<K>> + Send + 'static,
    pace: Arc<Pace>,
) -> Paced<K> {
    Paced {
        input: Some(triggers.boxed()),
        queue: VecDeque::new(),
        queued: HashSet::new(),
        pace,
        stale: Box::pin(tokio::time::sleep(Duration::ZERO)),
    }
}

/// The stream [`paced`] returns.
pub struct Paced<K: Watched> {
    /// `None` once the triggers ended.
    input: Option<BoxStream<'static, ObjectRef<K>>>,
    /// Waiting triggers, in arrival order; `queued` holds the same, to merge repeats.
    queue: VecDeque<ObjectRef<K>>,
    queued: HashSet<ObjectRef<K>>,
    pace: Arc<Pace>,
    /// Wakes the stream when the oldest slot goes stale.
    stale: Pin<Box<Sleep>>,
}

impl<K: Watched> Stream for Paced<K> {
    type Item = ObjectRef<K>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // Take in everything that arrived: the triggers come from the caches' subscriptions,
        // which must not wait on a controller that is busy.
        while let Some(input) = &mut this.input {
            match input.poll_next_unpin(cx) {
                Poll::Ready(Some(r)) => {
                    if !this.queued.contains(&r) {
                        this.queued.insert(r.clone());
                        this.queue.push_back(r);
                    }
                }
                Poll::Ready(None) => this.input = None,
                Poll::Pending => break,
            }
        }
        let Some(front) = this.queue.front() else {
            return if this.input.is_none() {
                Poll::Ready(None)
            } else {
                Poll::Pending
            };
        };
        // Registered before the slots are read: a start after the read wakes this task.
        this.pace.waker.register(cx.waker());
        let now = Instant::now();
        let mut in_flight = this.pace.lock();
        let before = in_flight.len();
        in_flight.retain(|_, at| now.duration_since(*at) < STALE);
        let stale = before - in_flight.len();
        if stale > 0 {
            // A reconcile running for longer (the apiserver not answering), or a bug here.
            this.pace.stale.inc_by(stale as u64);
            tracing::warn!(
                stale,
                "triggers not started within {STALE:?}; their slots are freed"
            );
        }
        let k = key_of(front);
        // One already handed on and not started takes no new slot: the scheduler merges the
        // two (or holds this one until the running reconcile ends).
        if in_flight.len() < this.pace.limit || in_flight.contains_key(&k) {
            in_flight.entry(k).or_insert(now);
            drop(in_flight);
            let r = this.queue.pop_front().expect("front exists");
            this.queued.remove(&r);
            if this.queue.is_empty() && this.queue.capacity() > SHRINK_ABOVE {
                this.queue.shrink_to_fit();
                this.queued.shrink_to_fit();
            }
            return Poll::Ready(Some(r));
        }
        let oldest = in_flight.values().min().copied().unwrap_or(now);
        drop(in_flight);
        this.stale.as_mut().reset(oldest + STALE);
        if this.stale.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RoleSetting;
    use futures::FutureExt;

    fn r(name: &str) -> ObjectRef<RoleSetting> {
        ObjectRef::new(name)
    }

    /// What the stream hands on now, without waiting.
    fn ready(s: &mut Paced<RoleSetting>) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(Some(x)) = s.next().now_or_never() {
            out.push(x.name);
        }
        out
    }

    fn channel() -> (
        futures::channel::mpsc::UnboundedSender<ObjectRef<RoleSetting>>,
        futures::channel::mpsc::UnboundedReceiver<ObjectRef<RoleSetting>>,
    ) {
        futures::channel::mpsc::unbounded()
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_the_limit_is_handed_on_until_reconciles_start() {
        let (tx, rx) = channel();
        let pace = Pace::new(2, Counter::default());
        let mut s = paced(rx, pace.clone());
        for n in ["a", "b", "c", "d"] {
            tx.unbounded_send(r(n)).unwrap();
        }
        assert_eq!(ready(&mut s), ["a", "b"]);
        assert_eq!(pace.in_flight(), 2);
        pace.started(None, "b");
        assert_eq!(ready(&mut s), ["c"]);
        pace.started(None, "a");
        pace.started(None, "c");
        assert_eq!(ready(&mut s), ["d"]);
        assert_eq!(pace.in_flight(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_wakes_the_stream() {
        let (tx, rx) = channel();
        let pace = Pace::new(1, Counter::default());
        let mut s = paced(rx, pace.clone());
        tx.unbounded_send(r("a")).unwrap();
        tx.unbounded_send(r("b")).unwrap();
        assert_eq!(s.next().await.unwrap().name, "a");
        let next = tokio::spawn(async move { s.next().await.map(|x| x.name) });
        tokio::task::yield_now().await;
        assert!(!next.is_finished());
        pace.started(None, "a");
        assert_eq!(next.await.unwrap().as_deref(), Some("b"));
    }

    #[tokio::test(start_paused = true)]
    async fn repeats_of_a_waiting_trigger_merge_and_order_is_kept() {
        let (tx, rx) = channel();
        let pace = Pace::new(1, Counter::default());
        let mut s = paced(rx, pace.clone());
        for n in ["a", "b", "c", "b", "a", "c", "d"] {
            tx.unbounded_send(r(n)).unwrap();
        }
        let mut seen = Vec::new();
        for n in ["a", "b", "c", "d"] {
            seen.extend(ready(&mut s));
            pace.started(None, n);
        }
        // All arrived before the first poll: each object waited once, in first-arrival order.
        assert_eq!(seen, ["a", "b", "c", "d"]);
        assert!(ready(&mut s).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_trigger_after_one_was_handed_on_is_handed_on_again() {
        let (tx, rx) = channel();
        let pace = Pace::new(1, Counter::default());
        let mut s = paced(rx, pace.clone());
        tx.unbounded_send(r("a")).unwrap();
        assert_eq!(ready(&mut s), ["a"]);
        // Not started yet, triggered again (say, the assignment behind it was deleted): it is
        // handed on again, without a slot of its own, ahead of nothing else.
        tx.unbounded_send(r("a")).unwrap();
        tx.unbounded_send(r("b")).unwrap();
        assert_eq!(ready(&mut s), ["a"]);
        assert_eq!(pace.in_flight(), 1);
        pace.started(None, "a");
        assert_eq!(ready(&mut s), ["b"]);
        // Started, then triggered again: handed on again.
        pace.started(None, "b");
        tx.unbounded_send(r("b")).unwrap();
        assert_eq!(ready(&mut s), ["b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_never_freed_is_freed_when_stale() {
        let (tx, rx) = channel();
        let stale = Counter::default();
        let pace = Pace::new(1, stale.clone());
        let mut s = paced(rx, pace.clone());
        tx.unbounded_send(r("gone")).unwrap();
        tx.unbounded_send(r("b")).unwrap();
        assert_eq!(ready(&mut s), ["gone"]);
        let next = tokio::spawn(async move { s.next().await.map(|x| x.name) });
        tokio::time::sleep(STALE - Duration::from_millis(1)).await;
        assert!(!next.is_finished());
        assert_eq!(stale.get(), 0);
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(next.await.unwrap().as_deref(), Some("b"));
        assert_eq!(stale.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn starts_are_per_namespace_and_name() {
        let (tx, rx) = channel();
        let pace = Pace::new(1, Counter::default());
        let mut s = paced(rx, pace.clone());
        tx.unbounded_send(r("a").within("x")).unwrap();
        tx.unbounded_send(r("a").within("y")).unwrap();
        assert_eq!(ready(&mut s), ["a"]);
        pace.started(Some("y"), "a");
        pace.started(None, "a");
        assert!(ready(&mut s).is_empty());
        pace.started(Some("x"), "a");
        assert_eq!(ready(&mut s), ["a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_gives_its_memory_back_once_drained() {
        let (tx, rx) = channel();
        let pace = Pace::new(10_000, Counter::default());
        let mut s = paced(rx, pace.clone());
        for i in 0..5_000 {
            tx.unbounded_send(r(&format!("o{i}"))).unwrap();
        }
        assert_eq!(ready(&mut s).len(), 5_000);
        assert!(s.queue.capacity() <= SHRINK_ABOVE);
        assert!(s.queued.capacity() <= SHRINK_ABOVE);
    }

    #[tokio::test(start_paused = true)]
    async fn it_ends_when_the_triggers_end_and_nothing_waits() {
        let (tx, rx) = channel();
        let pace = Pace::new(1, Counter::default());
        let mut s = paced(rx, pace.clone());
        tx.unbounded_send(r("a")).unwrap();
        tx.unbounded_send(r("b")).unwrap();
        drop(tx);
        assert_eq!(ready(&mut s), ["a"]);
        pace.started(None, "a");
        assert_eq!(s.next().await.unwrap().name, "b");
        assert!(s.next().await.is_none());
    }
}
