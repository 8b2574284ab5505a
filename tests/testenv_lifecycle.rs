//! The test environment never leaks processes: when the process that started it goes away
//! (its stdin closes: what the kernel does when a test process exits, panics or is killed) or
//! when it gets SIGTERM, it stops etcd, kube-apiserver and kube-controller-manager.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

fn pids(dir: &Path) -> Vec<(u32, String)> {
    std::fs::read_to_string(dir.join("pids"))
        .unwrap()
        .lines()
        .map(|l| {
            let (pid, name) = l.split_once(' ').unwrap();
            (pid.parse().unwrap(), name.to_string())
        })
        .collect()
}

/// Alive and not a zombie.
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "kube-pim-testenv did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()))
}

#[test]
fn closing_stdin_stops_every_process_and_removes_the_directory() {
    let dir = dir("lifecycle-stdin");
    let mut child = common::start_child(&dir, &[]);
    let procs = pids(&dir);
    let names: Vec<&str> = procs.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["etcd", "kube-apiserver", "kube-controller-manager"]);
    for (pid, name) in &procs {
        assert!(running(*pid), "{name} ({pid}) should be running");
    }
    drop(child.stdin.take());
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    for (pid, name) in &procs {
        assert!(!running(*pid), "{name} ({pid}) leaked");
    }
    assert!(!dir.exists(), "--remove-dir left {}", dir.display());
}

#[test]
fn sigterm_stops_every_process() {
    let dir = dir("lifecycle-term");
    let mut child = common::start_child(&dir, &[]);
    let procs = pids(&dir);
    assert_eq!(procs.len(), 3);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    for (pid, name) in &procs {
        assert!(!running(*pid), "{name} ({pid}) leaked");
    }
}
