//! The EligibleAssignment controller: records each assignment's phase (Scheduled, Eligible,
//! Active, Expired, Invalid with the reason) and a `Valid` condition, from its RoleSetting and
//! its window, and looks again exactly when the window opens or closes.
//!
//! A type Active assignment holds its bindings (for its subject as written) for exactly its
//! Active phase, under a finalizer, restored when edited or deleted.
//!
//! An assignment is Invalid (NotAuthorizedToBind) while the writer recorded in its
//! `kubepim.io/authorized-by` annotation may not bind its RoleSetting's roles where it grants
//! them (SPEC invariant 3): asked when the RoleSetting appears or changes, and again every
//! resync ([`crate::authz`]).

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        reflector::{ObjectRef, ReflectHandle},
    },
};
use serde_json::json;

use super::{
    Context, FINALIZER, Trigger,
    cached::{CachedAssignment, CachedClusterRoleBinding, CachedRoleBinding, Kept},
    rbac_writes, related, wake_for,
};
use crate::{
    Error,
    api::{
        AssignmentPhase, AssignmentType, EligibleAssignment, EligibleAssignmentStatus, RoleSetting,
    },
    decide::{bindings, eligibility, request::set_condition},
};

/// The watches that trigger this controller.
pub struct Triggers {
    /// Turns true once the cache of this controller's own kind has listed its objects.
    pub synced: tokio::sync::watch::Receiver<bool>,
    /// EligibleAssignments.
    pub assignments: ReflectHandle<CachedAssignment>,
    /// RoleSettings (an assignment's validity follows its RoleSetting).
    pub role_settings: Trigger<RoleSetting>,
    /// Managed RoleBindings (those of type Active assignments: drift).
    pub role_bindings: Trigger<CachedRoleBinding>,
    /// Managed ClusterRoleBindings (likewise).
    pub cluster_role_bindings: Trigger<CachedClusterRoleBinding>,
}

/// Runs the controller until shutdown.
pub async fn controller(
    ctx: Arc<Context>,
    t: Triggers,
    acting: impl futures::Stream<Item = ()> + Send + Sync + 'static,
) {
    let store = ctx.assignments.clone();
    let owner = |labels: &Kept| {
        bindings::assignment_owner_of(labels).map(|(ns, name, _)| ObjectRef::new(name).within(ns))
    };
    // The safety net (and the re-check of the writer's authority) for all at once; only a
    // window's boundary is a requeue of its own. Each tick starts a round of the authorizer,
    // so its reconciles ask every writer afresh: a writer who lost `bind` loses what they
    // granted within a period. (In turns, as requests are resynced, an answer fetched for
    // one assignment would serve another's turn.)
    let authz = ctx.clone();
    let resync = super::every(ctx.settings.resync).inspect(move |()| authz.authz.new_round());
    let triggers = vec![
        super::own(t.assignments),
        related(t.role_settings, move |rs: Arc<RoleSetting>| {
            let name = rs.name_any();
            store
                .state_filter(|ea| ea.spec.role_setting == name)
                .iter()
                .map(|ea| ObjectRef::from_obj(ea.as_ref()))
                .collect::<Vec<_>>()
        }),
        related(t.role_bindings, move |b: Arc<CachedRoleBinding>| {
            owner(b.labels())
        }),
        related(
            t.cluster_role_bindings,
            move |b: Arc<CachedClusterRoleBinding>| owner(b.labels()),
        ),
    ];
    let bulk = vec![super::all_on(
        ctx.assignments.clone(),
        futures::stream::select(acting, resync),
    )];
    let store = ctx.assignments.clone();
    super::run(
        "assignment",
        store,
        t.synced,
        triggers,
        bulk,
        reconcile,
        error_policy,
        ctx,
    )
    .await;
}

