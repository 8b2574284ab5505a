//! Feeds a controller its triggers at the pace it reconciles them, so that kube-runtime's
//! scheduler never holds more than a few dozen of them.
//!
//! Why: kube-runtime's scheduler keeps every triggered object in a map, a delay queue and (when
//! all reconcile slots are busy) a set, and none of them shrinks once drained. A restart over
//! 10,000 requests triggers each of them at once, several times (the cache's initial objects,
//! the bindings' owners, everything again when the replica starts acting), and the queues kept
//! the capacity for all of them: 13 of the 16 MB the operator held above its steady figure
//! after a restart (BENCHMARKS.md, run M). Here the waiting triggers queue in [`Paced`], which
//! gives its memory back as it drains, and only [`PACE_LIMIT`] of them at a time go on to the
//! scheduler.
//!
//! What it must never do is hold back a revocation. So:
//! - **No trigger is dropped.** A trigger for an object already waiting here is merged with it:
//!   the waiting one is handed on later, and its reconcile reads the cache as it is then, which
//!   already holds whatever caused the new trigger (the caches are written before their
//!   subscribers hear of it). A trigger for an object handed on but not yet started is queued
//!   again like any other.
//! - **Events go first.** Triggers of sweeps over every object (when the replica starts
//!   acting, the safety-net resync) wait in a lane of their own behind the triggers of
//!   something that happened (an assignment deleted, a binding edited, a request written),
//!   which keep their arrival order; an event for an object waiting in a sweep moves it
//!   ahead. So a revocation does not wait behind a sweep, where kube-runtime's scheduler put
//!   it at a random place among 10,000. Sweeps can only be held up by events arriving faster
//!   than reconciles, an overload in which nothing is on time.
//! - **The runner never idles while triggers wait:** [`PACE_LIMIT`] is four times the
//!   reconcile concurrency, and a slot is freed the moment a reconcile of the object starts
//!   (or the object turns out to be gone), not when it ends.
//! - **Nothing is handed on before the controller's cache has listed its objects** (no
//!   reconcile can start before), so no slot ages while the cache is still listing.
//! - **A slot that is never freed is freed anyway** after [`STALE`], and counted
//!   (`kube_pim_stale_triggers_total`), so no path this module does not know of can stall
//!   the controller; it can only let the scheduler grow as before.
//! - **Timed requeues bypass it**: an expiry or a start a reconcile asks for goes straight to
//!   the scheduler at its time, not behind triggers waiting here.

use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context as TaskContext, Poll},
    time::Duration,
};

use futures::{
    Future, FutureExt, Stream, StreamExt,
    future::BoxFuture,
    stream::{BoxStream, SelectAll},
    task::AtomicWaker,
};
use kube::runtime::{
    Controller,
    controller::{self, Action},
    reflector::{ObjectRef, Store},
    watcher,
};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
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

/// Queues above this many entries' capacity give memory back once mostly drained.
const SHRINK_ABOVE: usize = 256;

/// What a controller's pace is measured by.
#[derive(Clone, Default)]
pub struct PaceMetrics {
    /// Slots freed because they went [`STALE`].
    pub stale: Counter,
    /// Triggers handed on and not yet started, now.
    pub in_flight: Gauge,
}

/// The triggers of one controller handed on and not yet started, shared between the paced
/// stream (which hands them on) and the reconciler (which reports starts).
pub struct Pace {
    limit: usize,
    /// By [`key`], when each was first handed on.
    in_flight: Mutex<HashMap<u64, Instant>>,
    waker: AtomicWaker,
    metrics: PaceMetrics,
}

