//! The RoleSetting controller: `RolesFound` (every roleRef exists), `QuorumReachable`
//! (`minApprovals` can be met: with a Group approver, or enough User/ServiceAccount approvers),
//! and how many assignments and active activations use it.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use k8s_openapi::api::rbac::v1::ClusterRole;
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
    Context, Trigger,
    cached::{CachedAssignment, CachedRequest},
    related,
};
use crate::{
    Error,
    api::{RequestPhase, RoleSetting},
    decide::{approval, persistence, request::set_condition},
};

/// The watches that trigger this controller.
pub struct Triggers {
    /// Turns true once the cache of this controller's own kind has listed its objects.
    pub synced: tokio::sync::watch::Receiver<bool>,
    /// A discovery round finished: publish its findings on every RoleSetting.
    pub discovered: tokio::sync::mpsc::UnboundedReceiver<()>,
    /// RoleSettings.
    pub role_settings: ReflectHandle<RoleSetting>,
    /// EligibleAssignments (counted).
    pub assignments: Trigger<CachedAssignment>,
    /// ActivationRequests (active ones counted).
    pub requests: Trigger<CachedRequest>,
    /// ClusterRoles (RolesFound).
    pub cluster_roles: Trigger<ClusterRole>,
}

/// Runs the controller until shutdown.
pub async fn controller(
    ctx: Arc<Context>,
    t: Triggers,
    acting: impl futures::Stream<Item = ()> + Send + Sync + 'static,
) {
    let by_role = ctx.role_settings.clone();
    let mut rx = t.discovered;
    let discovered = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let triggers = vec![
        super::own(t.role_settings),
        related(t.assignments, |ea: Arc<CachedAssignment>| {
            Some(ObjectRef::new(&ea.spec.role_setting))
        }),
        related(t.requests, |ar: Arc<CachedRequest>| {
            Some(ObjectRef::new(&ar.spec.role_setting))
        }),
        related(t.cluster_roles, move |cr: Arc<ClusterRole>| {
            let name = cr.name_any();
            by_role
                .state()
                .iter()
                .filter(|rs| rs.spec.role_refs.iter().any(|r| r.name == name))
                .map(|rs| ObjectRef::from_obj(rs.as_ref()))
                .collect::<Vec<_>>()
        }),
    ];
    // Discovery of unmanaged bindings and the replica starting to act: every RoleSetting.
    let bulk = vec![super::all_on(
        ctx.role_settings.clone(),
        futures::stream::select(discovered, acting),
    )];
    let store = ctx.role_settings.clone();
    super::run(
        "role_setting",
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

fn error_policy(rs: Arc<RoleSetting>, e: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error("role_setting", e);
    tracing::warn!(role_setting = %rs.name_any(), error = %e, "role setting reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// How often a change of counts alone is written.
const COUNTS_EVERY: Duration = Duration::from_secs(1);

/// When each RoleSetting's status was last written (this process runs one controller).
static COUNTS_WRITTEN: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
> = std::sync::LazyLock::new(Default::default);

async fn reconcile(rs: Arc<RoleSetting>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.acting() {
        // A follower, or the leader before its start sweep: reconciled again when it acts.
        return Ok(Action::await_change());
    }
    let now = Utc::now();
    let name = rs.name_any();
    let generation = rs.metadata.generation;
    let mut status = rs.status.clone().unwrap_or_default();
    status.observed_generation = generation;

    let missing: Vec<&str> = rs
        .spec
        .role_refs
        .iter()
        .filter(|r| ctx.cluster_roles.get(&ObjectRef::new(&r.name)).is_none())
        .map(|r| r.name.as_str())
        .collect();
    if missing.is_empty() {
        set_condition(
            &mut status.conditions,
            "RolesFound",
            true,
            "RolesFound",
            "every ClusterRole in roleRefs exists",
            now,
            generation,
        );
    } else {
        let msg = format!(
            "ClusterRole(s) {} do not exist: create them or fix roleRefs; activations would grant nothing",
            missing.join(", ")
        );
        set_condition(
            &mut status.conditions,
            "RolesFound",
            false,
            "RoleNotFound",
            &msg,
            now,
            generation,
        );
    }
    // Roles that let their holder keep access (invariant 8).
    let risks: Vec<(String, Vec<String>)> = rs
        .spec
        .role_refs
        .iter()
        .map(|r| {
            let rules = ctx
                .cluster_roles
                .get(&ObjectRef::new(&r.name))
                .and_then(|cr| cr.rules.clone())
                .unwrap_or_default();
            (r.name.clone(), persistence::risks(&rules))
        })
        .collect();
    match crate::decide::unacknowledged_persistence(&rs, &risks) {
        Some(msg) => set_condition(
            &mut status.conditions,
            "PersistenceRisk",
            true,
            "NotAcknowledged",
            &format!("{msg}; until then new activations are refused"),
            now,
            generation,
        ),
        None if risks.iter().any(|(_, r)| !r.is_empty()) => set_condition(
            &mut status.conditions,
            "PersistenceRisk",
            true,
            "Acknowledged",
            "a role can create its own persistence (acknowledgePersistenceRisk: true); standingAccess: Deny and the residual-access check limit it",
            now,
            generation,
        ),
        None => set_condition(
            &mut status.conditions,
            "PersistenceRisk",
            false,
            "NoPersistenceRisk",
            "no role can bind, escalate, impersonate, write Roles or bindings, or create tokens",
            now,
            generation,
        ),
    }
    status.unmanaged_bindings = ctx.standing.unmanaged(&name);
    // The standing-access policy follows the RoleSettings at once (a write only on change).
    super::standing::sync_params(&ctx, false).await?;
    let a = &rs.spec.approval;
    if !a.required || approval::quorum_reachable(a, None, &[]) {
        set_condition(
            &mut status.conditions,
            "QuorumReachable",
            true,
            "QuorumReachable",
            "minApprovals can be met",
            now,
            generation,
        );
    } else {
        let msg = format!(
            "minApprovals {} exceeds the User/ServiceAccount approvers listed and no Group approver is listed: add approvers or a Group, or lower minApprovals",
            a.min_approvals
        );
        set_condition(
            &mut status.conditions,
            "QuorumReachable",
            false,
            "QuorumUnreachable",
            &msg,
            now,
            generation,
        );
    }
    status.assignments = count(
        ctx.assignments
            .state()
            .iter()
            .filter(|ea| ea.spec.role_setting == name),
    );
    status.active_activations = count(ctx.requests.state().iter().filter(|ar| {
        ar.spec.role_setting == name
            && ar.status.as_ref().and_then(|s| s.phase) == Some(RequestPhase::Active)
    }));

    if rs.status.as_ref() != Some(&status) {
        // Bursts of activations move the counts many times a second: a change of counts alone
        // is written at most once a second per RoleSetting (anything else at once).
        let counts_only = rs.status.as_ref().is_some_and(|old| {
            let mut s = status.clone();
            s.assignments = old.assignments;
            s.active_activations = old.active_activations;
            &s == old
        });
        let wait = {
            let mut last = COUNTS_WRITTEN.lock().expect("not poisoned");
            match last
                .get(&name)
                .filter(|at| counts_only && at.elapsed() < COUNTS_EVERY)
            {
                Some(at) => Some(COUNTS_EVERY.saturating_sub(at.elapsed())),
                None => {
                    last.insert(name.clone(), std::time::Instant::now());
                    None
                }
            }
        };
        if let Some(wait) = wait {
            return Ok(Action::requeue(wait));
        }
        let api: Api<RoleSetting> = Api::all(ctx.client.clone());
        let patch =
            json!({"metadata": {"resourceVersion": rs.resource_version()}, "status": status});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(Action::requeue(ctx.settings.resync))
}

fn count<T>(it: impl Iterator<Item = T>) -> i64 {
    i64::try_from(it.count()).unwrap_or(i64::MAX)
}
