//! `make demo` must keep working: run its walkthrough non-interactively and check that each
//! step shows what it claims, through `kubectl pim` (the plugin found by kubectl on PATH): the
//! policy shown, the over-long request refused, the bystander refused, access granted after
//! approval and gone after deactivation and expiry, the forged requester replaced, the audit
//! export and stream.

use std::process::Command;

#[test]
fn the_demo_walks_through_the_whole_flow() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("demo-{}", std::process::id()));
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/hack/demo.sh"))
        .arg(&dir)
        .env("DEMO_NONINTERACTIVE", "1")
        .env("KUBE_PIM_TESTENV", env!("CARGO_BIN_EXE_kube-pim-testenv"))
        .env("KUBECTL_PIM", env!("CARGO_BIN_EXE_kubectl-pim"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{text}");
    for expected in [
        "[alice]$ kubectl pim whoami",          // through kubectl
        "[team-payments system:authenticated]", // whoami
        "1 of Group:sre-leads, User:bob",       // eligible, policy
        "duration 3h exceeds maxDuration 2h of RoleSetting namespace-admin", // refused at once
        "activationrequest payments/alice-",    // created
        "mallory is not an approver of RoleSetting namespace-admin", // bystander refused
        " approved: alice asked for namespace-admin (Namespace scope) for 1h", // bob's decision
        "No resources found in payments namespace.", // access while Active
        ": Deactivated: alice ended the activation early", // deactivate --wait
        "alice-peek   alice",                   // forged requester
        "Expired",                              // the 10s activation
        "id,time,namespace,name,uid,roleSetting", // audit CSV
        "\"kind\":\"PolicyWrite\"",             // audit stream
    ] {
        assert!(
            text.contains(expected),
            "the demo output lacks {expected:?}:\n{text}"
        );
    }
    // alice's secrets are forbidden before approval and after deactivation, and the pods
    // after expiry.
    assert!(
        text.matches("User \"alice\" cannot list resource \"secrets\"")
            .count()
            >= 3,
        "{text}"
    );
    assert!(
        text.contains("User \"alice\" cannot list resource \"pods\""),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
