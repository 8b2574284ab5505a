//! SPEC invariant 3: nobody grants through kube-pim more than they could grant with RBAC
//! themselves. Whether an identity may `bind` ClusterRoles where kube-pim would grant them is
//! asked of the apiserver's own authorizer (a SubjectAccessReview carrying username, uid,
//! groups and extra), never worked out from RBAC objects here: the authorizer also knows
//! webhooks, aggregation and whatever else the cluster uses.
//!
//! The admission webhook asks as the writer of a RoleSetting or an EligibleAssignment. The
//! controllers ask again as the identity recorded in an assignment's `kubepim.io/authorized-by`
//! annotation whenever what it would grant changes (the key of an answer is the identity, the
//! roles and the scope, so a widened RoleSetting is a new question), and periodically: each
//! tick of the assignments' resync (one timer for every assignment) starts a new round, and an
//! answer from before the round is not used in it, so the first question of each key in the
//! round is asked afresh. Within a round an answer is kept for half a resync period. (Kept
//! for a whole period, an answer given late in one resync's burst was still fresh early in the
//! next one; and without rounds, an answer fetched by a request's reconcile just before a tick
//! served that tick, so a revoked `bind` could outlast it by half a period.) That keeps an
//! activation free of API calls while a revoked `bind` still ends access within a resync. API errors are not answers: they are returned,
//! never cached, so no decision is taken on a missing fact.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::UserInfo,
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client};

use crate::{
    Error,
    api::{EligibleAssignment, Requester, RoleSetting, Scope},
    decide::Violation,
};

/// The annotation that records who wrote an EligibleAssignment (re-written on every write).
pub const AUTHORIZED_BY: &str = "kubepim.io/authorized-by";

/// The condition reason of an assignment whose writer may not bind its roles.
pub const NOT_AUTHORIZED_TO_BIND: &str = "NotAuthorizedToBind";

/// Whether `user` (username, uid, groups, extra) may do `attributes`, as the apiserver's
/// authorizer answers: one SubjectAccessReview.
pub async fn allowed(
    client: &Client,
    user: &UserInfo,
    attributes: ResourceAttributes,
) -> Result<bool, Error> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username.clone(),
            uid: user.uid.clone(),
            groups: user.groups.clone(),
            extra: user.extra.clone(),
            resource_attributes: Some(attributes),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&Default::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// A requester's identity as a SubjectAccessReview asks about it.
pub fn requester_info(r: &Requester) -> UserInfo {
    UserInfo {
        username: Some(r.username.clone()),
        uid: r.uid.clone(),
        groups: Some(r.groups.clone()),
        extra: Some(r.extra.to_map()),
    }
}

/// The first role `user` may not bind at `namespace` (cluster-wide when `None`); one
/// SubjectAccessReview per role.
pub async fn first_unbindable(
    client: &Client,
    user: &UserInfo,
    roles: &[String],
    namespace: Option<&str>,
) -> Result<Option<String>, Error> {
    for role in roles {
        if !allowed(client, user, bind_attributes(role, namespace)).await? {
            return Ok(Some(role.clone()));
        }
    }
    Ok(None)
}

/// `bind` on the ClusterRole `role`, in `namespace` or cluster-wide.
pub fn bind_attributes(role: &str, namespace: Option<&str>) -> ResourceAttributes {
    ResourceAttributes {
        verb: Some("bind".into()),
        group: Some("rbac.authorization.k8s.io".into()),
        resource: Some("clusterroles".into()),
        name: Some(role.to_string()),
        namespace: namespace.map(str::to_string),
        ..Default::default()
    }
}

/// Where an assignment grants: its namespace for Namespace scope, cluster-wide for Cluster.
pub fn grant_namespace(ea: &EligibleAssignment) -> Option<&str> {
    match ea.spec.scope {
        Scope::Namespace => ea.metadata.namespace.as_deref(),
        Scope::Cluster => None,
    }
}

