//! The benchmark must keep working: a tiny run (3 activations per figure, both control planes,
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
        "baseline_revocation",
        "revocation_lag",
    ] {
        assert_eq!(results[figure]["n"], 3, "{figure}: {results}");
    }
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
