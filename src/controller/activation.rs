//! The ActivationRequest controller: fetch (caches) → decide ([`crate::decide::request`]) →
//! apply (a grant: the status under a resourceVersion precondition, then bindings by
//! server-side apply; a revocation: bindings deleted, then the status)
//! → audit (the outbox: lines for committed history entries, then `auditedThrough`).
//!
//! Triggers: the request itself; its RoleSetting and the EligibleAssignments of its namespace
//! (eligibility and policy are re-validated continuously); and the bindings it made (drift: an
//! edited or deleted binding is restored, a stray one removed). Expiry, scheduled starts and
//! approval timeouts are requeues at exactly the time the plan names.
//!
//! Metrics: a status write's new history entries (and the durations they complete) are
//! recorded right after the apiserver accepts it ([`crate::metrics::observations`]), so a
//! conflict-and-retry counts nothing twice; the time bindings were deleted is noted when this
//! process deletes them and observed as revocation lag when the ending transition commits.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use kube::{
    Api, Resource, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType},
        reflector::{ObjectRef, ReflectHandle},
    },
};
use serde_json::json;

use super::{
    Context, FINALIZER, Trigger,
    cached::{CachedAssignment, CachedClusterRoleBinding, CachedRequest, CachedRoleBinding, Kept},
    rbac_writes, related, residual,
};
use crate::{
    Error,
    api::{ActivationRequest, ActivationRequestStatus, EligibleAssignment, RoleSetting},
    decide::{
        approval, bindings,
        eligibility::{self, Wanted},
        policy,
        request::{self, Bindings, Inputs, Plan},
    },
};

/// The watches that trigger this controller.
pub struct Triggers {
    /// Turns true once the cache of this controller's own kind has listed its objects.
    pub synced: tokio::sync::watch::Receiver<bool>,
    /// ActivationRequests.
    pub requests: ReflectHandle<CachedRequest>,
    /// ActivationRequests again, to wake the request an extension extends.
    pub extensions: ReflectHandle<CachedRequest>,
    /// RoleSettings.
    pub role_settings: Trigger<RoleSetting>,
    /// EligibleAssignments.
    pub assignments: Trigger<CachedAssignment>,
    /// Managed RoleBindings.
    pub role_bindings: Trigger<CachedRoleBinding>,
    /// Managed ClusterRoleBindings.
    pub cluster_role_bindings: Trigger<CachedClusterRoleBinding>,
}

