//! Faults (SPEC invariant 4): the operator crashing right after each of its writes, the
//! operator's permission to delete bindings withdrawn for a while, and its caches lagging.
//! Each test ends in the state an undisturbed run ends in: no duplicate or missing binding,
//! one history entry per transition, every transition on the audit stream, access gone (or,
//! for the lag, kept) at the end.
//!
//! In its own test binary (the tests stop the operator and change its RBAC), and the tests
//! here run one at a time.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{admin, operated, operator_pid, start_operator, start_operator_with_env, world::*};
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use kube::{Api, ResourceExt, api::ListParams};
use kube_pim::api::{ActivationRequest, HistoryAction, RequestPhase};
use serde_json::json;
use tokio::process::Child;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The operator under test: restarted (without a fault) whenever it has exited.
struct Operator {
    child: Child,
    starts: usize,
    crashed: usize,
}

impl Operator {
    fn ensure(&mut self) {
        if self.child.try_wait().unwrap().is_some() {
            self.crashed += 1;
            self.starts += 1;
            self.child = start_operator(operated(), &format!("kube-pim-{}", self.starts), &[]);
        }
    }
}

/// Waits until `f` holds for `name`, keeping the operator running.
async fn until(
    w: &World,
    op: &mut Operator,
    name: &str,
    what: &str,
    f: impl Fn(&ActivationRequest) -> bool,
) -> ActivationRequest {
    let api = w.requests(admin().await);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        op.ensure();
        let ar = api.get(name).await.unwrap();
        if f(&ar) {
            return ar;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never became {what}: {:?}",
            ar.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Retries `f` while the webhook is unreachable (the operator is between lives).
async fn admitted<T>(
    op: &mut Operator,
    mut f: impl AsyncFnMut() -> Result<T, kube::Error>,
) -> Result<T, kube::Error> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        op.ensure();
        match f().await {
            Err(kube::Error::Api(s))
                if s.message.contains("failed calling webhook") && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => return other,
        }
    }
}

fn phase(ar: &ActivationRequest) -> Option<RequestPhase> {
    ar.status.as_ref().and_then(|s| s.phase)
}

async fn managed(ns: &str) -> Vec<RoleBinding> {
    Api::<RoleBinding>::namespaced(admin().await, ns)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=kube-pim"))
        .await
        .unwrap()
        .items
}

/// One approved activation, start to end, with the operator exiting right after its `n`th
/// write (counted from its start) and restarted. Returns whether it crashed at all.
async fn lifecycle_with_a_crash_after(w: &World, n: usize) -> bool {
    let vars = [(kube_pim::operator::FAULT_EXIT_AFTER_WRITES, n.to_string())];
    let mut op = Operator {
        child: start_operator_with_env(operated(), &format!("kube-pim-fault-{n}"), &[], &vars),
        starts: 0,
        crashed: 0,
    };
    let alice = w.alice().await;
    let ar = admitted(&mut op, async || {
        w.ask(alice.clone(), json!({"duration": "4s"})).await
    })
    .await
    .unwrap();
    let name = ar.name_any();
    let pending = until(w, &mut op, &name, "ready for decisions", |ar| {
        phase(ar) == Some(RequestPhase::Pending)
            && ar.status.as_ref().is_some_and(|s| s.approvals.is_some())
    })
    .await;
    let bob = w.approver(&w.bob).await;
    match admitted(&mut op, async || {
        w.decide(bob.clone(), &pending, "Approved", Some("ok"))
            .await
    })
    .await
    {
        Ok(_) => {}
        // Admitted once already, its answer lost with the operator: that decision stands.
        Err(kube::Error::Api(s)) if s.message.contains("already decided") => {}
        Err(e) => panic!("approval refused: {e}"),
    }
    let active = until(w, &mut op, &name, "Active or later", |ar| {
        ar.status
            .as_ref()
            .is_some_and(|s| s.activation_time.is_some())
    })
    .await;
    if phase(&active) == Some(RequestPhase::Active) {
        let mine: Vec<_> = managed(&w.ns)
            .await
            .into_iter()
            .filter(|b| b.labels().get("kubepim.io/activation-request") == Some(&name))
            .collect();
        assert!(
            mine.len() <= 1,
            "crash after write {n}: duplicate bindings {mine:?}"
        );
    }
    let ended = until(w, &mut op, &name, "Expired, checked and released", |ar| {
        ar.status.as_ref().is_some_and(|s| {
            s.phase == Some(RequestPhase::Expired)
                && usize::try_from(s.audited_through).ok() == Some(s.history.len())
                && s.conditions.iter().any(|c| c.type_ == "ResidualAccess")
        }) && ar.finalizers().is_empty()
    })
    .await;
    assert_eq!(
        actions(&ended),
        [
            HistoryAction::Requested,
            HistoryAction::Approved,
            HistoryAction::Activated,
            HistoryAction::Expired
        ],
        "crash after write {n}: the history differs from an undisturbed run"
    );
    let residual = ended
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "ResidualAccess")
        .unwrap()
        .clone();
    assert_eq!(
        residual.status, "False",
        "crash after write {n}: {residual:?}"
    );
    w.audit_intact(&name).await;
    assert!(
        managed(&w.ns).await.is_empty(),
        "crash after write {n}: a binding is left"
    );
    w.access(&alice, false).await;
    let crashed = op.crashed > 0 || op.child.try_wait().unwrap().is_some();
    let _ = op.child.kill().await;
    crashed
}

