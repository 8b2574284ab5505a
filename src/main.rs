//! The `kube-pim` binary: the operator (`run`), the CRD printer (`crds`).

fn main() -> std::process::ExitCode {
    kube_pim::cli::main()
}
