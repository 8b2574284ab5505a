//! The caches of managed RoleBindings and ClusterRoleBindings: kube-pim's own, not
//! kube-runtime's reflector stores, because of what those cost per object.
//!
//! A reflector store keeps every object as a Kubernetes object (an `ObjectMeta` is 360 bytes
//! however little of it is set) under a key that copies its name, namespace, uid and
//! resourceVersion (285 bytes with its map entry); the owner index kept beside it added
//! 404 bytes per binding. At 10,000 active requests that was 10 MB of the operator's heap for
//! the name and owner of each binding alone (936 bytes per binding now, all in; measured with
//! jemalloc's `stats.allocated`, BENCHMARKS.md run M). Here each binding is one [`CachedBinding`]
//! (name, namespace, kube-pim's labels and annotations, roleRef, subjects), found by name in a
//! table that holds only a pointer to it, and by owner in a map keyed by the owner's uid as a
//! number.
//!
//! Bindings are not the primary kind of any controller (requests and assignments are, and
//! kube-runtime's controller needs its own store for those), so the cache only has to answer
//! lookups and tell the controllers what changed: [`Watch`] feeds it from the watch and hands
//! each change and deletion to every [`Trigger`] it gave out.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{Arc, RwLock},
};

use futures::StreamExt;
use hashbrown::HashTable;
use kube::{Client, runtime::watcher};

use super::{
    Trigger,
    cached::{Binding, CachedBinding},
    lenient, uid_key,
};

type Entry<K> = Arc<CachedBinding<K>>;

/// The managed bindings of kind `K` (RoleBinding or ClusterRoleBinding) as last seen on the
/// watch. Cheap to clone (shared).
pub struct BindingCache<K> {
    inner: Arc<RwLock<Inner<K>>>,
}

impl<K> Clone for BindingCache<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K> Default for BindingCache<K> {
    fn default() -> Self {
        Self {
            inner: Arc::new(RwLock::new(Inner {
                hasher: RandomState::new(),
                by_name: HashTable::new(),
                by_owner: HashMap::new(),
                listing: None,
            })),
        }
    }
}

struct Inner<K> {
    hasher: RandomState,
    /// Every binding, hashed by (namespace, name).
    by_name: HashTable<Entry<K>>,
    /// Bindings by the uid of the request or assignment that owns them (see
    /// [`crate::decide::bindings::owner_uid`]); most owners have one.
    by_owner: HashMap<u128, Vec<Entry<K>>>,
    /// During a (re)list: what it has brought so far.
    listing: Option<HashTable<Entry<K>>>,
}

/// What one watch event changed, for the triggers.
pub struct Changes<K> {
    /// Bindings created or updated (as they are now).
    pub changed: Vec<Entry<K>>,
    /// Bindings deleted (as last seen).
    pub deleted: Vec<Entry<K>>,
}

fn key_of<K>(b: &CachedBinding<K>) -> (&str, &str) {
    (b.namespace().unwrap_or_default(), b.name())
}

fn owner_of<K>(b: &CachedBinding<K>) -> Option<u128> {
    crate::decide::bindings::owner_uid(b.labels()).map(uid_key)
}

impl<K> Inner<K> {
    fn hash(&self, namespace: &str, name: &str) -> u64 {
        self.hasher.hash_one((namespace, name))
    }

    /// Puts `b` into `table` in place of any binding of its name; returns that one.
    fn put(hasher: &RandomState, table: &mut HashTable<Entry<K>>, b: Entry<K>) -> Option<Entry<K>> {
        let hash = hasher.hash_one(key_of(&b));
        match table.entry(
            hash,
            |e| key_of(e) == key_of(&b),
            |e| hasher.hash_one(key_of(e)),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut e) => {
                Some(std::mem::replace(e.get_mut(), b))
            }
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(b);
                None
            }
        }
    }

    fn index(&mut self, b: &Entry<K>) {
        if let Some(owner) = owner_of(b) {
            self.by_owner.entry(owner).or_default().push(b.clone());
        }
    }

    fn unindex(&mut self, b: &Entry<K>) {
        if let Some(owner) = owner_of(b)
            && let Some(owned) = self.by_owner.get_mut(&owner)
        {
            owned.retain(|o| !Arc::ptr_eq(o, b));
            if owned.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
    }

    fn insert(&mut self, b: Entry<K>) {
        if let Some(old) = Self::put(&self.hasher, &mut self.by_name, b.clone()) {
            self.unindex(&old);
        }
        self.index(&b);
    }

    fn remove(&mut self, namespace: &str, name: &str) -> Option<Entry<K>> {
        let hash = self.hash(namespace, name);
        let (old, _) = self
            .by_name
            .find_entry(hash, |e| key_of(e) == (namespace, name))
            .ok()?
            .remove();
        self.unindex(&old);
        Some(old)
    }

    /// A relist is complete: `listed` is every binding now. Those not in it were deleted
    /// while the watch was down (reported, so their owners put them back or let them go);
    /// those new or different are changes.
    fn relisted(&mut self, listed: HashTable<Entry<K>>) -> Changes<K>
    where
        K: PartialEq,
    {
        let (mut changed, mut deleted) = (Vec::new(), Vec::new());
        for b in &listed {
            let hash = self.hasher.hash_one(key_of(b));
            match self.by_name.find(hash, |e| key_of(e) == key_of(b)) {
                Some(old) if old == b => {}
                _ => changed.push(b.clone()),
            }
        }
        for old in &self.by_name {
            let hash = self.hasher.hash_one(key_of(old));
            if listed.find(hash, |e| key_of(e) == key_of(old)).is_none() {
                deleted.push(old.clone());
            }
        }
        self.by_name = listed;
        self.by_owner.clear();
        let all: Vec<Entry<K>> = self.by_name.iter().cloned().collect();
        for b in &all {
            self.index(b);
        }
        Changes { changed, deleted }
    }
}