/// Runs the controller until shutdown.
pub async fn controller(
    ctx: Arc<Context>,
    t: Triggers,
    acting: impl futures::Stream<Item = ()> + Send + Sync + 'static,
) {
    let by_role_setting = ctx.requests.clone();
    let by_assignment = (ctx.requests.clone(), ctx.request_namespaces.clone());
    let triggers = vec![
        super::own(t.requests),
        // An extension's progress decides its predecessor's (Superseded once it is Active).
        t.extensions
            .filter_map(|ar| {
                let to = ar.namespace().and_then(|ns| {
                    ar.spec
                        .extends
                        .as_ref()
                        .map(|x| ObjectRef::new(x).within(&ns))
                });
                async move { to }
            })
            .boxed(),
        related(t.role_settings, move |rs: Arc<RoleSetting>| {
            let name = rs.name_any();
            requests_where(&by_role_setting, |ar| ar.spec.role_setting == name)
        }),
        related(t.assignments, move |ea: Arc<CachedAssignment>| {
            let (store, index) = &by_assignment;
            let rs = &ea.spec.role_setting;
            index
                .select(
                    store,
                    ea.metadata.namespace.as_deref().unwrap_or_default(),
                    |ar| &ar.spec.role_setting == rs,
                )
                .iter()
                .map(|ar| ObjectRef::from_obj(ar.as_ref()))
                .collect::<Vec<_>>()
        }),
        related(t.role_bindings, |b: Arc<CachedRoleBinding>| {
            owner_ref(b.labels())
        }),
        related(
            t.cluster_role_bindings,
            |b: Arc<CachedClusterRoleBinding>| owner_ref(b.labels()),
        ),
    ];
    let bulk = vec![
        // The safety net (policy, the writer's authority, anything missed), each request in
        // its turn; what is due at a time of its own (an expiry, a start) is a requeue
        // (`requeue`).
        super::in_turn(ctx.requests.clone(), ctx.settings.resync).boxed(),
        super::all_on(ctx.requests.clone(), acting),
    ];
    let store = ctx.requests.clone();
    super::run(
        "activation",
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

fn requests_where(
    store: &kube::runtime::reflector::Store<CachedRequest>,
    f: impl Fn(&CachedRequest) -> bool,
) -> Vec<ObjectRef<CachedRequest>> {
    // Filtered in place: a cache of 10,000 requests is not copied out for each trigger.
    store
        .state_filter(f)
        .iter()
        .map(|ar| ObjectRef::from_obj(ar.as_ref()))
        .collect()
}

fn owner_ref(labels: &Kept) -> Option<ObjectRef<CachedRequest>> {
    bindings::owner_of(labels).map(|(ns, name, _)| ObjectRef::new(name).within(ns))
}

fn error_policy(ar: Arc<CachedRequest>, e: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error("activation", e);
    let conflict = matches!(e, Error::Kube(kube::Error::Api(s)) if s.code == 409);
    if conflict {
        // Someone (an approver, the requester) wrote first: re-read and decide again.
        Action::requeue(Duration::from_millis(200))
    } else {
        tracing::warn!(request = %ar.name_any(), namespace = ?ar.namespace(), error = %e, "reconcile failed; retrying");
        Action::requeue(Duration::from_secs(5))
    }
}

/// What a pass asks for next.
enum Next {
    /// Done for now.
    Wait(Action),
    /// It wrote a status and the plan goes on at once: decide again from the request as
    /// written, without waiting for the watch to bring it back.
    Continue(Box<ActivationRequest>),
}

/// Passes over one request: a plan that is due again at once (the decision committed, next
/// the bindings) continues from the object its status write returned. Each watch round trip
/// saved is one less wait on the path from a request (or the last approval) to access.
async fn reconcile(cached: Arc<CachedRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.acting() {
        // A follower, or the leader before its start sweep: reconciled again when it acts.
        return Ok(Action::await_change());
    }
    let mut ar = Arc::new(cached.full()?);
    // Requested+Approved, then Activated: two passes; a third is slack.
    for _ in 0..3 {
        match pass(ar, &ctx).await? {
            Next::Wait(action) => return Ok(action),
            Next::Continue(written) => ar = Arc::new(*written),
        }
    }
    Ok(Action::requeue(Duration::ZERO))
}

/// One pass over one request.
async fn pass(ar: Arc<ActivationRequest>, ctx: &Arc<Context>) -> Result<Next, Error> {
    let ctx = ctx.clone();
    if ctx.written.is_stale(ar.as_ref()) {
        // Our own last write has not reached the cache yet; its watch event triggers the next
        // pass (the requeue is only a safety net).
        return Ok(Next::Wait(Action::requeue(Duration::from_secs(5))));
    }
    let now = Utc::now();
    let ns = ar.namespace().unwrap_or_default();
    let api: Api<ActivationRequest> = Api::namespaced(ctx.client.clone(), &ns);

    // Fetch, from the caches.
    let rs = ctx
        .role_settings
        .get(&ObjectRef::new(&ar.spec.role_setting));
    let cluster_ns = ctx.settings.cluster_scope_namespace.as_str();
    let pctx = policy::Context {
        namespace: &ns,
        cluster_scope_namespace: cluster_ns,
        mfa: &ctx.settings.mfa,
        now,
    };

    // The Expiring notification follows the request's current state (timers are per process,
    // so a restarted operator re-arms them here). Armed once Activated has been announced (the
    // history fully audited), so receivers see Activated before Expiring.
    let deleting = ar.meta().deletion_timestamp.is_some();
    let announced = ar
        .status
        .as_ref()
        .is_some_and(|s| usize::try_from(s.audited_through).unwrap_or(0) >= s.history.len());
    match (ar.status.as_ref().and_then(|s| s.phase), rs.as_ref()) {
        (Some(crate::api::RequestPhase::Active), Some(rs)) if announced && !deleting => {
            ctx.notifier.schedule_expiring(rs, &ar)
        }
        (Some(crate::api::RequestPhase::Active), Some(_)) if !deleting => {}
        _ => ctx
            .notifier
            .cancel_expiring(ar.metadata.uid.as_deref().unwrap_or_default()),
    }
    // Being deleted: access goes first, and a request that still held or awaited it is
    // recorded as Revoked before the finalizer lets it go (invariant 7).
    if ar.meta().deletion_timestamp.is_some() {
        return finalize(&ar, &api, &ctx, &pctx).await.map(Next::Wait);
    }
    let wanted = Wanted::of(&ar);
    let open = ar
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_none_or(|p| !request::is_terminal(p));
    // Separation of duties: approvals from anyone the requester could impersonate or mint
    // tokens for do not count (asked only while decisions can still change anything).
    let mut acts_as = std::collections::HashMap::new();
    let deciding = ar.status.as_ref().is_some_and(|s| {
        s.phase == Some(crate::api::RequestPhase::Pending)
            && !request::condition_true(s, request::CONDITION_APPROVED)
    });
    if deciding {
        for a in ar.status.iter().flat_map(|s| s.approvals.iter().flatten()) {
            let who = &a.approver.username;
            if !acts_as.contains_key(who) {
                let why = ctx
                    .authz
                    .requester_could_act_as(&ar.spec.requester, who)
                    .await?;
                acts_as.insert(who.clone(), why);
            }
        }
    }

    // Extensions: the request this one extends, where its chain started, and whether an
    // Active extension of this one has taken over (all from the cache of this namespace).
    // Only those found are decoded whole.
    let same_ns: Vec<Arc<CachedRequest>> =
        ctx.request_namespaces.select(&ctx.requests, &ns, |_| true);
    let lookup = |name: &str| {
        same_ns
            .iter()
            .map(|r| r.as_ref())
            .find(|r| r.metadata.name.as_deref() == Some(name))
    };
    let extended = ar
        .spec
        .extends
        .as_deref()
        .and_then(lookup)
        .and_then(|x| decoded(x.full(), &ctx));
    let chain_start = extended
        .as_ref()
        .and_then(|x| request::chain_start(x, lookup));
    let successor = same_ns
        .iter()
        .find(|r| {
            r.spec.extends.as_deref() == ar.metadata.name.as_deref()
                && r.metadata.uid != ar.metadata.uid
                && r.phase() == Some(crate::api::RequestPhase::Active)
        })
        .and_then(|r| decoded(r.full(), &ctx));
    let facts = Facts {
        now,
        request: &ar,
        wanted: &wanted,
        open,
        acts_as: &acts_as,
        policy: &pctx,
        extended: extended.as_ref(),
        chain_start,
        successor: successor.as_ref(),
    };

    // Decide, from the caches. Only the requester's own assignments are copied out of the
    // cache (not all of them, per reconcile: at 10,000 assignments that was most of a
    // reconcile's work).
    let cached: Vec<Arc<EligibleAssignment>> = ctx
        .assignment_namespaces
        .select(&ctx.assignments, &ns, |ea| eligibility::names(&wanted, ea))
        .iter()
        .filter_map(|ea| decoded(ea.full(), &ctx))
        .map(Arc::new)
        .collect();
    let mut plan = decide(&ctx, &facts, rs.as_deref(), &cached).await;
    // An ending the caches decided (not eligible, policy, quorum) is confirmed from live reads
    // first, as the webhook that admitted the request did: an assignment or RoleSetting applied
    // (or widened) a moment before the request may not have reached its cache yet, since each
    // kind comes on its own watch. Only on this path, which ends the request anyway: a request
    // the caches back costs no read.
    if request::withdraws(&ar, &plan) {
        let read = super::live_read(
            || {
                format!(
                    "reading RoleSetting {} and the assignments of namespace {ns} live",
                    ar.spec.role_setting
                )
            },
            live(&ctx, &ns, &ar.spec.role_setting, &wanted),
        );
        match read.await {
            Ok((rs, eas)) => plan = decide(&ctx, &facts, rs.as_ref(), &eas).await,
            // Nothing can be bound yet (no decision committed): try again rather than fail the
            // request on a failed read. From the committed decision on, bindings may exist
            // (they are made before Active is written): fail closed, end it on what the caches
            // say, without waiting for the apiserver any longer.
            Err(e) if !request::decision_committed(&ar) => return Err(e),
            Err(e) => {
                tracing::warn!(request = %ar.name_any(), namespace = %ns, error = %e,
                    "could not confirm an ending from live reads; ending it on the caches' word")
            }
        }
    }

    // Apply.
    let terminal = ar
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(request::is_terminal);
    let has_finalizer = ar.finalizers().iter().any(|f| f == FINALIZER);
    if !terminal && !has_finalizer {
        // From the first write on, the finalizer keeps the request until its access is gone
        // and its last transition is on the audit stream (a request deleted in between would
        // otherwise take its final Event and audit line with it). The admission webhook puts
        // it on every new request; this covers requests created before it did.
        rbac_writes::add_finalizer(&api, ar.as_ref()).await?;
        return Ok(Next::Wait(Action::await_change()));
    }
    let written = apply(&ar, &plan, &ctx).await?;
    if terminal && residual::due(&ar) {
        // Access ended: is it really gone? Answered (and recorded) before the finalizer goes.
        return Ok(Next::Wait(match residual::check(&ar, &ctx).await? {
            Some(wait) => Action::requeue(wait),
            None => Action::await_change(),
        }));
    }
    if terminal && has_finalizer && fully_audited(&ar) {
        rbac_writes::remove_finalizer(&api, ar.as_ref()).await?;
        ctx.written.note(ar.as_ref());
    }
    if plan.delete && !ctx.audit.delivered() {
        // The audit sink is behind: the request is the record until the sink has it.
        return Ok(Next::Wait(Action::requeue(Duration::from_secs(30))));
    }
    if plan.delete {
        tracing::info!(request = %ar.name_any(), namespace = %ns, "retention period over and fully audited: deleting");
        api.delete(&ar.name_any(), &DeleteParams::default())
            .await
            .map(|_| ())
            .or_else(rbac_writes::ignore_not_found)?;
        ctx.written.forget(&ar.uid().unwrap_or_default());
        return Ok(Next::Wait(Action::await_change()));
    }
    let due_now = plan.requeue_at.is_some_and(|t| t <= Utc::now());
    Ok(match written {
        Some(w) if due_now && plan.status.is_some() && !terminal => Next::Continue(Box::new(w)),
        _ => Next::Wait(requeue(plan.requeue_at, &ctx)),
    })
}

/// What a decision reads besides the RoleSetting and the assignments (the two a decision may
/// be confirmed with, read live: see `pass`).
struct Facts<'a> {
    now: chrono::DateTime<Utc>,
    request: &'a ActivationRequest,
    wanted: &'a Wanted<'a>,
    open: bool,
    /// Approvers the requester could act as, and how (separation of duties).
    acts_as: &'a std::collections::HashMap<String, Option<String>>,
    policy: &'a policy::Context<'a>,
    extended: Option<&'a ActivationRequest>,
    chain_start: Option<chrono::DateTime<Utc>>,
    successor: Option<&'a ActivationRequest>,
}

/// The plan for `f.request` given its RoleSetting and the namespace's assignments that name
/// its requester (only those whose writer may bind the roles back it: `authorized_among`).
async fn decide(
    ctx: &Context,
    f: &Facts<'_>,
    rs: Option<&RoleSetting>,
    eas: &[Arc<EligibleAssignment>],
) -> Plan {
    let authorized = authorized_among(ctx, rs, f.open, eas).await;
    let ea = eligibility::select(
        f.wanted,
        rs,
        authorized.iter().copied(),
        f.policy.cluster_scope_namespace,
        f.now,
    );
    // Decisions count only if made before the approval timeout (the webhook refuses later
    // ones; this covers a webhook that admitted one just at the deadline).
    let created = f
        .request
        .metadata
        .creation_timestamp
        .as_ref()
        .map(crate::time::from_k8s);
    let tally = rs
        .map(|rs| {
            let deadline = created.map(|c| c + rs.spec.approval.timeout.as_delta());
            approval::tally(&rs.spec.approval, f.request, |a| {
                if deadline.is_some_and(|d| a.time >= d) {
                    return Some("decided after the approval timeout".to_string());
                }
                f.acts_as.get(&a.approver.username).cloned().flatten()
            })
        })
        .unwrap_or_default();
    request::decide(&Inputs {
        now: f.now,
        request: f.request,
        role_setting: rs,
        assignment: ea,
        tally: &tally,
        policy: f.policy,
        retention: ctx.settings.retention,
        extended: f.extended,
        chain_start: f.chain_start,
        successor: f.successor,
    })
}

/// The RoleSetting `rs_name` and the assignments in `ns` that name the requester, read live.
/// Untyped, then converted one at a time as the caches are ([`super::lenient`]): an object
/// kube-pim cannot read is taken as absent (it backs nothing) and does not fail the read.
async fn live(
    ctx: &Context,
    ns: &str,
    rs_name: &str,
    wanted: &Wanted<'_>,
) -> Result<(Option<RoleSetting>, Vec<Arc<EligibleAssignment>>), Error> {
    let rs = ctx.live_role_setting(rs_name).await?;
    let ar = ApiResource::erase::<EligibleAssignment>(&());
    let eas = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), ns, &ar)
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|o| super::lenient::typed::<EligibleAssignment>(o).ok())
        .filter(|ea| eligibility::names(wanted, ea))
        .map(Arc::new)
        .collect();
    Ok((rs, eas))
}