impl Pace {
    /// A pace of at most `limit` triggers between the queue and the reconciler.
    pub fn new(limit: usize, metrics: PaceMetrics) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            in_flight: Mutex::default(),
            waker: AtomicWaker::new(),
            metrics,
        })
    }

    /// A reconcile of the object started (or it was found gone): its slot is free.
    pub fn started(&self, namespace: Option<&str>, name: &str) {
        let freed = {
            let mut in_flight = self.lock();
            let freed = in_flight.remove(&key(namespace, name)).is_some();
            self.metrics.in_flight.set(in_flight.len() as i64);
            freed
        };
        if freed {
            self.waker.wake();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        // A panic while holding it leaves a plain map: still consistent.
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Triggers handed on and not yet started.
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

/// Which queue a waiting trigger is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    /// Something happened to the object or to what it depends on.
    Event,
    /// A sweep over every object (start-up, the safety-net resync): nothing known changed.
    Bulk,
}

/// `events` and `bulk` triggers, handed on at `pace` (see the module's doc) once `ready`
/// (the controller's own cache has listed its objects; until then no reconcile can start).
pub fn paced<K: Watched>(
    events: Vec<BoxStream<'static, ObjectRef<K>>>,
    bulk: Vec<BoxStream<'static, ObjectRef<K>>>,
    ready: BoxFuture<'static, ()>,
    pace: Arc<Pace>,
) -> Paced<K> {
    Paced {
        events: Some(futures::stream::select_all(events)),
        bulk: Some(futures::stream::select_all(bulk)),
        ready: Some(ready),
        urgent: VecDeque::new(),
        sweep: VecDeque::new(),
        queued: HashMap::new(),
        pace,
        stale: Box::pin(tokio::time::sleep(Duration::ZERO)),
    }
}

/// The stream [`paced`] returns.
pub struct Paced<K: Watched> {
    /// `None` once they ended.
    events: Option<SelectAll<BoxStream<'static, ObjectRef<K>>>>,
    bulk: Option<SelectAll<BoxStream<'static, ObjectRef<K>>>>,
    /// `None` once ready.
    ready: Option<BoxFuture<'static, ()>>,
    /// Waiting event triggers, in arrival order: handed on first.
    urgent: VecDeque<ObjectRef<K>>,
    /// Waiting bulk triggers, in arrival order. May hold entries already moved to `urgent`
    /// (`queued` says where each one is); they are skipped.
    sweep: VecDeque<ObjectRef<K>>,
    /// Every waiting trigger and its lane, to merge repeats.
    queued: HashMap<ObjectRef<K>, Lane>,
    pace: Arc<Pace>,
    /// Wakes the stream when the oldest slot goes stale.
    stale: Pin<Box<Sleep>>,
}

impl<K: Watched> Paced<K> {
    /// Takes in everything that arrived: the triggers come from the caches' subscriptions,
    /// which must not wait on a controller that is busy.
    fn take_in(&mut self, cx: &mut TaskContext<'_>) {
        while let Some(input) = &mut self.events {
            match input.poll_next_unpin(cx) {
                Poll::Ready(Some(mut r)) => {
                    // Not part of equality; a resourceVersion and uid per entry otherwise.
                    r.extra = Default::default();
                    // A sweep's trigger for this object becomes an event's: it goes ahead.
                    if self.queued.insert(r.clone(), Lane::Event) != Some(Lane::Event) {
                        self.urgent.push_back(r);
                    }
                }
                Poll::Ready(None) => self.events = None,
                Poll::Pending => break,
            }
        }
        while let Some(input) = &mut self.bulk {
            match input.poll_next_unpin(cx) {
                Poll::Ready(Some(mut r)) => {
                    r.extra = Default::default();
                    if !self.queued.contains_key(&r) {
                        self.queued.insert(r.clone(), Lane::Bulk);
                        self.sweep.push_back(r);
                    }
                }
                Poll::Ready(None) => self.bulk = None,
                Poll::Pending => break,
            }
        }
    }

    /// The next waiting trigger and its lane, dropping moved entries from the front of the
    /// bulk lane.
    fn front(&mut self) -> Option<(Lane, &ObjectRef<K>)> {
        if !self.urgent.is_empty() {
            return self.urgent.front().map(|r| (Lane::Event, r));
        }
        while let Some(r) = self.sweep.front() {
            if self.queued.get(r) == Some(&Lane::Bulk) {
                break;
            }
            self.sweep.pop_front();
        }
        self.sweep.front().map(|r| (Lane::Bulk, r))
    }

    fn pop(&mut self, lane: Lane) -> ObjectRef<K> {
        let q = match lane {
            Lane::Event => &mut self.urgent,
            Lane::Bulk => &mut self.sweep,
        };
        let r = q.pop_front().expect("front exists");
        if q.capacity() > SHRINK_ABOVE && q.len() < q.capacity() / 4 {
            q.shrink_to_fit();
        }
        self.queued.remove(&r);
        if self.queued.capacity() > SHRINK_ABOVE && self.queued.len() < self.queued.capacity() / 4 {
            self.queued.shrink_to_fit();
        }
        r
    }
}

impl<K: Watched> Stream for Paced<K> {
    type Item = ObjectRef<K>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        this.take_in(cx);
        if let Some(ready) = &mut this.ready {
            // Nothing handed on before a reconcile can start: it would only wait (and age).
            match ready.poll_unpin(cx) {
                Poll::Ready(()) => this.ready = None,
                Poll::Pending => return Poll::Pending,
            }
        }
        // Registered before the slots are read: a start after the read wakes this task.
        this.pace.waker.register(cx.waker());
        let now = Instant::now();
        let pace = this.pace.clone();
        let mut in_flight = pace.lock();
        let before = in_flight.len();
        in_flight.retain(|_, at| now.duration_since(*at) < STALE);
        let stale = before - in_flight.len();
        if stale > 0 {
            // A reconcile running for longer (the apiserver not answering), or a bug here.
            pace.metrics.stale.inc_by(stale as u64);
            tracing::warn!(
                stale,
                "triggers not started within {STALE:?}; their slots are freed. Check the apiserver's latency (a reconcile waiting on it holds the next one back); if it answers promptly, this is a bug in kube-pim: report it with this log"
            );
        }
        if let Some((lane, front)) = this.front() {
            let k = key_of(front);
            // One already handed on and not started takes no new slot: the scheduler merges
            // the two (or holds this one until the running reconcile ends).
            if in_flight.len() < pace.limit || in_flight.contains_key(&k) {
                in_flight.entry(k).or_insert(now);
                pace.metrics.in_flight.set(in_flight.len() as i64);
                drop(in_flight);
                return Poll::Ready(Some(this.pop(lane)));
            }
        } else if this.events.is_none() && this.bulk.is_none() {
            return Poll::Ready(None);
        }
        pace.metrics.in_flight.set(in_flight.len() as i64);
        // Wake when the oldest slot goes stale: to hand on what waits, and to count a slot
        // that leaked even when nothing waits.
        if let Some(oldest) = in_flight.values().min().copied() {
            drop(in_flight);
            this.stale.as_mut().reset(oldest + STALE);
            if this.stale.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    }
}

/// Runs a kube-runtime controller over `store` whose every trigger comes from `queue`, until
/// shutdown: each reconcile's start (and each object found gone) frees its slot in `pace`;
/// `failed` hears of every other error.
pub async fn drive<K, Ctx, F, Fut, E>(
    store: Store<K>,
    queue: Paced<K>,
    pace: Arc<Pace>,
    mut reconcile: F,
    error_policy: impl Fn(Arc<K>, &E, Arc<Ctx>) -> Action + Send + Sync + 'static,
    ctx: Arc<Ctx>,
    failed: impl Fn(&controller::Error<E, watcher::Error>),
) where
    K: Watched,
    Ctx: Send + Sync + 'static,
    F: FnMut(Arc<K>, Arc<Ctx>) -> Fut,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    E: std::error::Error + Send + 'static,
{
    let starts = pace.clone();
    // Every trigger comes through `queue`; the controller's own stream is none of them.
    Controller::for_shared_stream(futures::stream::pending(), store)
        .reconcile_on(queue)
        .with_config(super::controller_config())
        .shutdown_on_signal()
        .run(
            move |o: Arc<K>, ctx| {
                // Called as the runner takes the object from the cache, before the reconcile
                // runs: a trigger that arrives from here on is handed on anew.
                let m = o.meta();
                starts.started(
                    m.namespace.as_deref(),
                    m.name.as_deref().unwrap_or_default(),
                );
                reconcile(o, ctx)
            },
            error_policy,
            ctx,
        )
        .for_each(move |r| {
            match r {
                Err(controller::Error::ObjectNotFound(o)) => {
                    // Deleted after it was triggered: no reconcile starts for it.
                    pace.started(o.namespace.as_deref(), &o.name);
                }
                Err(e) => failed(&e),
                Ok(_) => {}
            }
            async {}
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RoleSetting;
    use futures::channel::mpsc::{UnboundedSender, unbounded};
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector;

    type Tx = UnboundedSender<ObjectRef<RoleSetting>>;

    fn r(name: &str) -> ObjectRef<RoleSetting> {
        ObjectRef::new(name)
    }

    /// A paced stream over an events channel and a bulk channel, ready at once.
    fn setup(limit: usize) -> (Tx, Tx, Paced<RoleSetting>, Arc<Pace>, PaceMetrics) {
        let (events, events_rx) = unbounded();
        let (bulk, bulk_rx) = unbounded();
        let metrics = PaceMetrics::default();
        let pace = Pace::new(limit, metrics.clone());
        let s = paced(
            vec![events_rx.boxed()],
            vec![bulk_rx.boxed()],
            futures::future::ready(()).boxed(),
            pace.clone(),
        );
        (events, bulk, s, pace, metrics)
    }

    /// What the stream hands on now, without waiting.
    fn ready(s: &mut Paced<RoleSetting>) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(Some(x)) = s.next().now_or_never() {
            out.push(x.name);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_the_limit_is_handed_on_until_reconciles_start() {
        let (tx, _bulk, mut s, pace, metrics) = setup(2);
        for n in ["a", "b", "c", "d"] {
            tx.unbounded_send(r(n)).unwrap();
        }
        assert_eq!(ready(&mut s), ["a", "b"]);
        assert_eq!((pace.in_flight(), metrics.in_flight.get()), (2, 2));
        pace.started(None, "b");
        assert_eq!(ready(&mut s), ["c"]);
        pace.started(None, "a");
        pace.started(None, "c");
        assert_eq!(ready(&mut s), ["d"]);
        assert_eq!((pace.in_flight(), metrics.in_flight.get()), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_wakes_the_stream() {
        let (tx, _bulk, mut s, pace, metrics) = setup(1);
        tx.unbounded_send(r("a")).unwrap();
        tx.unbounded_send(r("b")).unwrap();
        assert_eq!(s.next().await.unwrap().name, "a");
        let next = tokio::spawn(async move { s.next().await.map(|x| x.name) });
        tokio::task::yield_now().await;
        assert!(!next.is_finished());
        let t0 = Instant::now();
        pace.started(None, "a");
        assert_eq!(next.await.unwrap().as_deref(), Some("b"));
        // Woken by the start, not by the stale timer (the clock is paused: it would jump).
        assert!(t0.elapsed() < STALE, "woken only after {:?}", t0.elapsed());
        assert_eq!(metrics.stale.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn repeats_of_a_waiting_trigger_merge_and_order_is_kept() {
        let (tx, _bulk, mut s, pace, _) = setup(1);
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
        let (tx, _bulk, mut s, pace, _) = setup(1);
        tx.unbounded_send(r("a")).unwrap();
        assert_eq!(ready(&mut s), ["a"]);
        // Not started yet, triggered again (say, the assignment behind it was deleted): it is
        // handed on again, without a slot of its own.
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
    async fn events_go_ahead_of_a_sweep_and_take_their_object_out_of_it() {
        let (events, bulk, mut s, pace, _) = setup(1);
        for n in ["s1", "s2", "s3", "s4"] {
            bulk.unbounded_send(r(n)).unwrap();
        }
        assert_eq!(ready(&mut s), ["s1"]);
        // An event for an object not in the sweep, and one for an object waiting in it.
        events.unbounded_send(r("e")).unwrap();
        events.unbounded_send(r("s3")).unwrap();
        // Another sweep's trigger for an object already waiting: merged.
        bulk.unbounded_send(r("s2")).unwrap();
        let mut seen = Vec::new();
        for n in ["s1", "e", "s3", "s2", "s4"] {
            pace.started(None, n);
            seen.extend(ready(&mut s));
        }
        assert_eq!(seen, ["e", "s3", "s2", "s4"]);
        pace.started(None, "s4");
        assert!(ready(&mut s).is_empty());
        // Moved out of the sweep: once only.
        assert!(s.queued.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_never_freed_is_freed_when_stale_and_counted() {
        let (tx, _bulk, mut s, _pace, metrics) = setup(1);
        tx.unbounded_send(r("gone")).unwrap();
        tx.unbounded_send(r("b")).unwrap();
        assert_eq!(ready(&mut s), ["gone"]);
        let next = tokio::spawn(async move { s.next().await.map(|x| x.name) });
        tokio::time::sleep(STALE - Duration::from_millis(1)).await;
        assert!(!next.is_finished());
        assert_eq!(metrics.stale.get(), 0);
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(next.await.unwrap().as_deref(), Some("b"));
        assert_eq!(metrics.stale.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leaked_slot_is_counted_even_when_nothing_waits() {
        let (tx, _bulk, mut s, pace, metrics) = setup(4);
        tx.unbounded_send(r("leaked")).unwrap();
        assert_eq!(ready(&mut s), ["leaked"]);
        let drain = tokio::spawn(async move { s.next().await });
        tokio::time::sleep(STALE + Duration::from_millis(1)).await;
        assert_eq!(metrics.stale.get(), 1);
        assert_eq!((pace.in_flight(), metrics.in_flight.get()), (0, 0));
        drain.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_handed_on_or_ages_before_the_cache_is_ready() {
        let (events, events_rx) = unbounded();
        let metrics = PaceMetrics::default();
        let pace = Pace::new(1, metrics.clone());
        let (synced_tx, mut synced_rx) = tokio::sync::watch::channel(false);
        let mut s = paced(
            vec![events_rx.boxed()],
            vec![],
            async move {
                let _ = synced_rx.wait_for(|s| *s).await;
            }
            .boxed(),
            pace.clone(),
        );
        events.unbounded_send(r("a")).unwrap();
        events.unbounded_send(r("b")).unwrap();
        assert!(ready(&mut s).is_empty());
        let next = tokio::spawn(async move {
            let first = s.next().await.map(|x| x.name);
            (first, s)
        });
        tokio::time::sleep(STALE * 2).await;
        assert!(!next.is_finished());
        synced_tx.send_replace(true);
        let (first, mut s) = next.await.unwrap();
        assert_eq!(first.as_deref(), Some("a"));
        // "a" went on just now: its slot is not stale, so "b" waits for its start.
        assert!(ready(&mut s).is_empty());
        assert_eq!(metrics.stale.get(), 0);
        pace.started(None, "a");
        assert_eq!(ready(&mut s), ["b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn starts_are_per_namespace_and_name() {
        let (tx, _bulk, mut s, pace, _) = setup(1);
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
    async fn the_queues_give_their_memory_back_as_they_drain() {
        let (tx, bulk, mut s, _pace, _) = setup(100_000);
        for i in 0..5_000 {
            tx.unbounded_send(r(&format!("e{i}"))).unwrap();
            bulk.unbounded_send(r(&format!("b{i}"))).unwrap();
        }
        assert_eq!(ready(&mut s).len(), 10_000);
        assert!(s.urgent.capacity() <= SHRINK_ABOVE);
        assert!(s.sweep.capacity() <= SHRINK_ABOVE);
        assert!(s.queued.capacity() <= SHRINK_ABOVE);
    }

    #[tokio::test(start_paused = true)]
    async fn it_ends_when_the_triggers_end_and_nothing_waits() {
        let (tx, bulk, mut s, pace, _) = setup(1);
        tx.unbounded_send(r("a")).unwrap();
        tx.unbounded_send(r("b")).unwrap();
        drop((tx, bulk));
        assert_eq!(ready(&mut s), ["a"]);
        pace.started(None, "a");
        assert_eq!(s.next().await.unwrap().name, "b");
        assert!(s.next().await.is_none());
    }

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;

    fn cm(name: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.into());
        c.metadata.namespace = Some("ns".into());
        c
    }

    /// Through a real kube-runtime controller: every object triggered (more than the limit,
    /// some of them twice, some gone from the cache) is reconciled, and once it is quiet no
    /// slot is held and none went stale.
    #[tokio::test]
    async fn through_a_real_controller_every_trigger_is_reconciled_and_every_slot_freed() {
        let (store, mut writer) = reflector::store_shared::<ConfigMap>(16);
        let n = 3 * PACE_LIMIT;
        for i in 0..n {
            writer.apply_watcher_event(&watcher::Event::InitApply(cm(&format!("o{i}"))));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let (events, events_rx) = unbounded();
        let (bulk, bulk_rx) = unbounded();
        let metrics = PaceMetrics::default();
        let pace = Pace::new(PACE_LIMIT, metrics.clone());
        let queue = paced(
            vec![events_rx.boxed()],
            vec![bulk_rx.boxed()],
            futures::future::ready(()).boxed(),
            pace.clone(),
        );
        let reconciled = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let seen = reconciled.clone();
        let controller = tokio::spawn(drive(
            store,
            queue,
            pace.clone(),
            move |o: Arc<ConfigMap>, _ctx: Arc<()>| {
                seen.lock()
                    .unwrap()
                    .insert(o.metadata.name.clone().unwrap());
                async {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    Ok::<_, Never>(Action::await_change())
                }
            },
            |_, _, _| Action::await_change(),
            Arc::new(()),
            |e| panic!("{e}"),
        ));
        for i in 0..n {
            bulk.unbounded_send(ObjectRef::new(&format!("o{i}")).within("ns"))
                .unwrap();
            if i % 3 == 0 {
                events
                    .unbounded_send(ObjectRef::new(&format!("o{i}")).within("ns"))
                    .unwrap();
                events
                    .unbounded_send(ObjectRef::new(&format!("gone{i}")).within("ns"))
                    .unwrap();
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while reconciled.lock().unwrap().len() < n || pace.in_flight() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} reconciled, {} slots held",
                reconciled.lock().unwrap().len(),
                pace.in_flight()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(metrics.in_flight.get(), 0);
        assert_eq!(metrics.stale.get(), 0);
        controller.abort();
    }
}