/// The writer recorded on an assignment, if the annotation is there and readable.
pub fn recorded_writer(ea: &EligibleAssignment) -> Option<UserInfo> {
    ea.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(AUTHORIZED_BY))
        .and_then(|s| serde_json::from_str(s).ok())
        .filter(|u: &UserInfo| u.username.as_deref().is_some_and(|n| !n.is_empty()))
}

/// The refusal for a writer who may not bind `role` where the assignment grants it.
pub fn not_authorized(ea: &EligibleAssignment, writer: &str, role: &str) -> Violation {
    let at = match grant_namespace(ea) {
        Some(ns) => format!("in namespace {ns}"),
        None => "cluster-wide".into(),
    };
    Violation::new(
        NOT_AUTHORIZED_TO_BIND,
        format!(
            "{writer}, who wrote this assignment, may not bind ClusterRole {role} {at} (RoleSetting {}): re-apply it as someone who may (kubectl auth can-i bind clusterroles/{role}{})",
            ea.spec.role_setting,
            grant_namespace(ea).map_or(String::new(), |ns| format!(" -n {ns}"))
        ),
    )
}

/// Whether the requester (as stamped) could act as `approver`: impersonate them, or, for a
/// ServiceAccount approver, impersonate it or mint its tokens (SPEC section 3, *Approval*:
/// such an approval does not count). Returns why, or `None`.
pub async fn could_act_as(
    client: &Client,
    requester: &Requester,
    approver: &str,
) -> Result<Option<String>, Error> {
    let user = requester_info(requester);
    let mut asks = vec![(
        ResourceAttributes {
            verb: Some("impersonate".into()),
            group: Some(String::new()),
            resource: Some("users".into()),
            name: Some(approver.to_string()),
            ..Default::default()
        },
        format!("the requester may impersonate {approver}"),
    )];
    if let Some((ns, name)) = crate::decide::parse_service_account(approver) {
        asks.push((
            ResourceAttributes {
                verb: Some("impersonate".into()),
                group: Some(String::new()),
                resource: Some("serviceaccounts".into()),
                name: Some(name.to_string()),
                namespace: Some(ns.to_string()),
                ..Default::default()
            },
            format!("the requester may impersonate ServiceAccount {ns}/{name}"),
        ));
        asks.push((
            ResourceAttributes {
                verb: Some("create".into()),
                group: Some(String::new()),
                resource: Some("serviceaccounts".into()),
                subresource: Some("token".into()),
                name: Some(name.to_string()),
                namespace: Some(ns.to_string()),
                ..Default::default()
            },
            format!("the requester may create tokens for ServiceAccount {ns}/{name}"),
        ));
    }
    for (attributes, why) in asks {
        if allowed(client, &user, attributes).await? {
            return Ok(Some(why));
        }
    }
    Ok(None)
}

type Key = (String, Vec<String>, Option<String>);

/// Answers (a refusal's reason, or `None`) by key, with when they were given.
type Answers<K> = Mutex<HashMap<K, (Instant, Option<String>)>>;

/// Cached `bind` answers for recorded writers (see the module comment).
pub struct Authorizer {
    client: Client,
    ttl: Duration,
    answers: Answers<Key>,
    /// Separation-of-duties answers by (requester, approver).
    duties: Answers<(String, String)>,
    /// When the current round began: `bind` answers from before it are not used.
    round: Mutex<Instant>,
}

impl Authorizer {
    /// Answers are kept for `ttl` (half the resync period; see the module comment).
    pub fn new(client: Client, ttl: Duration) -> Self {
        Self {
            client,
            ttl,
            answers: Mutex::default(),
            duties: Mutex::default(),
            round: Mutex::new(Instant::now()),
        }
    }

    /// Starts a new round: each `bind` question is asked afresh the first time it comes up
    /// from now on (see the module comment).
    pub fn new_round(&self) {
        *self.round.lock().expect("authorizer round lock") = Instant::now();
    }