#[tokio::test]
async fn a_crash_right_after_any_write_of_an_approved_activation_changes_nothing() {
    let _serial = SERIAL.lock().await;
    stop_the_first_operator();
    let setup = start_operator(operated(), "kube-pim-setup", &[]);
    common::wait_operator_ready(operated()).await;
    let w = World::with_group_approval("crash", 1).await;
    drop(setup);
    // Crash after the 1st, 2nd, ... write until a whole lifecycle runs without one.
    let mut n = 1;
    while lifecycle_with_a_crash_after(&w, n).await {
        // Reported, for the record of what was interrupted.
        let log = std::fs::read_to_string(
            operated()
                .dir()
                .join(format!("logs/kube-pim-fault-{n}.log")),
        )
        .unwrap_or_default();
        let at = log
            .lines()
            .find(|l| l.contains(kube_pim::operator::FAULT_EXIT_AFTER_WRITES))
            .unwrap_or("?");
        eprintln!("crash after write {n} ({at}): converged");
        n += 1;
        assert!(
            n < 60,
            "the operator kept crashing; the lifecycle needs fewer writes than that"
        );
    }
    eprintln!("an undisturbed lifecycle took fewer than {n} writes; crashed after each of 1..{n}");
    assert!(
        n > 5,
        "too few crash points exercised ({n}): the fault hook is not counting writes"
    );
}

/// The test environment's operator is replaced by ones each test starts and owns.
fn stop_the_first_operator() {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(operator_pid(operated())),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Sets whether the operator's ClusterRole allows deleting RoleBindings.
async fn operator_may_delete_role_bindings(allowed: bool) {
    let api: Api<ClusterRole> = Api::all(admin().await);
    let mut role = api
        .get(kube_pim::rbac::OPERATOR_CLUSTER_ROLE)
        .await
        .unwrap();
    for r in role.rules.iter_mut().flatten() {
        if r.resources.iter().flatten().any(|x| x == "rolebindings") {
            r.verbs.retain(|v| v != "delete");
            if allowed {
                r.verbs.push("delete".into());
            }
        }
    }
    role.metadata.managed_fields = None;
    api.replace(
        kube_pim::rbac::OPERATOR_CLUSTER_ROLE,
        &Default::default(),
        &role,
    )
    .await
    .unwrap();
}

/// Ending an activation while the operator may not delete RoleBindings: the apiserver answers
/// 403, the operator keeps trying, and the record never says access ended while the binding is
/// there. Once the permission is back, the revocation completes.
#[tokio::test]
async fn revocation_retries_through_real_403s_until_the_permission_is_back() {
    let _serial = SERIAL.lock().await;
    stop_the_first_operator();
    let env = operated();
    let _op = start_operator(env, "kube-pim-perm", &[]);
    common::wait_operator_ready(env).await;
    let w = World::new("perm", json!({})).await;
    let alice = w.alice().await;
    let ar = w
        .ask(alice.clone(), json!({"duration": "10m"}))
        .await
        .unwrap();
    let name = ar.name_any();
    let active = w.wait_phase(&name, RequestPhase::Active).await;
    let binding = active.status.as_ref().unwrap().bindings[0].name.clone();
    w.access(&alice, true).await;

    operator_may_delete_role_bindings(false).await;
    w.deactivate(alice.clone(), &name).await;
    let log = env.dir().join("logs/kube-pim-perm.log");
    eventually!(
        Duration::from_secs(30),
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("reconcile failed") && l.contains("forbidden")),
        "the operator never met the 403"
    );
    let meanwhile = w.requests(admin().await).get(&name).await.unwrap();
    assert_eq!(
        phase(&meanwhile),
        Some(RequestPhase::Active),
        "recorded as ended while the binding exists"
    );
    assert!(
        Api::<RoleBinding>::namespaced(admin().await, &w.ns)
            .get_opt(&binding)
            .await
            .unwrap()
            .is_some()
    );

    operator_may_delete_role_bindings(true).await;
    w.wait_phase(&name, RequestPhase::Deactivated).await;
    w.access(&alice, false).await;
    assert!(managed(&w.ns).await.is_empty());
    w.audit_intact(&name).await;
}

