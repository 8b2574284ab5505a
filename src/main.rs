//! The `kube-pim` binary: the operator (`run`), the CRD printer (`crds`).

// jemalloc, not glibc's malloc: after a relist at 10,000 requests, assignments and bindings,
// RSS settled at 145 MiB against 178 MiB, and the relist took half the CPU (BENCHMARKS.md).
// Its options (one arena, dirty pages back after 1 s, no thread caches) are built in:
// .cargo/config.toml.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    // Freed pages go back to the system on a background thread's schedule; otherwise only an
    // allocation does it, and an idle operator keeps the relist's peak.
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!(
            "kube-pim: jemalloc background purging is off ({e}); memory is still freed, later"
        );
    }
    kube_pim::cli::main()
}

#[cfg(test)]
mod tests {
    #[test]
    fn jemalloc_runs_with_the_options_built_in_by_cargo_config() {
        // .cargo/config.toml sets JEMALLOC_SYS_WITH_MALLOC_CONF; a build without it (another
        // directory, a dropped file) would silently lose them.
        assert_eq!(tikv_jemalloc_ctl::opt::narenas::read().unwrap(), 1);
        assert!(!tikv_jemalloc_ctl::opt::tcache::read().unwrap());
    }
}
