//! The residual-access check (SPEC invariant 8): after a request's access ends, the operator
//! asks the apiserver, as the former requester, whether the role's permissions are really gone
//! ([`crate::decide::residual`] picks the questions). The answer is recorded on the request as
//! the `ResidualAccess` condition before kube-pim's finalizer goes, so the check survives an
//! operator restart; a positive answer is also a Warning Event, an audit line and a log line.
//!
//! The apiserver's authorizer follows binding deletions within moments, not at once: a probe
//! still allowed in the first seconds after the revocation is asked again before it counts.
//! Access that another kube-pim binding gives the requester (an overlapping activation, an
//! Active assignment) is not residual.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures::future::join_all;
use k8s_openapi::api::rbac::v1::Subject;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        events::{Event, EventType},
        reflector::ObjectRef,
    },
};
use serde_json::json;

use super::{Context, cached::Kept};
use crate::{
    Error,
    api::{ActivationRequest, RequestPhase, Scope},
    decide::{request::set_condition, residual},
};

/// The condition type.
pub const CONDITION: &str = "ResidualAccess";

/// How long after the revocation a still-allowed probe is asked again before it counts.
const SETTLE: TimeDelta = TimeDelta::seconds(10);

/// Whether `ar` is due a check: it held access, that access has ended (Expired, Deactivated,
/// Revoked; a Superseded request's access lives on in its extension), and no answer is
/// recorded yet.
pub fn due(ar: &ActivationRequest) -> bool {
    let Some(s) = ar.status.as_ref() else {
        return false;
    };
    s.activation_time.is_some()
        && matches!(
            s.phase,
            Some(RequestPhase::Expired | RequestPhase::Deactivated | RequestPhase::Revoked)
        )
        && !s.conditions.iter().any(|c| c.type_ == CONDITION)
}

