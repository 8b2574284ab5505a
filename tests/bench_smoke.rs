//! The benchmark must keep working: a tiny run (3 activations per figure, 3 namespaces, a
//! restart sweep of 5, one short throughput step, memory at 20 objects; both control planes,
//! the debug operator) that checks only that it finishes and writes well-formed results. It
//! asserts no timing: figures come from `make bench` (BENCHMARKS.md).

use std::process::Command;

#[test]
fn the_benchmark_runs_and_writes_its_results() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-{}", std::process::id()));
    let out = dir.join("results.json");
    let run = Command::new(env!("CARGO_BIN_EXE_kube-pim-bench"))
        .args([
            "--samples",
            "3",
            "--runs",
            "1",
            "--namespaces",
            "3",
            "--restart",
            "5",
            "--rates",
            "5",
            "--rate-secs",
            "2",
            "--scale",
            "20",
            "--operator-bin",
            env!("CARGO_BIN_EXE_kube-pim"),
        ])
        .arg("--out")
        .arg(&out)
        .arg("--dir")
        .arg(dir.join("run"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&run.stdout).to_string() + &String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "the benchmark failed:\n{text}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for figure in [
        "baseline_activation",
        "activation_to_binding",
        "baseline_approval",
        "approval_to_binding",
        "baseline_revocation",
        "revocation_lag",
    ] {
        assert_eq!(results[figure]["n"], 3, "{figure}: {results}");
    }
    assert_eq!(
        results["baseline_activation_without_commit"]["n"], 3,
        "{results}"
    );
    // Where an activation's time goes: every stage, for every timed activation on both sides
    // (each one's commit and binding found in the apiserver's audit log by name).
    let stages = results["activation_stages"].as_array().unwrap();
    assert_eq!(stages.len(), 6, "{results}");
    for s in stages {
        assert_eq!(s["baseline"]["n"], 3, "{results}");
        assert_eq!(s["kube_pim"]["n"], 3, "{results}");
    }
    assert!(
        results["throughput"]["baseline_activations_per_s"]
            .as_f64()
            .is_some_and(|w| w > 0.0),
        "{results}"
    );
    assert_eq!(results["restart"]["n"], 5, "{results}");
    // What of the operator's RSS is live data: the allocator's own figures, at both memory
    // checkpoints (read from kube_pim_allocator_bytes).
    for at in ["allocator_mib", "allocator_after_relist_mib"] {
        for kind in ["allocated", "resident"] {
            assert!(
                results["memory"][0][at][kind]
                    .as_f64()
                    .is_some_and(|v| v > 0.0),
                "{at} {kind}: {results}"
            );
        }
    }
    assert_eq!(
        results["throughput"]["steps"][0]["latency"]["n"], 10,
        "{results}"
    );
    assert!(
        results["throughput"]["baseline_writes_per_s"]
            .as_f64()
            .is_some_and(|w| w > 0.0),
        "{results}"
    );
    // Which process a throughput limit is: each one's cores, and the machine's.
    for cores in [
        &results["throughput"]["steps"][0]["cpu_cores"],
        &results["throughput"]["baseline_writes_cpu_cores"],
        &results["throughput"]["baseline_activations_cpu_cores"],
    ] {
        for who in ["etcd", "kube-apiserver", "benchmark", "machine"] {
            assert!(
                cores[who].as_f64().is_some_and(|c| c >= 0.0),
                "{who}: {results}"
            );
        }
    }
    assert!(
        results["throughput"]["steps"][0]["cpu_cores"]["kube-pim"]
            .as_f64()
            .is_some_and(|c| c >= 0.0),
        "{results}"
    );
    let memory = &results["memory"][0];
    assert!(
        memory["assignments"].as_u64().is_some_and(|n| n >= 20)
            && memory["active_activations"]
                .as_u64()
                .is_some_and(|n| n >= 20)
            && memory["relist_peak_mib"].as_f64().is_some_and(|m| m > 0.0),
        "{results}"
    );
    assert!(
        results["user_agents"].as_array().is_some_and(|a| a
            .iter()
            .any(|ua| ua.as_str().is_some_and(|s| s.starts_with("kube-pim/")))),
        "the operator's requests carry its user agent: {results}"
    );
    assert!(
        results["requests_per_activation"]
            .as_object()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(
        results["rss_mib"].as_f64().is_some_and(|r| r > 0.0),
        "{results}"
    );
    assert!(
        text.contains("activation -> binding"),
        "the table is printed:\n{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
