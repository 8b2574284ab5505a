//! Child processes of the test environment: started with their output in `DIR/logs/`, killed
//! when dropped (so a panic or an early return never leaks one), and watched while waiting so
//! that a crash is reported with the end of its log instead of a time-out.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::process::{Child, Command};

use crate::{Error, Result};

/// One child process of the control plane.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `bin args...`, appending its stdout and stderr to `logs/<name>.log`.
    pub fn spawn(name: &str, bin: &Path, args: &[String], logs: &Path) -> Result<Self> {
        Self::spawn_with_env(name, bin, args, logs, &[])
    }

    /// Like [`Process::spawn`], with extra environment variables.
    pub fn spawn_with_env(
        name: &str,
        bin: &Path,
        args: &[String],
        logs: &Path,
        env: &[(&str, String)],
    ) -> Result<Self> {
        let log = logs.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(Error::io("open", &log))?;
        let err = out.try_clone().map_err(Error::io("open", &log))?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::TestEnv(format!("cannot start {name} ({}): {e}", bin.display())))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// The process name (also its log file's stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The OS process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// An error with the end of the log if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::TestEnv(format!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 25)
            ))),
            Err(e) => Err(Error::TestEnv(format!("{}: {e}", self.name))),
        }
    }

    /// Kills the process and waits for it to be gone.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `n` distinct TCP ports on 127.0.0.1 that were free a moment ago. They are found together,
/// holding every listener until all are known: asking one at a time can return the same port
/// twice, since the kernel may hand a just-released port out again.
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .map_err(Error::io("bind", "127.0.0.1:0"))?;
    let mut ports = [0u16; N];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l
            .local_addr()
            .map_err(Error::io("bind", "127.0.0.1:0"))?
            .port();
    }
    Ok(ports)
}

/// Waits until something accepts connections on `port`, or the process dies.
pub async fn wait_for_port(
    name: &str,
    port: u16,
    p: &mut Process,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        p.check_running()?;
        if Instant::now() > deadline {
            return Err(Error::TestEnv(format!(
                "{name} not listening on {port} after {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET http://{addr}{path}` over plain HTTP/1.1 (the operator's and the control plane's
/// health ports): the whole answer, status line and headers included, or `None` when the
/// connection or the exchange fails.
pub async fn http_get(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Waits until `GET http://127.0.0.1:port{path}` answers 200, or the process dies.
pub async fn wait_for_http_ok(
    name: &str,
    port: u16,
    path: &str,
    p: &mut Process,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let addr = format!("127.0.0.1:{port}");
    loop {
        if http_get(&addr, path)
            .await
            .is_some_and(|answer| answer.starts_with("HTTP/1.1 200"))
        {
            return Ok(());
        }
        p.check_running()?;
        if Instant::now() > deadline {
            return Err(Error::TestEnv(format!(
                "{name} not ready on :{port}{path} after {timeout:?}; last lines of {}:\n{}",
                p.log.display(),
                tail(&p.log, 30)
            )));
        }
        // Often enough that the moment of readiness is known to within 50 ms (the
        // benchmark times the restart sweep from it).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
