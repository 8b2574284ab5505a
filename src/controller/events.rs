//! Kubernetes Events for transitions: one create call per Event, nothing kept.
//!
//! kube-runtime's `Recorder` keeps every Event it sent for six minutes (to fold repeats into a
//! series) and scans that cache on every publish. kube-pim's Events never repeat (each is one
//! transition of one request), so the cache only cost memory and CPU: at a few thousand
//! activations it held tens of thousands of Events, most of the operator's memory.

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event as K8sEvent},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
    runtime::events::{Event, EventType, Reporter},
};

/// Publishes Events as one reporting controller.
#[derive(Clone)]
pub struct Events {
    client: Client,
    reporter: Reporter,
}

impl Events {
    /// Events reported as `reporter`, written with `client`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self { client, reporter }
    }

    /// Creates `ev` about `regarding`, in its namespace.
    pub async fn publish(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let event = build(&self.reporter, ev, regarding, jiff::Timestamp::now());
        let ns = regarding.namespace.as_deref().unwrap_or("default");
        Api::<K8sEvent>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &event)
            .await
            .map(|_| ())
    }
}

/// The Event object (events.k8s.io/v1), named `<object>.<nanoseconds in hex>` as kubectl and
/// client-go name theirs.
fn build(
    reporter: &Reporter,
    ev: &Event,
    regarding: &ObjectReference,
    now: jiff::Timestamp,
) -> K8sEvent {
    K8sEvent {
        action: Some(ev.action.clone()),
        reason: Some(ev.reason.clone()),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding.clone()),
        note: ev.note.clone(),
        metadata: ObjectMeta {
            namespace: regarding.namespace.clone(),
            name: Some(format!(
                "{}.{:x}",
                regarding.name.as_deref().unwrap_or(&reporter.controller),
                now.as_nanosecond()
            )),
            ..Default::default()
        },
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        type_: Some(
            match ev.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .into(),
        ),
        related: ev.secondary.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_names_its_object_reporter_and_time() {
        let reporter = Reporter {
            controller: "kube-pim".into(),
            instance: None,
        };
        let regarding = ObjectReference {
            namespace: Some("payments".into()),
            name: Some("alice-x".into()),
            ..Default::default()
        };
        let ev = Event {
            type_: EventType::Warning,
            reason: "Revoked".into(),
            note: Some("why".into()),
            action: "Revoked".into(),
            secondary: None,
        };
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let e = build(&reporter, &ev, &regarding, now);
        assert_eq!(e.metadata.name.as_deref(), Some("alice-x.18fae27693b40000"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("payments"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reporting_instance.as_deref(), Some("kube-pim"));
        assert_eq!(
            (e.reason.as_deref(), e.note.as_deref()),
            (Some("Revoked"), Some("why"))
        );
        assert!(e.series.is_none());
    }
}
