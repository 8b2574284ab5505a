//! Secondary indexes of the caches: requests and assignments by namespace. (Managed bindings
//! are found by owner in their own cache, [`super::binding_cache`].) kube-runtime's caches are
//! maps keyed by name and namespace with nothing else, so "this namespace's requests" or "this
//! request's bindings" meant scanning the whole cache, per reconcile, per admission review and
//! per assignment change. At 10,000 requests, assignments and bindings a restarted operator
//! spent a minute of CPU in those scans. An index is fed from the watch stream itself, before the cache, so
//! an object is in the index no later than it is in the cache (a stale entry, for an object
//! already gone from the cache, is skipped at lookup).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use kube::{
    Resource,
    runtime::{
        reflector::{ObjectRef, Store},
        watcher::Event,
    },
};

/// Names of the cached objects of kind `K` by namespace, as last seen on a watch.
///
/// Only names, under a namespace held once for all its objects: an object's namespace never
/// changes, so nothing more is needed to find and remove it. (A general index by any key, with
/// each object's key kept to move it and its name and namespace shared between two maps, took
/// about 200 bytes per object; this takes about 60.)
pub struct Index<K> {
    inner: RwLock<Inner>,
    kind: std::marker::PhantomData<fn() -> K>,
}

#[derive(Default)]
struct Inner {
    /// Namespace -> the names of the objects in it.
    by: Names,
    /// During a (re)list: the objects it has brought so far; at its end, all there is.
    listing: Option<Names>,
}

type Names = HashMap<Arc<str>, HashSet<Box<str>>>;

fn put(names: &mut Names, ns: &str, name: &str) {
    match names.get_mut(ns) {
        Some(in_ns) => {
            in_ns.insert(name.into());
        }
        None => {
            names.insert(ns.into(), HashSet::from([name.into()]));
        }
    }
}

fn id<K: Resource>(o: &K) -> (&str, &str) {
    let m = o.meta();
    (
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default(),
    )
}

impl<K: Resource<DynamicType = ()> + Clone> Index<K> {
    /// An index by namespace.
    pub fn by_namespace() -> Self {
        Self {
            inner: Default::default(),
            kind: std::marker::PhantomData,
        }
    }

    /// Follows one watch event.
    pub fn observe(&self, ev: &Event<K>) {
        let mut inner = self.inner.write().expect("index lock");
        match ev {
            Event::Apply(o) => {
                let (ns, name) = id(o);
                put(&mut inner.by, ns, name);
            }
            Event::Delete(o) => {
                let (ns, name) = id(o);
                if let Some(in_ns) = inner.by.get_mut(ns) {
                    in_ns.remove(name);
                    if in_ns.is_empty() {
                        inner.by.remove(ns);
                    }
                }
            }
            Event::Init => inner.listing = Some(Names::new()),
            Event::InitApply(o) => {
                // Found at once (as in the cache, which serves its old list until the new one
                // is complete), and noted as listed.
                let (ns, name) = id(o);
                put(&mut inner.by, ns, name);
                put(inner.listing.get_or_insert_with(Names::new), ns, name);
            }
            Event::InitDone => {
                // Objects deleted while the watch was down are not in the new list.
                if let Some(listed) = inner.listing.take() {
                    inner.by = listed;
                }
            }
        }
    }

    /// The cached objects in namespace `ns` for which `f` holds.
    pub fn select(&self, store: &Store<K>, ns: &str, f: impl Fn(&K) -> bool) -> Vec<Arc<K>> {
        let names: Vec<ObjectRef<K>> = {
            let inner = self.inner.read().expect("index lock");
            inner
                .by
                .get(ns)
                .into_iter()
                .flatten()
                .map(|name| ObjectRef::new(name).within(ns))
                .collect()
        };
        names
            .iter()
            .filter_map(|r| store.get(r))
            .filter(|o| f(o))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector::store;

    fn cm(ns: &str, name: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.namespace = Some(ns.into());
        c.metadata.name = Some(name.into());
        c
    }

    fn names(idx: &Index<ConfigMap>, ns: &str) -> Vec<String> {
        let mut v: Vec<String> = idx
            .inner
            .read()
            .unwrap()
            .by
            .get(ns)
            .map(|s| s.iter().map(|name| name.to_string()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn follows_applies_deletes_and_relists() {
        let idx = Index::<ConfigMap>::by_namespace();
        idx.observe(&Event::<ConfigMap>::Init);
        idx.observe(&Event::InitApply(cm("a", "x")));
        idx.observe(&Event::InitApply(cm("a", "y")));
        idx.observe(&Event::InitApply(cm("b", "z")));
        idx.observe(&Event::<ConfigMap>::InitDone);
        assert_eq!(names(&idx, "a"), ["x", "y"]);
        idx.observe(&Event::Apply(cm("b", "w")));
        idx.observe(&Event::Delete(cm("a", "x")));
        assert_eq!(names(&idx, "a"), ["y"]);
        assert_eq!(names(&idx, "b"), ["w", "z"]);
        // A relist after a watch gap: y and z were deleted meanwhile, v was created.
        idx.observe(&Event::<ConfigMap>::Init);
        idx.observe(&Event::InitApply(cm("b", "w")));
        idx.observe(&Event::InitApply(cm("b", "v")));
        idx.observe(&Event::<ConfigMap>::InitDone);
        assert_eq!(names(&idx, "a"), Vec::<String>::new());
        assert_eq!(names(&idx, "b"), ["v", "w"]);
    }

    #[test]
    fn selects_from_the_cache_in_one_namespace() {
        let (reader, mut writer) = store::<ConfigMap>();
        let idx = Index::<ConfigMap>::by_namespace();
        for ev in [
            Event::Init,
            Event::InitApply(cm("a", "x")),
            Event::InitApply(cm("a", "y")),
            Event::InitApply(cm("b", "x")),
            Event::InitDone,
        ] {
            idx.observe(&ev);
            writer.apply_watcher_event(&ev);
        }
        let mut got: Vec<String> = idx
            .select(&reader, "a", |_| true)
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        got.sort();
        assert_eq!(got, ["x", "y"]);
        let only_y = idx.select(&reader, "a", |c| c.metadata.name.as_deref() == Some("y"));
        assert_eq!(only_y.len(), 1);
        assert!(idx.select(&reader, "c", |_| true).is_empty());
    }
}
