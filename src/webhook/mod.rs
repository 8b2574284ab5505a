//! The admission webhook: a thin HTTPS transport around the pure decisions in [`review`].
//!
//! `POST /mutate` stamps identities; `POST /validate` decides. The handler only fetches what a
//! decision needs: from the controllers' caches, or live when the cache does not have it yet
//! (a RoleSetting applied in the same `kubectl apply` as the request that names it). Nothing
//! here writes anything, so dry-run requests have no side effects.
//!
//! TLS: the certificate and key are read from files and re-read when they change (mounted
//! Secrets rotate in place); the test environment issues them from its CA for 127.0.0.1.
//!
//! Every request is timed and every refusal counted by its stable reason code
//! ([`review::Reason`]) in [`crate::metrics::Metrics`]: the messages are for people and may be
//! reworded, the codes are for alerts and dashboards.

pub mod config;
pub mod review;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use axum::{Json, Router, extract::State, routing::post};
use chrono::Utc;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, ResourceExt,
    core::{
        DynamicObject,
        admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
    },
    runtime::reflector::ObjectRef,
};
use serde::de::DeserializeOwned;

use crate::{
    Error,
    api::{ActivationRequest, EligibleAssignment, RoleSetting},
    controller::Context,
};
use review::{Settings, Verdict};

/// Where the webhook listens and its TLS files.
#[derive(Debug, Clone)]
pub struct Listen {
    /// The HTTPS address.
    pub addr: SocketAddr,
    /// PEM certificate (chain).
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
}

struct Shared {
    ctx: Arc<Context>,
    settings: Settings,
}

/// Serves the webhook until the process ends; `on_listening` is called once the HTTPS listener
/// is bound (readiness).
pub async fn serve(
    listen: Listen,
    ctx: Arc<Context>,
    settings: Settings,
    on_listening: impl FnOnce() + Send + 'static,
) -> Result<(), Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls =
        axum_server::tls_rustls::RustlsConfig::from_pem_file(&listen.cert_file, &listen.key_file)
            .await
            .map_err(Error::io("read the webhook certificate", &listen.cert_file))?;
    tokio::spawn(reload_on_change(
        tls.clone(),
        listen.cert_file.clone(),
        listen.key_file.clone(),
    ));
    let app = router(ctx, settings);
    let handle = axum_server::Handle::new();
    let bound = handle.clone();
    tokio::spawn(async move {
        if let Some(addr) = bound.listening().await {
            tracing::info!(%addr, "serving the admission webhook");
            on_listening();
        }
    });
    axum_server::bind_rustls(listen.addr, tls)
        .handle(handle)
        .serve(app.into_make_service())
        .await
        .map_err(Error::io("serve the webhook on", listen.addr.to_string()))
}

/// The webhook's routes: `POST /mutate` and `POST /validate` (AdmissionReview v1 JSON).
pub fn router(ctx: Arc<Context>, settings: Settings) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/validate", post(validate))
        .with_state(Arc::new(Shared { ctx, settings }))
}

async fn reload_on_change(tls: axum_server::tls_rustls::RustlsConfig, cert: PathBuf, key: PathBuf) {
    let stamp = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = (stamp(&cert), stamp(&key));
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let now = (stamp(&cert), stamp(&key));
        if now != seen {
            match tls.reload_from_pem_file(&cert, &key).await {
                Ok(()) => tracing::info!("reloaded the webhook certificate"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not reload the webhook certificate; keeping the old one")
                }
            }
            seen = now;
        }
    }
}