/// The assignments among `eas` whose writer may bind the RoleSetting's roles (SPEC invariant
/// 3; the answers are cached, so this costs no API call per activation). None for an ended
/// request, which needs none.
async fn authorized_among<'a>(
    ctx: &Context,
    rs: Option<&RoleSetting>,
    open: bool,
    eas: &'a [Arc<EligibleAssignment>],
) -> Vec<&'a EligibleAssignment> {
    let mut authorized = Vec::new();
    if let (Some(rs), true) = (rs, open) {
        for ea in eas {
            if ctx.authz.assignment(ea, rs).await.is_ok() {
                authorized.push(ea.as_ref());
            }
        }
    }
    authorized
}

/// Another object from a cache, whole; one that does not decode (a bug in kube-pim) is logged
/// and counted, and taken as absent: it backs no request and extends nothing (fail closed),
/// and this request's own pass goes on (to record an expiry, say).
fn decoded<T>(full: Result<T, Error>, ctx: &Context) -> Option<T> {
    full.inspect_err(|e| {
        ctx.metrics.reconcile_error("activation", e);
        tracing::error!(error = %e, "taking a cached object that does not decode as absent");
    })
    .ok()
}

/// Whether every history entry of `ar` is on the audit stream.
fn fully_audited(ar: &ActivationRequest) -> bool {
    ar.status
        .as_ref()
        .is_none_or(|s| usize::try_from(s.audited_through).unwrap_or(0) >= s.history.len())
}