impl<K: PartialEq> BindingCache<K> {
    /// Follows one watch event; returns what it changed.
    pub fn apply(&self, ev: watcher::Event<CachedBinding<K>>) -> Changes<K> {
        let mut inner = self.inner.write().expect("binding cache lock");
        let none = || Changes {
            changed: Vec::new(),
            deleted: Vec::new(),
        };
        match ev {
            watcher::Event::Apply(b) => {
                let b = Arc::new(b);
                inner.insert(b.clone());
                Changes {
                    changed: vec![b],
                    deleted: Vec::new(),
                }
            }
            watcher::Event::Delete(b) => {
                let (ns, name) = key_of(&b);
                // As last seen here, where the owner labels were kube-pim's; the event's own
                // copy is the object's final state, which its owners may not be told by.
                let gone = inner.remove(ns, name).unwrap_or_else(|| Arc::new(b));
                Changes {
                    changed: Vec::new(),
                    deleted: vec![gone],
                }
            }
            watcher::Event::Init => {
                inner.listing = Some(HashTable::new());
                none()
            }
            watcher::Event::InitApply(b) => {
                let hasher = inner.hasher.clone();
                let listing = inner.listing.get_or_insert_with(HashTable::new);
                Inner::put(&hasher, listing, Arc::new(b));
                none()
            }
            watcher::Event::InitDone => {
                let listed = inner.listing.take().unwrap_or_default();
                inner.relisted(listed)
            }
        }
    }
}

impl<K> BindingCache<K> {
    /// The binding `name` in `namespace` (`None` for a ClusterRoleBinding).
    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<Entry<K>> {
        let inner = self.inner.read().expect("binding cache lock");
        let ns = namespace.unwrap_or_default();
        inner
            .by_name
            .find(inner.hash(ns, name), |e| key_of(e) == (ns, name))
            .cloned()
    }

    /// Every binding.
    pub fn state(&self) -> Vec<Entry<K>> {
        let inner = self.inner.read().expect("binding cache lock");
        inner.by_name.iter().cloned().collect()
    }

    /// A binding for which `f` holds, if any.
    pub fn find(&self, f: impl Fn(&CachedBinding<K>) -> bool) -> Option<Entry<K>> {
        let inner = self.inner.read().expect("binding cache lock");
        inner.by_name.iter().find(|b| f(b)).cloned()
    }

    /// The bindings whose owner label names `owner_uid`, for which `f` holds.
    pub fn owned_by(
        &self,
        owner_uid: &str,
        f: impl Fn(&CachedBinding<K>) -> bool,
    ) -> Vec<Entry<K>> {
        let inner = self.inner.read().expect("binding cache lock");
        inner
            .by_owner
            .get(&uid_key(owner_uid))
            .into_iter()
            .flatten()
            // The label itself, not only its number: a uid that is not a UUID is hashed.
            .filter(|b| crate::decide::bindings::owner_uid(b.labels()) == Some(owner_uid))
            .filter(|b| f(b))
            .cloned()
            .collect()
    }

    /// How many bindings there are.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.read().expect("binding cache lock").by_name.len()
    }

    /// Whether there are none.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The watch of one kind of managed binding: its cache and the triggers it feeds.