    /// [`could_act_as`], with answers kept for a resync: a request's approvals are counted on
    /// every reconcile while it is Pending, and the answer rarely changes in that time.
    pub async fn requester_could_act_as(
        &self,
        requester: &Requester,
        approver: &str,
    ) -> Result<Option<String>, Error> {
        let key = (
            serde_json::to_string(requester).unwrap_or_default(),
            approver.to_string(),
        );
        let ttl = self.ttl;
        if let Some((_, a)) = self
            .duties
            .lock()
            .expect("authorizer cache lock")
            .get(&key)
            .filter(|(at, _)| at.elapsed() < ttl)
        {
            return Ok(a.clone());
        }
        let a = could_act_as(&self.client, requester, approver).await?;
        let mut duties = self.duties.lock().expect("authorizer cache lock");
        duties.retain(|_, (at, _)| at.elapsed() < ttl);
        duties.insert(key, (Instant::now(), a.clone()));
        Ok(a)
    }

    /// Whether the recorded writer of `ea` may bind every role of `rs` where `ea` grants it.
    /// An assignment without a readable record was not written through kube-pim's admission
    /// webhook, so nobody vouches for it: it is not authorized.
    ///
    /// Never an error: when the apiserver does not answer, the last positive answer (even one
    /// older than a resync) stands, and without one the assignment is not authorized (fail
    /// closed) until it does. So an outage of SubjectAccessReviews never holds up expiry or
    /// revocation, and never grants anything new.
    pub async fn assignment(
        &self,
        ea: &EligibleAssignment,
        rs: &RoleSetting,
    ) -> Result<(), Violation> {
        let Some(writer) = recorded_writer(ea) else {
            return Err(Violation::new(
                NOT_AUTHORIZED_TO_BIND,
                format!(
                    "the assignment has no readable {AUTHORIZED_BY} annotation (it was written while kube-pim's admission webhook was not running): re-apply it"
                ),
            ));
        };
        let who = writer.username.clone().unwrap_or_default();
        let roles: Vec<String> = rs.spec.role_refs.iter().map(|r| r.name.clone()).collect();
        let ns = grant_namespace(ea).map(str::to_string);
        let key: Key = (
            serde_json::to_string(&writer).unwrap_or_default(),
            roles.clone(),
            ns.clone(),
        );
        let ttl = self.ttl;
        let round = *self.round.lock().expect("authorizer round lock");
        let known = self
            .answers
            .lock()
            .expect("authorizer cache lock")
            .get(&key)
            .map(|(at, _)| at.elapsed() < ttl && *at >= round);
        if known == Some(true) {
            return Ok(());
        }
        match first_unbindable(&self.client, &writer, &roles, ns.as_deref()).await {
            Ok(None) => {
                let mut answers = self.answers.lock().expect("authorizer cache lock");
                // Entries far past their time go when new ones come: the map stays as large
                // as what is live.
                answers.retain(|_, (at, _)| at.elapsed() < ttl * 10);
                answers.insert(key, (Instant::now(), None));
                Ok(())
            }
            // Refusals are not kept: a grant of bind counts at the next reconcile.
            Ok(Some(role)) => {
                self.answers
                    .lock()
                    .expect("authorizer cache lock")
                    .remove(&key);
                Err(not_authorized(ea, &who, &role))
            }
            Err(e) if known.is_some() => {
                tracing::warn!(error = %e, writer = %who, "could not re-check bind; the last positive answer stands");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, writer = %who, "could not check bind; not authorized until the apiserver answers");
                Err(Violation::new(
                    NOT_AUTHORIZED_TO_BIND,
                    format!(
                        "kube-pim could not check that {who} may bind the roles of RoleSetting {} ({e}); it asks again shortly",
                        ea.spec.role_setting
                    ),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::test_fixtures::*;
    use std::sync::Arc;

    #[test]
    fn the_recorded_writer_is_read_from_the_annotation_as_the_webhook_writes_it() {
        let mut ea = assignment("a", "payments", "rs", user("alice"));
        assert!(recorded_writer(&ea).is_none());
        let user = UserInfo {
            username: Some("carol".into()),
            uid: Some("u-1".into()),
            groups: Some(vec!["team".into(), "system:authenticated".into()]),
            extra: Some([("kubepim.io/amr".to_string(), vec!["mfa".to_string()])].into()),
        };
        ea.metadata.annotations = Some(
            [(
                AUTHORIZED_BY.to_string(),
                crate::webhook::review::identity(&user).to_string(),
            )]
            .into(),
        );
        assert_eq!(recorded_writer(&ea), Some(user));
        ea.metadata.annotations = Some([(AUTHORIZED_BY.to_string(), "{}".to_string())].into());
        assert!(recorded_writer(&ea).is_none(), "no username: nobody");
        ea.metadata.annotations = Some([(AUTHORIZED_BY.to_string(), "carol".to_string())].into());
        assert!(recorded_writer(&ea).is_none(), "not JSON: nobody");
    }

    /// A client whose SubjectAccessReviews answer `allowed`, counting the questions.
    fn sar_client(
        allowed: Arc<std::sync::atomic::AtomicBool>,
        asked: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Client {
        use std::sync::atomic::Ordering::SeqCst;
        let svc = tower::service_fn(move |_req: http::Request<kube::client::Body>| {
            asked.fetch_add(1, SeqCst);
            let body = serde_json::json!({
                "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {}, "status": {"allowed": allowed.load(SeqCst)}
            });
            async move {
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .status(201)
                        .body(kube::client::Body::from(body.to_string().into_bytes()))
                        .unwrap(),
                )
            }
        });
        Client::new(svc, "default")
    }

    #[tokio::test]
    async fn each_round_asks_afresh_and_within_one_an_answer_is_reused() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
        let (allowed, asked) = (
            Arc::new(AtomicBool::new(true)),
            Arc::new(AtomicUsize::new(0)),
        );
        let authz = Authorizer::new(
            sar_client(allowed.clone(), asked.clone()),
            Duration::from_secs(3600),
        );
        let mut ea = assignment("a", "payments", "rs", user("alice"));
        let writer = UserInfo {
            username: Some("carol".into()),
            ..Default::default()
        };
        ea.metadata.annotations = Some(
            [(
                AUTHORIZED_BY.to_string(),
                crate::webhook::review::identity(&writer).to_string(),
            )]
            .into(),
        );
        let rs = role_setting("rs");
        assert!(authz.assignment(&ea, &rs).await.is_ok());
        let first = asked.load(SeqCst);
        assert!(first > 0, "asked the apiserver");
        assert!(authz.assignment(&ea, &rs).await.is_ok());
        assert_eq!(asked.load(SeqCst), first, "reused within the round");
        // carol loses bind: the kept answer still serves this round...
        allowed.store(false, SeqCst);
        assert!(authz.assignment(&ea, &rs).await.is_ok());
        // ...and not the next one.
        authz.new_round();
        let refused = authz.assignment(&ea, &rs).await.unwrap_err();
        assert_eq!(refused.reason, NOT_AUTHORIZED_TO_BIND);
        assert!(asked.load(SeqCst) > first);
        // Refusals are not kept: a grant counts at the next question.
        allowed.store(true, SeqCst);
        assert!(authz.assignment(&ea, &rs).await.is_ok());
    }

    #[test]
    fn namespace_scope_is_checked_in_the_namespace_and_cluster_scope_cluster_wide() {
        let mut ea = assignment("a", "payments", "rs", user("alice"));
        assert_eq!(grant_namespace(&ea), Some("payments"));
        let a = bind_attributes("admin", grant_namespace(&ea));
        assert_eq!(a.verb.as_deref(), Some("bind"));
        assert_eq!(a.resource.as_deref(), Some("clusterroles"));
        assert_eq!(a.group.as_deref(), Some("rbac.authorization.k8s.io"));
        assert_eq!(a.name.as_deref(), Some("admin"));
        assert_eq!(a.namespace.as_deref(), Some("payments"));
        ea.spec.scope = Scope::Cluster;
        assert_eq!(grant_namespace(&ea), None);
        let v = not_authorized(&ea, "carol", "cluster-admin");
        assert_eq!(v.reason, NOT_AUTHORIZED_TO_BIND);
        assert!(v.message.contains("cluster-wide"), "{}", v.message);
        assert!(
            v.message
                .contains("kubectl auth can-i bind clusterroles/cluster-admin)"),
            "{}",
            v.message
        );
    }
}