/// Requeued at `at` if that is near; otherwise the request's turn of the resync comes first
/// (see `controller`).
fn requeue(at: Option<chrono::DateTime<Utc>>, ctx: &Context) -> Action {
    match super::wake_for(at, Utc::now(), ctx.settings.resync) {
        Some(wait) => Action::requeue(wait),
        None => Action::await_change(),
    }
}

/// Applies a plan: bindings first (made or removed), then the status, under a precondition,
/// with the audit outbox flushed. So `Active` is never recorded before its bindings exist
/// (SPEC section 3's order: the decision committed, then bindings, then `Active`). Returns
/// the request as written, if a status was written.
async fn apply(
    ar: &ActivationRequest,
    plan: &Plan,
    ctx: &Context,
) -> Result<Option<ActivationRequest>, Error> {
    match &plan.bindings {
        // The cache (label-selected managed bindings) finds ours. The names in the status are
        // also deleted, but only on the transition that ends access: that catches a binding
        // whose labels were removed, without a DELETE per reconcile of every ended request.
        Bindings::Ensure(desired) => {
            rbac_writes::ensure(ctx, desired, uid_of(ar), &request_binding(ar)).await?
        }
        Bindings::Remove => {
            let by_name = if plan.status.is_some() {
                status_refs(ar)
            } else {
                Vec::new()
            };
            let deleted =
                rbac_writes::remove(ctx, &[], uid_of(ar), &request_binding(ar), &by_name).await?;
            if plan.status.as_ref().is_some_and(crate::metrics::ends) {
                note_revoked(ar, deleted, ctx);
            }
        }
    }
    write_status(ar, plan.status.as_ref(), plan.initialize_approvals, ctx).await
}