pub struct Watch<K> {
    client: Client,
    wc: watcher::Config,
    cache: BindingCache<K>,
    changed: Vec<tokio::sync::mpsc::UnboundedSender<Entry<K>>>,
    deleted: Vec<tokio::sync::mpsc::UnboundedSender<Entry<K>>>,
    synced: tokio::sync::watch::Sender<bool>,
}

impl<K: Binding + PartialEq + Send + Sync> Watch<K> {
    /// A watch of the `K`s that `wc` selects.
    pub fn new(client: Client, wc: watcher::Config) -> Self {
        Self {
            client,
            wc,
            cache: BindingCache::default(),
            changed: Vec::new(),
            deleted: Vec::new(),
            synced: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Turns true once the cache has listed its objects.
    pub fn synced(&self) -> (String, tokio::sync::watch::Receiver<bool>) {
        (K::kind(&()).into_owned(), self.synced.subscribe())
    }

    /// Changes and deletions for one more controller. (Unbounded: a controller takes its
    /// triggers as they come, into its queue, where they are deduplicated by object.)
    pub fn trigger(&mut self) -> Trigger<CachedBinding<K>> {
        let (changed_tx, mut changed_rx) = tokio::sync::mpsc::unbounded_channel();
        let (deleted_tx, deleted_rx) = tokio::sync::mpsc::unbounded_channel();
        self.changed.push(changed_tx);
        self.deleted.push(deleted_tx);
        Trigger {
            changed: futures::stream::poll_fn(move |cx| changed_rx.poll_recv(cx)).boxed(),
            deleted: deleted_rx,
        }
    }

    /// Starts the watch; returns the cache it keeps.
    pub fn start(self) -> BindingCache<K> {
        let Self {
            client,
            wc,
            cache,
            changed,
            deleted,
            synced,
        } = self;
        let feed = cache.clone();
        let stream = lenient::watch::<K>(client, wc).for_each(move |ev| {
                match ev {
                    Ok(ev) => {
                        let init_done = matches!(ev, watcher::Event::InitDone);
                        let c = feed.apply(projected(ev));
                        for b in c.changed {
                            for tx in &changed {
                                let _ = tx.send(b.clone());
                            }
                        }
                        for b in c.deleted {
                            for tx in &deleted {
                                let _ = tx.send(b.clone());
                            }
                        }
                        if init_done {
                            synced.send_replace(true);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, kind = %K::kind(&()), "watch error; retrying with backoff")
                    }
                }
                async {}
            });
        tokio::spawn(stream);
        cache
    }
}

/// A watch event of whole bindings as one of their projections.
fn projected<K: Binding>(ev: watcher::Event<K>) -> watcher::Event<CachedBinding<K>> {
    match ev {
        watcher::Event::Apply(b) => watcher::Event::Apply(b.into()),
        watcher::Event::Delete(b) => watcher::Event::Delete(b.into()),
        watcher::Event::InitApply(b) => watcher::Event::InitApply(b.into()),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
    use watcher::Event;

    use super::*;
    use crate::decide::bindings::{LABEL_REQUEST_UID, MANAGED_BY};

    const A: &str = "0b9f3a1e-2c4d-4e5f-8a6b-7c8d9e0f1a2b";
    const B: &str = "1c0e4b2f-3d5e-4f60-9b7c-8d9e0f1a2b3c";

    fn rb(ns: &str, name: &str, owner: &str, role: &str) -> CachedBinding<RoleBinding> {
        let mut b = RoleBinding::default();
        b.metadata.namespace = Some(ns.into());
        b.metadata.name = Some(name.into());
        b.metadata.labels = Some(BTreeMap::from([
            (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
            (LABEL_REQUEST_UID.to_string(), owner.to_string()),
        ]));
        b.role_ref.name = role.into();
        b.into()
    }

    fn names<K>(bs: &[Entry<K>]) -> Vec<String> {
        let mut v: Vec<String> = bs
            .iter()
            .map(|b| format!("{}/{}", b.namespace().unwrap_or("-"), b.name()))
            .collect();
        v.sort();
        v
    }

    fn listed(
        cache: &BindingCache<RoleBinding>,
        bs: Vec<CachedBinding<RoleBinding>>,
    ) -> Changes<RoleBinding> {
        assert!(names(&cache.apply(Event::Init).changed).is_empty());
        for b in bs {
            let c = cache.apply(Event::InitApply(b));
            assert!(
                c.changed.is_empty() && c.deleted.is_empty(),
                "nothing is told until the list ends"
            );
        }
        cache.apply(Event::InitDone)
    }

    #[test]
    fn finds_bindings_by_name_and_by_owner() {
        let cache = BindingCache::default();
        let c = listed(
            &cache,
            vec![
                rb("a", "x", A, "view"),
                rb("a", "y", A, "edit"),
                rb("b", "x", B, "view"),
            ],
        );
        assert_eq!(names(&c.changed), ["a/x", "a/y", "b/x"]);
        assert!(c.deleted.is_empty());
        assert_eq!(cache.get(Some("a"), "x").unwrap().role_ref.name, "view");
        assert_eq!(cache.get(Some("b"), "x").unwrap().role_ref.name, "view");
        assert!(cache.get(Some("b"), "y").is_none());
        assert!(
            cache.get(None, "x").is_none(),
            "a ClusterRoleBinding is another name"
        );
        assert_eq!(names(&cache.owned_by(A, |_| true)), ["a/x", "a/y"]);
        assert_eq!(
            names(&cache.owned_by(A, |b| b.role_ref.name == "edit")),
            ["a/y"]
        );
        assert_eq!(names(&cache.owned_by(B, |_| true)), ["b/x"]);
        assert!(cache.owned_by("not-a-uuid", |_| true).is_empty());
        assert_eq!(cache.len(), 3);
        assert!(cache.find(|b| b.role_ref.name == "edit").is_some());
        assert!(cache.find(|b| b.role_ref.name == "admin").is_none());
    }

    #[test]
    fn follows_updates_deletions_and_owner_changes() {
        let cache = BindingCache::default();
        listed(&cache, vec![rb("a", "x", A, "view")]);
        // Relabelled to another owner (by hand): the owner index moves with it.
        let c = cache.apply(Event::Apply(rb("a", "x", B, "view")));
        assert_eq!(names(&c.changed), ["a/x"]);
        assert!(cache.owned_by(A, |_| true).is_empty());
        assert_eq!(names(&cache.owned_by(B, |_| true)), ["a/x"]);
        assert_eq!(cache.len(), 1);
        // Deleted with its labels stripped (the final state the watch sends): its owner is
        // still the one told.
        let mut stripped = RoleBinding::default();
        stripped.metadata.namespace = Some("a".into());
        stripped.metadata.name = Some("x".into());
        let c = cache.apply(Event::Delete(stripped.into()));
        assert_eq!(names(&c.deleted), ["a/x"]);
        assert_eq!(
            crate::decide::bindings::owner_uid(c.deleted[0].labels()),
            Some(B)
        );
        assert!(c.changed.is_empty());
        assert!(cache.is_empty() && cache.owned_by(B, |_| true).is_empty());
    }

    #[test]
    fn a_relist_reports_what_went_and_what_changed_while_the_watch_was_down() {
        let cache = BindingCache::default();
        listed(
            &cache,
            vec![
                rb("a", "x", A, "view"),
                rb("a", "y", A, "view"),
                rb("b", "z", B, "view"),
            ],
        );
        // Meanwhile: y deleted, z's subjects edited by hand, w created; x untouched.
        let mut z = rb("b", "z", B, "view");
        z.subjects = vec![k8s_openapi::api::rbac::v1::Subject {
            kind: "User".into(),
            name: "mallory".into(),
            ..Default::default()
        }]
        .into();
        let c = listed(
            &cache,
            vec![rb("a", "x", A, "view"), z, rb("b", "w", B, "view")],
        );
        assert_eq!(names(&c.changed), ["b/w", "b/z"], "x is as it was");
        assert_eq!(names(&c.deleted), ["a/y"]);
        assert_eq!(names(&cache.state()), ["a/x", "b/w", "b/z"]);
        assert_eq!(names(&cache.owned_by(A, |_| true)), ["a/x"]);
        assert_eq!(names(&cache.owned_by(B, |_| true)), ["b/w", "b/z"]);
        assert_eq!(
            cache.get(Some("b"), "z").unwrap().subjects[0].name,
            "mallory"
        );
    }

    #[test]
    fn cluster_role_bindings_are_keyed_by_name_alone() {
        let cache = BindingCache::<ClusterRoleBinding>::default();
        let mut crb = ClusterRoleBinding::default();
        crb.metadata.name = Some("kubepim-x".into());
        crb.metadata.labels = Some(BTreeMap::from([
            (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
            (LABEL_REQUEST_UID.to_string(), A.to_string()),
        ]));
        cache.apply(Event::Apply(crb.clone().into()));
        assert_eq!(cache.get(None, "kubepim-x").unwrap().name(), "kubepim-x");
        assert_eq!(names(&cache.owned_by(A, |_| true)), ["-/kubepim-x"]);
        cache.apply(Event::Delete(crb.into()));
        assert!(cache.get(None, "kubepim-x").is_none());
    }
}