/// The webhook unreachable (invariant 5): requests and approvals are refused, while the
/// operator's own writes (excluded from the webhook by matchConditions) still revoke at expiry.
#[tokio::test]
async fn with_the_webhook_unreachable_requests_and_approvals_fail_closed_and_revocation_happens() {
    let _serial = SERIAL.lock().await;
    stop_the_first_operator();
    let env = operated();
    let _op = start_operator(env, "kube-pim-webhook-down", &[]);
    common::wait_operator_ready(env).await;
    let w = World::new("hookdown", json!({})).await;
    apply(
        &admin().await,
        &json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "RoleSetting", "metadata": {"name": format!("{}-appr", w.rs)},
            "spec": {"roleRefs": [{"name": "admin"}], "acknowledgePersistenceRisk": true,
                     "approval": {"required": true, "approvers": [{"kind": "Group", "name": w.leads}]}}}),
        None,
    )
    .await;
    apply(
        &admin().await,
        &json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "EligibleAssignment", "metadata": {"name": "alice-appr"},
            "spec": {"roleSetting": format!("{}-appr", w.rs), "subject": {"kind": "User", "name": w.alice}}}),
        Some(&w.ns),
    )
    .await;
    let alice = w.alice().await;
    let short = w
        .ask(alice.clone(), json!({"duration": "6s"}))
        .await
        .unwrap();
    let short = short.metadata.name.unwrap();
    let waiting = w
        .ask(
            alice.clone(),
            json!({"roleSetting": format!("{}-appr", w.rs)}),
        )
        .await
        .unwrap();
    let waiting = w
        .wait(
            waiting.metadata.name.as_deref().unwrap(),
            "ready for decisions",
            |ar| ar.status.as_ref().is_some_and(|s| s.approvals.is_some()),
        )
        .await;
    w.wait_phase(&short, RequestPhase::Active).await;
    w.access(&alice, true).await;

    // The apiserver can no longer reach the webhook.
    let [dead] = kube_pim::testenv::free_ports::<1>().unwrap();
    let ca = std::fs::read_to_string(env.dir().join("pki/ca.crt")).unwrap();
    kube_pim::testenv::install_webhooks(
        &admin().await,
        &format!("https://127.0.0.1:{dead}"),
        &ca,
        kube_pim::testenv::OPERATOR_USER,
    )
    .await
    .unwrap();
    let (code, msg) = common::refusal(w.ask(alice.clone(), json!({})).await);
    assert!(msg.contains("failed calling webhook"), "{code}: {msg}");
    let (_, msg) = common::refusal(
        w.decide(w.approver(&w.bob).await, &waiting, "Approved", Some("ok"))
            .await,
    );
    assert!(msg.contains("failed calling webhook"), "{msg}");

    // Revocation does not depend on the webhook.
    w.wait_phase(&short, RequestPhase::Expired).await;
    w.access(&alice, false).await;
    assert!(managed(&w.ns).await.is_empty());
    w.audit_intact(&short).await;
    let still = w
        .requests(admin().await)
        .get(&waiting.name_any())
        .await
        .unwrap();
    assert_eq!(phase(&still), Some(RequestPhase::Pending));

    // Put the webhook back for whatever runs next.
    let how: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.dir().join("operator.json")).unwrap()).unwrap();
    let args: Vec<String> = serde_json::from_value(how["args"].clone()).unwrap();
    let addr = args
        .iter()
        .find_map(|a| a.strip_prefix("--webhook-addr="))
        .unwrap()
        .to_string();
    kube_pim::testenv::install_webhooks(
        &admin().await,
        &format!("https://{addr}"),
        &ca,
        kube_pim::testenv::OPERATOR_USER,
    )
    .await
    .unwrap();
}

/// An operator (in place of the test environment's) whose watches trail by `delays` (see
/// [`kube_pim::controller::lenient::FAULT_WATCH_DELAY`]), ready, and a new world.
async fn lagging(prefix: &str, delays: &str) -> (Child, World) {
    stop_the_first_operator();
    let env = operated();
    let vars = [(
        kube_pim::controller::lenient::FAULT_WATCH_DELAY,
        delays.to_string(),
    )];
    let op = start_operator_with_env(env, &format!("kube-pim-{prefix}"), &[], &vars);
    common::wait_operator_ready(env).await;
    (op, World::new(prefix, json!({})).await)
}