/// Remembers when this process revoked `ar`'s access (if it deleted anything), for the
/// revocation-lag metric observed when the ending transition commits.
fn note_revoked(ar: &ActivationRequest, deleted: usize, ctx: &Context) {
    if deleted > 0 {
        ctx.metrics
            .note_revoked(&ar.uid().unwrap_or_default(), Utc::now());
    }
}

/// Writes `status` (if any) together with the audit outbox: history entries already committed
/// but not yet audited are written to the audit stream first, and the same status write
/// advances `auditedThrough`. The write is conditional on the resourceVersion decided from.
async fn write_status(
    ar: &ActivationRequest,
    status: Option<&ActivationRequestStatus>,
    initialize_approvals: bool,
    ctx: &Context,
) -> Result<Option<ActivationRequest>, Error> {
    let current = ar.status.as_ref();
    let audited_before = current.map_or(0, |s| usize::try_from(s.audited_through).unwrap_or(0));
    let committed = current.map_or(0, |s| s.history.len());
    let audited = if committed > audited_before {
        let (audited, fresh) = ctx.audit.pending(ar, audited_before).await?;
        emit_events(ar, fresh, ctx).await;
        audited
    } else {
        audited_before
    };
    if status.is_none() && audited == audited_before {
        return Ok(None);
    }
    let mut next = status
        .cloned()
        .unwrap_or_else(|| current.cloned().unwrap_or_default());
    next.audited_through = i64::try_from(audited).unwrap_or(i64::MAX);
    let mut body = serde_json::to_value(&next).expect("status serializes");
    let obj = body.as_object_mut().expect("status is an object");
    // The operator never writes approvals, except to initialise them (invariant 2, ordering).
    obj.remove("approvals");
    if initialize_approvals {
        obj.insert("approvals".into(), json!([]));
    }
    let patch = json!({
        "metadata": {"resourceVersion": ar.resource_version()},
        "status": body,
    });
    let api: Api<ActivationRequest> =
        Api::namespaced(ctx.client.clone(), &ar.namespace().unwrap_or_default());
    let written = api
        .patch_status(
            &ar.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    ctx.written.note(ar);
    if status.is_some() {
        // Committed: count its transitions here, once, in the process that made them
        // (a write refused for a conflict returned above and counts nothing).
        let revoked_at = crate::metrics::ends(&next)
            .then(|| ctx.metrics.take_revoked(&ar.uid().unwrap_or_default()))
            .flatten();
        let seen = crate::metrics::observations(&crate::metrics::Committed {
            request: ar,
            status: &next,
            at: Utc::now(),
            revoked_at,
        });
        ctx.metrics.record(&ar.spec.role_setting, &seen);
    }
    Ok(Some(written))
}

/// One Event per audited transition (those in `range`), reason = the action.
async fn emit_events(ar: &ActivationRequest, range: std::ops::Range<usize>, ctx: &Context) {
    let Some(status) = ar.status.as_ref() else {
        return;
    };
    let reference = ar.object_ref(&());
    for h in &status.history[range.clone()] {
        let warning = matches!(
            h.action,
            crate::api::HistoryAction::Denied
                | crate::api::HistoryAction::Failed
                | crate::api::HistoryAction::Revoked
                | crate::api::HistoryAction::TimedOut
        );
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: format!("{:?}", h.action),
            note: h.message.clone().map(|m| m.chars().take(1000).collect()),
            action: format!("{:?}", h.action),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &reference).await {
            tracing::warn!(error = %e, request = %ar.name_any(), "could not record an Event (the audit stream has the transition)");
        }
    }
    // Notifications, queued only (delivery never holds up this reconcile).
    if let Some(rs) = ctx
        .role_settings
        .get(&ObjectRef::new(&ar.spec.role_setting))
    {
        for h in &status.history[range] {
            if let Some(n) =
                crate::notify::message::from_transition(ar, h, rs.spec.approval.required)
            {
                ctx.notifier.send(&rs, &n);
            }
        }
    }
}

