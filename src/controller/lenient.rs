//! One unreadable object must not stall a controller (SPEC invariant 4, survival). The
//! watches read objects untyped and convert each one on its own: an object kube-pim's types
//! cannot read (possible only if a looser schema let it in) is skipped and logged, where a
//! typed watch would fail to decode its whole list, retry forever, and see no change of that
//! kind again.
//!
//! A skipped object keeps whatever readable version the cache held before (logged); one that
//! was never readable is not in the cache at all, so nothing is decided from it.

use kube::{
    Resource,
    api::{DynamicObject, ResourceExt},
    runtime::watcher::Event,
};
use serde::de::DeserializeOwned;

/// `o` as a `K`, or why not.
pub fn typed<K>(o: DynamicObject) -> Result<K, String>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let mut v = serde_json::to_value(&o).map_err(|e| e.to_string())?;
    if let Some(m) = v.as_object_mut() {
        // Items of a list come without their type; typed deserializers may want it.
        m.insert("apiVersion".into(), K::api_version(&()).into());
        m.insert("kind".into(), K::kind(&()).into());
    }
    serde_json::from_value(v).map_err(|e| e.to_string())
}

fn readable<K>(o: DynamicObject) -> Option<K>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let (ns, name) = (o.namespace(), o.name_any());
    match typed::<K>(o) {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!(kind = %K::kind(&()), namespace = ?ns, %name, error = %e,
                "skipping an object kube-pim cannot read (fix or delete it); the rest of its kind is unaffected");
            None
        }
    }
}

/// The typed event, without the objects that cannot be read (`None`: nothing left to pass on).
pub fn event<K>(ev: Event<DynamicObject>) -> Option<Event<K>>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    Some(match ev {
        Event::Apply(o) => Event::Apply(readable(o)?),
        Event::Delete(o) => Event::Delete(readable(o)?),
        Event::InitApply(o) => Event::InitApply(readable(o)?),
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
    })
}

/// A watch of every `K` that `wc` selects: untyped on the wire, typed one object at a time (see
/// the module's doc), retried with kube-runtime's default backoff. The stream every cache of
/// the controllers is fed from.
pub fn watch<K>(
    client: kube::Client,
    wc: kube::runtime::watcher::Config,
) -> impl futures::Stream<Item = Result<Event<K>, kube::runtime::watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Send + 'static,
{
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    let untyped: kube::Api<DynamicObject> =
        kube::Api::all_with(client, &kube::api::ApiResource::erase::<K>(&()));
    let typed = kube::runtime::watcher(untyped, wc)
        .default_backoff()
        .filter_map(|ev| {
            futures::future::ready(match ev {
                Ok(e) => event::<K>(e).map(Ok),
                Err(e) => Some(Err(e)),
            })
        });
    match fault_delay(
        std::env::var(FAULT_WATCH_DELAY).ok().as_deref(),
        &K::kind(&()),
    ) {
        None => typed.left_stream(),
        // Each change held back `delay` from when it arrived, in order (`buffered` keeps it).
        Some(delay) => {
            tracing::warn!(kind = %K::kind(&()), ?delay, "{FAULT_WATCH_DELAY} is set: this cache trails the apiserver on purpose (a test fault; never set it in production)");
            typed
                .map(move |ev| {
                    let due = tokio::time::Instant::now() + delay;
                    async move {
                        if matches!(ev, Ok(Event::Apply(_) | Event::Delete(_))) {
                            tokio::time::sleep_until(due).await;
                        }
                        ev
                    }
                })
                .buffered(4096)
                .right_stream()
        }
    }
}

/// The environment variable that holds back the changes a cache sees, as
/// `Kind=milliseconds[,Kind=milliseconds...]` (e.g. `EligibleAssignment=4000`): the cache-lag
/// tests use it to make one watch trail the others, as it can under load, and check that no
/// decision the operator takes from a lagging cache ends a request wrongly. Only live changes
/// are held back, not the initial list. Unset in production; nothing else reads it.
pub const FAULT_WATCH_DELAY: &str = "KUBE_PIM_FAULT_WATCH_DELAY";

/// How long `kind`'s changes are held back by a [`FAULT_WATCH_DELAY`] value, if at all.
fn fault_delay(value: Option<&str>, kind: &str) -> Option<std::time::Duration> {
    value?.split(',').find_map(|entry| {
        let (k, ms) = entry.trim().split_once('=')?;
        (k == kind)
            .then(|| ms.parse().ok())
            .flatten()
            .map(std::time::Duration::from_millis)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::EligibleAssignment;

    fn dynamic(v: serde_json::Value) -> DynamicObject {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn readable_objects_convert_and_unreadable_ones_are_skipped() {
        // As listed: no apiVersion or kind on the item.
        let good = dynamic(
            serde_json::json!({"metadata": {"name": "a", "namespace": "ns"},
            "spec": {"roleSetting": "rs", "subject": {"kind": "User", "name": "alice"}}}),
        );
        let ea: EligibleAssignment = typed(good.clone()).unwrap();
        assert_eq!(ea.spec.subject.name, "alice");
        let bad = dynamic(
            serde_json::json!({"metadata": {"name": "b", "namespace": "ns"},
            "spec": {"roleSetting": "rs", "subject": {"kind": "Robot", "name": "r2"}}}),
        );
        assert!(typed::<EligibleAssignment>(bad.clone()).is_err());
        assert!(matches!(
            event::<EligibleAssignment>(Event::InitApply(good)),
            Some(Event::InitApply(_))
        ));
        assert!(event::<EligibleAssignment>(Event::InitApply(bad.clone())).is_none());
        assert!(event::<EligibleAssignment>(Event::Apply(bad)).is_none());
        assert!(matches!(
            event::<EligibleAssignment>(Event::InitDone),
            Some(Event::InitDone)
        ));
    }

    #[test]
    fn the_watch_delay_fault_names_kinds_and_milliseconds() {
        let v = Some("RoleSetting=250, EligibleAssignment=4000");
        let ms = std::time::Duration::from_millis;
        assert_eq!(fault_delay(v, "EligibleAssignment"), Some(ms(4000)));
        assert_eq!(fault_delay(v, "RoleSetting"), Some(ms(250)));
        assert_eq!(fault_delay(v, "ActivationRequest"), None);
        assert_eq!(fault_delay(None, "RoleSetting"), None);
        assert_eq!(fault_delay(Some("RoleSetting=soon"), "RoleSetting"), None);
        assert_eq!(fault_delay(Some(""), "RoleSetting"), None);
    }
}