/// A lagging cache (SPEC invariant 4, survival): each kind comes on its own watch, and under
/// load one can trail another. Here the operator sees RoleSettings and assignments 4 s late,
/// so a request arrives before either: the operator confirms from live reads before it fails
/// or revokes, and the request activates and stays Active, with no Revoked in its history.
/// (Before the fix, a lagging RoleSetting failed the request as RoleSettingNotFound; with only
/// the assignment lagging, it went Active and was revoked as NotEligible a moment later.)
/// Deleting the assignment still revokes it.
#[tokio::test]
async fn a_request_ahead_of_its_assignment_in_the_caches_is_granted_and_kept() {
    let _serial = SERIAL.lock().await;
    let (_op, w) = lagging("lag", "RoleSetting=4000,EligibleAssignment=4000").await;
    let alice = w.alice().await;
    let ar = w.ask(alice.clone(), json!({})).await.unwrap();
    let name = ar.name_any();
    w.wait_phase(&name, RequestPhase::Active).await;
    // Active before the operator's cache had the assignment (its controller has not recorded
    // it yet): the lag this test is about did happen.
    let eas: Api<kube_pim::api::EligibleAssignment> = Api::namespaced(admin().await, &w.ns);
    let unseen = eas.get("alice").await.unwrap();
    assert!(
        unseen.status.as_ref().and_then(|s| s.phase).is_none(),
        "the assignment reached the operator's cache before the request was Active: no lag"
    );
    w.access(&alice, true).await;

    // The assignment reaches the operator's cache: its controller records it Eligible.
    eventually!(
        Duration::from_secs(30),
        eas.get("alice")
            .await
            .unwrap()
            .status
            .and_then(|s| s.phase)
            .is_some(),
        "the operator's cache never saw the assignment"
    );
    let now = w.requests(admin().await).get(&name).await.unwrap();
    assert_eq!(
        actions(&now),
        [
            HistoryAction::Requested,
            HistoryAction::Approved,
            HistoryAction::Activated
        ],
        "decided from a lagging cache: {:?}",
        now.status
    );
    assert_eq!(phase(&now), Some(RequestPhase::Active));
    w.access(&alice, true).await;

    // The assignment goes: the request is revoked, however late the cache hears of it.
    eas.delete("alice", &Default::default()).await.unwrap();
    let ended = w.wait_phase(&name, RequestPhase::Revoked).await;
    let reason = ended
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Active"))
        .map(|c| c.reason.clone());
    assert_eq!(reason.as_deref(), Some("NotEligible"));
    w.access(&alice, false).await;
    assert!(managed(&w.ns).await.is_empty());
}

/// A lagging RoleSetting cache and the assignment controller: an assignment applied with its
/// RoleSetting (as GitOps does) can reach the operator before the RoleSetting. It is not
/// recorded Invalid (RoleSettingNotFound, which refuses requests) on the cache's word: the
/// operator reads the RoleSetting live and records it Eligible.
#[tokio::test]
async fn an_assignment_ahead_of_its_role_setting_in_the_caches_is_eligible() {
    let _serial = SERIAL.lock().await;
    let (_op, w) = lagging("rslag", "RoleSetting=8000").await;
    let eas: Api<kube_pim::api::EligibleAssignment> = Api::namespaced(admin().await, &w.ns);
    let mut recorded: Option<kube_pim::api::EligibleAssignmentStatus>;
    eventually!(
        Duration::from_secs(30),
        {
            recorded = eas.get("alice").await.unwrap().status;
            recorded.as_ref().and_then(|s| s.phase).is_some()
        },
        "the operator never recorded the assignment"
    );
    let recorded = recorded.unwrap();
    // Recorded while the operator's RoleSetting cache still lacked the RoleSetting (its
    // controller has not written the RoleSetting's status yet): the lag did happen.
    let rs = Api::<kube_pim::api::RoleSetting>::all(admin().await)
        .get(&w.rs)
        .await
        .unwrap();
    assert!(
        rs.status.and_then(|s| s.observed_generation).is_none(),
        "the RoleSetting reached the operator's cache first: no lag"
    );
    assert_eq!(
        recorded.phase,
        Some(kube_pim::api::AssignmentPhase::Eligible),
        "recorded from a lagging cache: {recorded:?}"
    );
}