async fn finalize(
    ar: &ActivationRequest,
    api: &Api<ActivationRequest>,
    ctx: &Context,
    pctx: &policy::Context<'_>,
) -> Result<Action, Error> {
    if !ar.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let deleted =
        rbac_writes::remove(ctx, &[], uid_of(ar), &request_binding(ar), &status_refs(ar)).await?;
    let phase = ar.status.as_ref().and_then(|s| s.phase);
    let open = phase.is_some_and(|p| !request::is_terminal(p));
    if open {
        note_revoked(ar, deleted, ctx);
    }
    let audited = ar
        .status
        .as_ref()
        .is_none_or(|s| usize::try_from(s.audited_through).unwrap_or(0) >= s.history.len());
    if open {
        let status = request::revoke_on_delete(ar, pctx.now);
        write_status(ar, Some(&status), false, ctx).await?;
        // The write triggers another pass, which audits the Revoked entry and then lets go.
        return Ok(Action::requeue(Duration::ZERO));
    }
    if !audited {
        write_status(ar, None, false, ctx).await?;
        return Ok(Action::requeue(Duration::ZERO));
    }
    rbac_writes::remove_finalizer(api, ar).await?;
    ctx.audit.forget(&ar.uid().unwrap_or_default());
    ctx.written.forget(&ar.uid().unwrap_or_default());
    Ok(Action::await_change())
}