/// The `operation` label of a webhook request.
fn operation_name(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// The answer to the apiserver, with the request's latency (since `started`) and, for a
/// refusal, its reason code recorded.
fn respond(
    s: &Shared,
    webhook: &'static str,
    started: std::time::Instant,
    req: &AdmissionRequest<DynamicObject>,
    verdict: Verdict,
) -> Json<AdmissionReview<DynamicObject>> {
    let metrics = &s.ctx.metrics;
    let resource =
        crate::metrics::webhook_resource(&req.resource.resource, req.sub_resource.as_deref());
    let base = AdmissionResponse::from(req);
    let (resp, refused) = match verdict {
        Verdict::Allow => (base, None),
        Verdict::Deny(code, msg) => {
            tracing::info!(user = req.user_info.username.as_deref().unwrap_or_default(), kind = %req.kind.kind, name = %req.name, operation = ?req.operation, code = code.as_str(), reason = %msg, "admission denied");
            let mut r = base.deny(msg);
            // A policy refusal is a 403 Forbidden, as for RBAC (kube's default is 400).
            r.result.code = 403;
            r.result.reason = "Forbidden".into();
            (r, Some(code))
        }
        Verdict::Patch(p) => match base.with_patch(p) {
            Ok(r) => (r, None),
            Err(e) => (
                AdmissionResponse::from(req)
                    .deny(format!("kube-pim could not build its patch: {e}")),
                Some(review::Reason::Internal),
            ),
        },
    };
    if let Some(code) = refused {
        metrics.webhook_denied(resource, code.as_str());
    }
    metrics.webhook_request(
        webhook,
        resource,
        operation_name(&req.operation),
        started.elapsed().as_secs_f64(),
    );
    Json(resp.into_review())
}

fn bad_request(msg: &str) -> Json<AdmissionReview<DynamicObject>> {
    Json(AdmissionResponse::invalid(msg).into_review())
}

fn typed<K: DeserializeOwned>(o: Option<&DynamicObject>) -> Option<K> {
    o.and_then(|o| serde_json::to_value(o).ok())
        .and_then(|v| serde_json::from_value(v).ok())
}

fn raw(o: Option<&DynamicObject>) -> serde_json::Value {
    o.and_then(|o| serde_json::to_value(o).ok())
        .unwrap_or_default()
}

async fn mutate(
    State(s): State<Arc<Shared>>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let started = std::time::Instant::now();
    let Ok(req): Result<AdmissionRequest<DynamicObject>, _> = review.try_into() else {
        return bad_request("not an AdmissionReview request");
    };
    let user = &req.user_info;
    let verdict = match (
        req.resource.resource.as_str(),
        req.sub_resource.as_deref(),
        &req.operation,
    ) {
        ("activationrequests", None, Operation::Create) => {
            review::stamp_requester(&raw(req.object.as_ref()), user)
        }
        ("activationrequests", None, Operation::Update) => review::stamp_deactivated_by(
            &raw(req.old_object.as_ref()),
            &raw(req.object.as_ref()),
            user,
        ),
        ("activationrequests", Some("status"), Operation::Update) => {
            let old = raw(req.old_object.as_ref());
            let rs_name = old
                .pointer("/spec/roleSetting")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string();
            let rs = role_setting(&s.ctx, &rs_name).await;
            review::stamp_approval(
                &old,
                &raw(req.object.as_ref()),
                user,
                rs.as_ref(),
                Utc::now(),
            )
        }
        ("eligibleassignments", None, Operation::Create | Operation::Update) => {
            review::stamp_authorized_by(&raw(req.object.as_ref()), user)
        }
        _ => Verdict::Allow,
    };
    respond(&s, "mutate", started, &req, verdict)
}

async fn validate(
    State(s): State<Arc<Shared>>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let started = std::time::Instant::now();
    let Ok(req): Result<AdmissionRequest<DynamicObject>, _> = review.try_into() else {
        return bad_request("not an AdmissionReview request");
    };
    let verdict = decide(&s, &req).await;
    if !matches!(verdict, Verdict::Deny(..)) && !req.dry_run {
        audit_policy_write(&s.ctx, &req).await;
    }
    respond(&s, "validate", started, &req, verdict)
}

async fn decide(s: &Shared, req: &AdmissionRequest<DynamicObject>) -> Verdict {
    let user = &req.user_info;
    let now = Utc::now();
    let ns = req.namespace.clone().unwrap_or_default();
    let malformed = || {
        Verdict::Deny(
            review::Reason::Malformed,
            "kube-pim could not read the object: it does not match the schema".into(),
        )
    };
    // Fail closed: without what it needed to look at, kube-pim cannot tell whether to allow.
    let internal = |what: &str| {
        Verdict::Deny(
            review::Reason::Internal,
            format!(
                "{what}; kube-pim refuses rather than decide without it: restart the operator to rebuild its caches, and report it"
            ),
        )
    };
    match (
        req.resource.resource.as_str(),
        req.sub_resource.as_deref(),
        &req.operation,
    ) {
        ("activationrequests", None, Operation::Create) => {
            let Some(ar) = typed::<ActivationRequest>(req.object.as_ref()) else {
                return malformed();
            };
            let rs = role_setting(&s.ctx, &ar.spec.role_setting).await;
            let wanted = crate::decide::eligibility::Wanted::of(&ar);
            // The namespace's assignments that name the requester, decoded whole (`select`
            // looks at no other).
            let Ok(cached) = s
                .ctx
                .assignment_namespaces
                .select(&s.ctx.assignments, &ns, |ea| {
                    crate::decide::eligibility::names(&wanted, ea)
                })
                .iter()
                .map(|ea| ea.full())
                .collect::<Result<Vec<EligibleAssignment>, _>>()
            else {
                return internal("an EligibleAssignment in the cache does not decode");
            };
            // Not eligible by the cache: read the namespace's assignments live before refusing
            // (one applied a moment ago may not have reached the cache yet).
            let found = crate::decide::eligibility::select(
                &wanted,
                rs.as_ref(),
                &cached,
                &s.settings.cluster_scope_namespace,
                now,
            )
            .is_some();
            let owned = if found || rs.is_none() {
                cached
            } else {
                Api::<EligibleAssignment>::namespaced(s.ctx.client.clone(), &ns)
                    .list(&Default::default())
                    .await
                    .map(|l| l.items)
                    .unwrap_or(cached)
            };
            let eas: Vec<&EligibleAssignment> = owned.iter().collect();
            // For `extends`: the request it names, and any other extending that one.
            let Ok(related) = ar
                .spec
                .extends
                .as_deref()
                .map(|target| {
                    s.ctx.request_namespaces.select(&s.ctx.requests, &ns, |r| {
                        r.metadata.name.as_deref() == Some(target)
                            || r.spec.extends.as_deref() == Some(target)
                    })
                })
                .unwrap_or_default()
                .iter()
                .map(|r| r.full())
                .collect::<Result<Vec<ActivationRequest>, _>>()
            else {
                return internal("an ActivationRequest in the cache does not decode");
            };
            let ars: Vec<&ActivationRequest> = related.iter().collect();
            let risks = match &rs {
                Some(rs) => role_risks(&s.ctx, rs).await,
                None => Vec::new(),
            };
            let open_by_requester = s
                .ctx
                .requests
                .state_filter(|r| {
                    r.spec.requester.username == ar.spec.requester.username
                        && r.phase()
                            .is_none_or(|p| !crate::decide::request::is_terminal(p))
                })
                .len();
            let facts = review::RequestFacts {
                role_setting: rs.as_ref(),
                assignments: &eas,
                requests: &ars,
                role_risks: &risks,
                open_by_requester,
            };
            review::validate_request_create(&ar, user, &facts, &s.settings, now)
        }
        ("activationrequests", None, Operation::Update) => {
            let (Some(old), Some(new)) = (
                typed::<ActivationRequest>(req.old_object.as_ref()),
                typed::<ActivationRequest>(req.object.as_ref()),
            ) else {
                return malformed();
            };
            let rs = role_setting(&s.ctx, &old.spec.role_setting).await;
            let may_bind = review::deactivation_needs_bind_check(&old, &new, user, rs.as_ref())
                && match &rs {
                    Some(rs) => may_bind_roles(&s.ctx, user, rs, &old).await,
                    None => false,
                };
            review::validate_request_update(&old, &new, user, rs.as_ref(), may_bind)
        }
        ("activationrequests", Some("status"), Operation::Update) => {
            let Some(old) = typed::<ActivationRequest>(req.old_object.as_ref()) else {
                return malformed();
            };
            let Some(new) = typed::<ActivationRequest>(req.object.as_ref()) else {
                return Verdict::Deny(review::Reason::Malformed, "status.approvals entries need a decision (Approved or Denied); approver and time are filled in by kube-pim".into());
            };
            let rs = role_setting(&s.ctx, &old.spec.role_setting).await;
            review::validate_decision(&old, &new, user, rs.as_ref(), now)
        }
        ("activationrequests", None, Operation::Delete) => {
            let terminating = namespace_terminating(&s.ctx, &ns).await;
            // Unreadable is not a way around the rules (fail closed), except with the namespace.
            let Some(old) = typed::<ActivationRequest>(req.old_object.as_ref()) else {
                return if terminating {
                    Verdict::Allow
                } else {
                    malformed()
                };
            };
            review::validate_request_delete(&old, user, &s.settings, terminating)
        }
        ("eligibleassignments", None, Operation::Create | Operation::Update) => {
            let Some(ea) = typed::<EligibleAssignment>(req.object.as_ref()) else {
                return malformed();
            };
            let rs = role_setting(&s.ctx, &ea.spec.role_setting).await;
            let old = typed::<EligibleAssignment>(req.old_object.as_ref());
            // A RoleSetting that does not exist yet grants nothing: the controller asks again,
            // as the writer recorded by mutation, once it does.
            let unbindable = match &rs {
                Some(rs) => {
                    match crate::authz::first_unbindable(
                        &s.ctx.client,
                        user,
                        &role_names(rs),
                        crate::authz::grant_namespace(&ea),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(e) => return unanswered(&e),
                    }
                }
                None => None,
            };
            review::validate_assignment(
                old.as_ref(),
                &ea,
                user,
                rs.as_ref(),
                unbindable.as_deref(),
                &s.settings,
                now,
            )
        }
        ("eligibleassignments", None, Operation::Delete) => {
            let Some(old) = typed::<EligibleAssignment>(req.old_object.as_ref()) else {
                return if namespace_terminating(&s.ctx, &ns).await {
                    Verdict::Allow
                } else {
                    malformed()
                };
            };
            let rs = role_setting(&s.ctx, &old.spec.role_setting).await;
            let others = s
                .ctx
                .assignments
                .state()
                .iter()
                .filter(|a| {
                    a.spec.role_setting == old.spec.role_setting
                        && a.metadata.uid != old.metadata.uid
                        && a.metadata.deletion_timestamp.is_none()
                })
                .count();
            let terminating = namespace_terminating(&s.ctx, &ns).await;
            review::validate_assignment_delete(&old, rs.as_ref(), others, terminating)
        }
        ("rolesettings", None, Operation::Create | Operation::Update) => {
            let Some(rs) = typed::<RoleSetting>(req.object.as_ref()) else {
                return malformed();
            };
            let unbindable =
                match crate::authz::first_unbindable(&s.ctx.client, user, &role_names(&rs), None)
                    .await
                {
                    Ok(r) => r,
                    Err(e) => return unanswered(&e),
                };
            let risks = role_risks(&s.ctx, &rs).await;
            review::validate_role_setting(
                &rs,
                user,
                unbindable.as_deref(),
                &risks,
                &s.settings.notification_targets,
            )
        }
        _ => Verdict::Allow,
    }
}

/// Writes to RoleSettings and EligibleAssignments go to the audit stream with the actor the
/// apiserver authenticated (SPEC section 3, *Audit*). Recorded at admission, the one place that
/// sees the actor of a DELETE too; so a line means "admitted", and a write that a later
/// admission step refuses is still recorded as admitted. Dry runs are not recorded.
async fn audit_policy_write(ctx: &Context, req: &AdmissionRequest<DynamicObject>) {
    let resource = req.resource.resource.as_str();
    if !matches!(resource, "rolesettings" | "eligibleassignments") || req.sub_resource.is_some() {
        return;
    }
    let record = serde_json::json!({
        "apiVersion": crate::controller::audit::AUDIT_API_VERSION,
        "kind": "PolicyWrite",
        "id": req.uid,
        "time": Utc::now(),
        "operation": format!("{:?}", req.operation).to_uppercase(),
        "resource": resource,
        "namespace": req.namespace,
        "name": req.name,
        "actor": review::identity(&req.user_info),
    });
    if let Err(e) = ctx.audit.record(record).await {
        tracing::warn!(error = %e, "could not write a policy audit record");
    }
}

/// Whether `user` may `bind` every role of `rs` where `ar` grants it (its namespace, or
/// cluster-wide for Cluster scope), as the apiserver's authorizer answers for that user.
/// Fail closed: an unanswered check is a no.
async fn may_bind_roles(
    ctx: &Context,
    user: &k8s_openapi::api::authentication::v1::UserInfo,
    rs: &RoleSetting,
    ar: &ActivationRequest,
) -> bool {
    let namespace = match ar.spec.scope {
        crate::api::Scope::Namespace => ar.namespace(),
        crate::api::Scope::Cluster => None,
    };
    match crate::authz::first_unbindable(&ctx.client, user, &role_names(rs), namespace.as_deref())
        .await
    {
        Ok(refused) => refused.is_none(),
        Err(e) => {
            tracing::warn!(error = %e, "SubjectAccessReview failed; treating as not allowed");
            false
        }
    }
}

/// The persistence risks of each role of `rs` (from the cache, or read live when the cache
/// does not have the role; a role that does not exist grants nothing yet, so it has none).
async fn role_risks(ctx: &Context, rs: &RoleSetting) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for r in &rs.spec.role_refs {
        let role = match ctx.cluster_roles.get(&ObjectRef::new(&r.name)) {
            Some(cr) => Ok(Some(cr.as_ref().clone())),
            None => {
                Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(ctx.client.clone())
                    .get_opt(&r.name)
                    .await
            }
        };
        let risks = match role {
            Ok(role) => {
                crate::decide::persistence::risks(&role.and_then(|cr| cr.rules).unwrap_or_default())
            }
            // Unread is not harmless: assume the worst (fail closed).
            Err(e) => vec![format!(
                "could not be read ({e}), so kube-pim assumes it can"
            )],
        };
        out.push((r.name.clone(), risks));
    }
    out
}

fn role_names(rs: &RoleSetting) -> Vec<String> {
    rs.spec.role_refs.iter().map(|r| r.name.clone()).collect()
}

/// Fail closed when the apiserver does not answer a SubjectAccessReview.
fn unanswered(e: &Error) -> Verdict {
    tracing::warn!(error = %e, "SubjectAccessReview failed; refusing");
    Verdict::Deny(
        review::Reason::AuthorizationCheckFailed,
        format!("kube-pim could not check your bind permission ({e}): try again in a moment"),
    )
}

/// A RoleSetting from the cache, or read live when the cache does not have it (yet).
async fn role_setting(ctx: &Context, name: &str) -> Option<RoleSetting> {
    ctx.role_setting(name)
        .await
        .ok()
        .flatten()
        .map(|rs| rs.as_ref().clone())
}

/// Whether a namespace is being deleted (then its requests and assignments may go).
async fn namespace_terminating(ctx: &Context, ns: &str) -> bool {
    match Api::<Namespace>::all(ctx.client.clone()).get_opt(ns).await {
        Ok(Some(n)) => n.metadata.deletion_timestamp.is_some(),
        Ok(None) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod http_tests;