/// What the check found.
enum Found {
    /// Nothing the role allows is still allowed (or only through kube-pim).
    Gone(&'static str, String),
    /// Still allowed, past the settling time.
    Residual(String),
    /// Still allowed, but the revocation was a moment ago: ask again.
    Again,
    /// Could not be checked (what the role allowed is not known): recorded as Unknown, never
    /// as removed.
    Unknown(String),
}

/// The apiserver's authorizer follows a binding deletion within moments; asking before then
/// only means asking again.
const FIRST_ASK: TimeDelta = TimeDelta::seconds(1);

/// Runs the check and records the answer; `Some(wait)` asks to run again after `wait`.
pub async fn check(ar: &ActivationRequest, ctx: &Context) -> Result<Option<Duration>, Error> {
    let ended = ar
        .status
        .as_ref()
        .and_then(|s| s.history.last())
        .map(|h| h.time);
    if let Some(wait) = ended
        .map(|t| t + FIRST_ASK - Utc::now())
        .and_then(|d| d.to_std().ok())
        .filter(|d| !d.is_zero())
    {
        return Ok(Some(wait));
    }
    let found = {
        // Not waited for: a reconcile waiting here would hold one of its controller's few
        // reconcile slots, and after an expiry wave most slots would sit here while
        // revocations and activations queued behind them. Asked again shortly instead.
        let Ok(_slot) = ctx.residual_slots.try_acquire() else {
            return Ok(Some(Duration::from_millis(500)));
        };
        probe(ar, ctx, Utc::now()).await?
    };
    let now = Utc::now();
    let (residual, reason, message) = match &found {
        Found::Again => return Ok(Some(Duration::from_secs(1))),
        Found::Gone(reason, message) => (false, *reason, message.clone()),
        Found::Residual(message) => (true, "ResidualAccess", message.clone()),
        Found::Unknown(message) => (false, "NotChecked", message.clone()),
    };
    let mut conditions = ar
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    set_condition(
        &mut conditions,
        CONDITION,
        residual,
        reason,
        &message,
        now,
        ar.metadata.generation,
    );
    if matches!(found, Found::Unknown(_))
        && let Some(c) = conditions.iter_mut().find(|c| c.type_ == CONDITION)
    {
        c.status = "Unknown".into();
    }
    if residual {
        ctx.metrics.residual_access.inc();
        tracing::warn!(request = %ar.name_any(), namespace = ?ar.namespace(), %message, "residual access after revocation");
        let record = json!({
            "apiVersion": super::audit::AUDIT_API_VERSION,
            "kind": "ResidualAccess",
            "id": format!("{}/residual", ar.uid().unwrap_or_default()),
            "time": now,
            "namespace": ar.namespace(),
            "name": ar.name_any(),
            "uid": ar.uid(),
            "roleSetting": ar.spec.role_setting,
            "requester": ar.spec.requester.username,
            "message": message,
        });
        ctx.audit.record(record).await?;
        if let Some(rs) = ctx
            .role_settings
            .get(&kube::runtime::reflector::ObjectRef::new(
                &ar.spec.role_setting,
            ))
        {
            ctx.notifier
                .send(&rs, &crate::notify::message::residual(ar, &message, now));
        }
        let ev = Event {
            type_: EventType::Warning,
            reason: "ResidualAccess".into(),
            note: Some(message.chars().take(1000).collect()),
            action: "CheckAccess".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &ar.object_ref(&())).await {
            tracing::warn!(error = %e, "could not record the ResidualAccess Event (the audit stream has it)");
        }
    }
    let api: Api<ActivationRequest> =
        Api::namespaced(ctx.client.clone(), &ar.namespace().unwrap_or_default());
    let patch = json!({
        "metadata": {"resourceVersion": ar.resource_version()},
        "status": {"conditions": conditions},
    });
    api.patch_status(
        &ar.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    ctx.written.note(ar);
    Ok(None)
}

async fn probe(ar: &ActivationRequest, ctx: &Context, now: DateTime<Utc>) -> Result<Found, Error> {
    let Some(rs) = ctx
        .role_settings
        .get(&ObjectRef::new(&ar.spec.role_setting))
    else {
        return Ok(Found::Unknown(format!(
            "RoleSetting {} no longer exists, so its roles are unknown: check with kubectl auth can-i --as={} --list",
            ar.spec.role_setting, ar.spec.requester.username
        )));
    };
    let roles: Vec<String> = rs.spec.role_refs.iter().map(|r| r.name.clone()).collect();
    let namespace = match ar.spec.scope {
        Scope::Namespace => ar.namespace(),
        Scope::Cluster => None,
    };
    let mut rules = Vec::new();
    for role in &roles {
        match ctx.cluster_roles.get(&ObjectRef::new(role)) {
            Some(cr) => rules.extend(cr.rules.clone().unwrap_or_default()),
            None => {
                return Ok(Found::Unknown(format!(
                    "ClusterRole {role} no longer exists, so what it allowed is unknown: check with kubectl auth can-i --as={} --list",
                    ar.spec.requester.username
                )));
            }
        }
    }
    let probes = residual::probes(&rules, namespace.as_deref());
    let r = &ar.spec.requester;
    let user = crate::authz::requester_info(r);
    let answers = join_all(
        probes
            .iter()
            .map(|p| crate::authz::allowed(&ctx.client, &user, p.clone())),
    )
    .await;
    let mut still = None;
    for (p, a) in probes.iter().zip(answers) {
        if a? {
            still = Some(residual::describe(p));
            break;
        }
    }
    let Some(what) = still else {
        return Ok(Found::Gone(
            "AccessRemoved",
            format!(
                "{} can no longer do what {} allow (checked {} permissions as them)",
                r.username,
                roles.join(", "),
                probes.len()
            ),
        ));
    };
    if through_kube_pim(ar, ctx, &roles) {
        return Ok(Found::Gone(
            "StillActivated",
            format!(
                "{} still holds {} through another kube-pim activation or assignment",
                r.username,
                roles.join(", ")
            ),
        ));
    }
    let ended = ar
        .status
        .as_ref()
        .and_then(|s| s.history.last())
        .map(|h| h.time);
    if ended.is_some_and(|t| now - t < SETTLE) {
        return Ok(Found::Again);
    }
    Ok(Found::Residual(format!(
        "{} can still {what} after kube-pim removed their access to {}: another binding or a group grants it (find it with kubectl pim discover, or kubectl auth can-i --as={} --list), then remove it or govern it with standingAccess: Deny",
        r.username,
        roles.join(", "),
        r.username
    )))
}

/// Whether a binding kube-pim made (for another request or an Active assignment) still grants
/// one of `roles` to the requester, by name or through one of their stamped groups.
fn through_kube_pim(ar: &ActivationRequest, ctx: &Context, roles: &[String]) -> bool {
    let r = &ar.spec.requester;
    let mine = |s: &Subject| match s.kind.as_str() {
        "User" => s.name == r.username,
        "Group" => r.groups.contains(&s.name),
        "ServiceAccount" => {
            crate::decide::service_account_username(
                s.namespace.as_deref().unwrap_or_default(),
                &s.name,
            ) == r.username
        }
        _ => false,
    };
    use crate::decide::bindings::{LABEL_ASSIGNMENT_UID, LABEL_REQUEST_UID, binding_name};
    let own_uid = ar.uid();
    // Another request's or an Active assignment's binding, named as kube-pim names them (the
    // labels alone could be copied; the name is derived from the owner's uid and the role).
    let other = |labels: &Kept, name: &str, role: &str| match (
        labels.get(LABEL_REQUEST_UID),
        labels.get(LABEL_ASSIGNMENT_UID),
    ) {
        (Some(uid), _) => Some(uid) != own_uid.as_deref() && name == binding_name(uid, role),
        (None, Some(uid)) => name == binding_name(&format!("assignment/{uid}"), role),
        (None, None) => false,
    };
    // A RoleBinding grants only in its namespace; a ClusterRoleBinding everywhere.
    let here = ar.spec.scope == Scope::Namespace;
    ctx.role_bindings
        .find(|b| {
            here && b.namespace() == ar.metadata.namespace.as_deref()
                && other(b.labels(), b.name(), &b.role_ref.name)
                && roles.contains(&b.role_ref.name)
                && b.subjects.iter().any(mine)
        })
        .is_some()
        || ctx
            .cluster_role_bindings
            .find(|b| {
                other(b.labels(), b.name(), &b.role_ref.name)
                    && roles.contains(&b.role_ref.name)
                    && b.subjects.iter().any(mine)
            })
            .is_some()
}