fn uid_of(ar: &ActivationRequest) -> &str {
    ar.metadata.uid.as_deref().unwrap_or_default()
}

/// Whether a managed binding (by its labels) belongs to request `ar`.
fn request_binding(ar: &ActivationRequest) -> impl Fn(&Kept) -> bool + Sync + '_ {
    move |labels| {
        bindings::owner_of(labels).is_some_and(|(_, _, u)| Some(u) == ar.metadata.uid.as_deref())
    }
}

/// The bindings a request's status names (found even if the cache lost track of them).
fn status_refs(ar: &ActivationRequest) -> Vec<crate::api::BindingRef> {
    ar.status
        .iter()
        .flat_map(|s| s.bindings.iter().cloned())
        .collect()
}

/// Deletes managed bindings whose request no longer exists (or is another request with the
/// same name, or has ended): kube-runtime does not reconcile a request that is gone, so its
/// leftovers are found by this sweep, run at start and periodically (SPEC invariant 4).
pub async fn sweep_orphans(ctx: &Context) -> Result<usize, Error> {
    let now = Utc::now();
    let assignment_holds = |labels: &Kept| {
        bindings::assignment_owner_of(labels).is_some_and(|(ns, name, uid)| {
            ctx.assignments
                .get(&ObjectRef::new(name).within(ns))
                .filter(|ea| ea.metadata.uid.as_deref() == Some(uid))
                // One that does not decode holds nothing: its binding goes (fail closed).
                .and_then(|ea| ea.full().ok())
                .is_some_and(|ea| {
                    let rs = ctx
                        .role_settings
                        .get(&ObjectRef::new(&ea.spec.role_setting));
                    let cluster_ns = &ctx.settings.cluster_scope_namespace;
                    eligibility::phase(&ea, rs.as_deref(), Ok(()), cluster_ns, now).0
                        == crate::api::AssignmentPhase::Active
                })
        })
    };
    let live = |labels: &Kept| {
        assignment_holds(labels)
            || bindings::owner_of(labels).is_some_and(|(ns, name, uid)| {
                ctx.requests
                    .get(&ObjectRef::new(name).within(ns))
                    .is_some_and(|ar| {
                        ar.metadata.uid.as_deref() == Some(uid)
                            && !ar
                                .status
                                .as_ref()
                                .and_then(|s| s.phase)
                                .is_some_and(request::is_terminal)
                    })
            })
    };
    // Past its expiry annotation, a binding goes whatever its request says: after an outage
    // the requests' own passes record the expiries, but access ends first, here, in bulk.
    let live = |labels: &Kept, annotations: &Kept| {
        // A second's grace: a binding at its expiry is its request's to revoke (and record).
        live(labels) && !crate::sweep::past_expiry(annotations, now - chrono::TimeDelta::seconds(1))
    };
    let dp = DeleteParams::default();
    let rbs: Vec<(String, String)> = ctx
        .role_bindings
        .state()
        .iter()
        .filter(|b| !live(b.labels(), b.annotations()))
        .map(|b| {
            (
                b.namespace().unwrap_or_default().to_string(),
                b.name().to_string(),
            )
        })
        .collect();
    let crbs: Vec<String> = ctx
        .cluster_role_bindings
        .state()
        .iter()
        .filter(|b| !live(b.labels(), b.annotations()))
        .map(|b| b.name().to_string())
        .collect();
    let removed = rbs.len() + crbs.len();
    // A few at a time: a thousand expired at once must not wait for each other, nor flood the
    // apiserver (which would answer 429).
    let mut deletes: Vec<futures::future::BoxFuture<'static, Result<usize, Error>>> = Vec::new();
    for (ns, name) in rbs {
        tracing::warn!(binding = %name, namespace = %ns, "removing a managed RoleBinding that is past its expiry or whose request is gone or ended");
        let api = Api::<RoleBinding>::namespaced(ctx.client.clone(), &ns);
        deletes.push(rbac_writes::delete(api, name, dp.clone()).boxed());
    }
    for name in crbs {
        tracing::warn!(binding = %name, "removing a managed ClusterRoleBinding that is past its expiry or whose request is gone or ended");
        let api = Api::<ClusterRoleBinding>::all(ctx.client.clone());
        deletes.push(rbac_writes::delete(api, name, dp.clone()).boxed());
    }
    let results: Vec<Result<usize, Error>> = futures::stream::iter(deletes)
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<_>, Error>>()?;
    Ok(removed)
}
