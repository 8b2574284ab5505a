//! `make demo` must keep working: run its walkthrough non-interactively and check that each
//! step shows what it claims (the forged requester replaced, the bystander refused, access
//! granted after approval and gone after deactivation and expiry, the audit trail).

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
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{text}");
    for expected in [
        "alice-",                                                            // the request
        "duration 3h exceeds maxDuration 2h of RoleSetting namespace-admin", // refused at once
        "mallory is not an approver of RoleSetting namespace-admin",         // bystander refused
        "Approved by bob",                                                   // decision recorded
        "No resources found in payments namespace.",                         // access while Active
        "4 Deactivated by alice",                                            // history
        "Expired",                                                           // the 10s activation
        "\"kind\":\"PolicyWrite\"",                                          // audit stream
    ] {
        assert!(
            text.contains(expected),
            "the demo output lacks {expected:?}:\n{text}"
        );
    }
    // alice's secrets are forbidden before approval and after deactivation.
    assert!(
        text.matches("User \"alice\" cannot list resource \"secrets\"")
            .count()
            >= 3,
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