fn error_policy(ea: Arc<CachedAssignment>, e: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error("assignment", e);
    tracing::warn!(assignment = %ea.name_any(), error = %e, "assignment reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// The assignment's RoleSetting: from the cache, or read live when the cache lacks it, so that
/// an assignment is not recorded Invalid (RoleSettingNotFound, which refuses requests) only
/// because the RoleSetting's watch trails the assignment's. Not read again while the status
/// already records it missing for this generation: a RoleSetting that appears later reaches
/// the cache and triggers its assignments (`relate`), and assignments naming one that does
/// not exist cost no GET per resync. A failed or slow read counts as missing (fail closed: a
/// type Active assignment's bindings go).
async fn role_setting(ea: &EligibleAssignment, ctx: &Context) -> Option<Arc<RoleSetting>> {
    let name = &ea.spec.role_setting;
    if let Some(rs) = ctx.role_settings.get(&ObjectRef::new(name)) {
        return Some(rs);
    }
    let known_missing = ea.status.as_ref().is_some_and(|s| {
        s.observed_generation == ea.metadata.generation
            && s.conditions.iter().any(|c| {
                c.type_ == "Valid" && c.status == "False" && c.reason == "RoleSettingNotFound"
            })
    });
    if known_missing {
        return None;
    }
    super::live_read(
        || format!("reading RoleSetting {name} live"),
        ctx.live_role_setting(name),
    )
    .await
    .map(|rs| rs.map(Arc::new))
    .unwrap_or_else(|e| {
        tracing::warn!(assignment = %ea.name_any(), role_setting = %name, error = %e,
            "could not read the RoleSetting live; taking it as missing");
        None
    })
}

async fn reconcile(cached: Arc<CachedAssignment>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.acting() {
        // A follower, or the leader before its start sweep: reconciled again when it acts.
        return Ok(Action::await_change());
    }
    let ea = cached.full()?;
    let now = Utc::now();
    let api: Api<EligibleAssignment> =
        Api::namespaced(ctx.client.clone(), &ea.namespace().unwrap_or_default());
    let uid = ea.uid();
    let owner = ea.metadata.uid.as_deref().unwrap_or_default();
    let mine = move |labels: &Kept| {
        bindings::assignment_owner_of(labels).is_some_and(|(_, _, u)| Some(u) == uid.as_deref())
    };
    let has_finalizer = ea.finalizers().iter().any(|f| f == FINALIZER);
    if ea.metadata.deletion_timestamp.is_some() {
        // Deleted: its bindings go before it does.
        if has_finalizer {
            rbac_writes::remove(&ctx, &[], owner, &mine, &[]).await?;
            rbac_writes::remove_finalizer(&api, &ea).await?;
        }
        return Ok(Action::await_change());
    }
    let holds = ea.spec.type_ == AssignmentType::Active;
    if holds && !has_finalizer {
        // A type Active assignment holds bindings: they must not outlive it.
        rbac_writes::add_finalizer(&api, &ea).await?;
        return Ok(Action::requeue(Duration::ZERO));
    }
    let rs = role_setting(&ea, &ctx).await;
    let authorized = match rs.as_deref() {
        Some(rs) => ctx.authz.assignment(&ea, rs).await,
        None => Ok(()),
    };
    let (phase, violation) = eligibility::phase(
        &ea,
        rs.as_deref(),
        authorized,
        &ctx.settings.cluster_scope_namespace,
        now,
    );
    // Bindings exist exactly while a type Active assignment is in its Active phase.
    match (phase, rs.as_deref()) {
        (AssignmentPhase::Active, Some(rs)) => {
            let roles: Vec<String> = rs.spec.role_refs.iter().map(|r| r.name.clone()).collect();
            rbac_writes::ensure(&ctx, &bindings::for_assignment(&ea, &roles), owner, &mine).await?;
        }
        _ => {
            rbac_writes::remove(&ctx, &[], owner, &mine, &[]).await?;
        }
    }
    if !holds && has_finalizer {
        rbac_writes::remove_finalizer(&api, &ea).await?;
        return Ok(Action::requeue(Duration::ZERO));
    }

    let mut status = ea.status.clone().unwrap_or_default();
    status.phase = Some(phase);
    status.observed_generation = ea.metadata.generation;
    let (ok, reason, message) = match &violation {
        None => (
            true,
            "Valid",
            format!("eligible for RoleSetting {}", ea.spec.role_setting),
        ),
        Some(v) => (false, v.reason, v.message.clone()),
    };
    set_condition(
        &mut status.conditions,
        "Valid",
        ok,
        reason,
        &message,
        now,
        ea.metadata.generation,
    );
    // Activation statistics, from the requests this assignment backed.
    let name = ea.name_any();
    let ns = ea.namespace();
    // Filtered in the cache, nothing copied but the matches' handles.
    let backed =
        ctx.request_namespaces
            .select(&ctx.requests, ns.as_deref().unwrap_or_default(), |ar| {
                ar.status.as_ref().is_some_and(|s| {
                    s.assignment.as_deref() == Some(name.as_str()) && s.activation_time.is_some()
                })
            });
    status.activations = i64::try_from(backed.len()).unwrap_or(i64::MAX);
    status.last_activation_time = backed
        .iter()
        .filter_map(|ar| ar.status.as_ref()?.activation_time)
        .max();

    if ea.status.as_ref() != Some(&status) {
        write_status(&ctx, &ea, &status).await?;
    }
    Ok(
        match wake_for(next_boundary(&ea, now), now, ctx.settings.resync) {
            Some(wait) => Action::requeue(wait),
            None => Action::await_change(),
        },
    )
}

/// The next time the phase changes by the clock alone: the start or the end of the window.
fn next_boundary(ea: &EligibleAssignment, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let w = eligibility::window(ea, now);
    [Some(w.start), w.end]
        .into_iter()
        .flatten()
        .filter(|t| *t > now)
        .min()
}

async fn write_status(
    ctx: &Context,
    ea: &EligibleAssignment,
    status: &EligibleAssignmentStatus,
) -> Result<(), Error> {
    let api: Api<EligibleAssignment> =
        Api::namespaced(ctx.client.clone(), &ea.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"resourceVersion": ea.resource_version()}, "status": status});
    api.patch_status(
        &ea.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_boundary_within_two_resyncs_is_a_requeue_of_its_own() {
        let now = DateTime::parse_from_rfc3339("2026-11-24T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let resync = Duration::from_secs(300);
        let at = |secs: i64| Some(now + chrono::TimeDelta::seconds(secs));
        // No boundary (a permanent or expired assignment): the shared resync only.
        assert_eq!(wake_for(None, now, resync), None);
        // Within two resyncs, and at exactly two: to the second.
        assert_eq!(wake_for(at(90), now, resync), Some(Duration::from_secs(90)));
        assert_eq!(
            wake_for(at(450), now, resync),
            Some(Duration::from_secs(450))
        );
        assert_eq!(wake_for(at(600), now, resync), Some(resync * 2));
        // Beyond: a resync tick comes at least a period ahead of it and schedules it then.
        assert_eq!(wake_for(at(601), now, resync), None);
        assert_eq!(wake_for(at(86_400), now, resync), None);
        // Already due (a boundary the clock passed during the reconcile): at once.
        assert_eq!(wake_for(at(-1), now, resync), Some(Duration::ZERO));
    }
}
