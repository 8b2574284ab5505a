//! The `kubectl-pim` binary: the kubectl plugin (`kubectl pim ...`). Put it on your PATH.

fn main() -> std::process::ExitCode {
    kube_pim::plugin::main()
}
