//! The real binaries as child processes: where to find them, how to start one with its output in
//! files, and how to kill it the hard way (SIGKILL: no destructor, no flush, no goodbye).

use super::ChaosError;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Paths of `irec-server` and `edge-agent`.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub server: PathBuf,
    pub agent: PathBuf,
}

impl Binaries {
    /// The binaries in `dir`.
    pub fn in_dir(dir: &Path) -> Result<Binaries, ChaosError> {
        let server = dir.join(format!("irec-server{}", std::env::consts::EXE_SUFFIX));
        let agent = dir.join(format!("edge-agent{}", std::env::consts::EXE_SUFFIX));
        for p in [&server, &agent] {
            if !p.is_file() {
                return Err(ChaosError::Binary(format!(
                    "{} (build it: cargo build --release -p irec-server -p irec-edge-agent, or set IREC_BIN_DIR)",
                    p.display()
                )));
            }
        }
        Ok(Binaries { server, agent })
    }

    /// `$IREC_BIN_DIR`, else the directory of the running executable (`target/<profile>/`), or its
    /// parent when running from `target/<profile>/deps/` (a test binary).
    pub fn locate() -> Result<Binaries, ChaosError> {
        if let Some(dir) = std::env::var_os("IREC_BIN_DIR") {
            return Binaries::in_dir(Path::new(&dir));
        }
        let exe = std::env::current_exe().map_err(|e| ChaosError::Io(PathBuf::from("current_exe"), e))?;
        let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        Binaries::in_dir(&dir)
    }
}

/// A running child with its stdout and stderr in files.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub started: Instant,
    exit: Option<ExitStatus>,
}

impl Proc {
    /// Starts `program args` with `env` added, writing `<logs>.out` and `<logs>.log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], env: &[(&str, &str)], logs: &Path) -> Result<Proc, ChaosError> {
        let stdout = logs.with_extension("out");
        let stderr = logs.with_extension("log");
        let out = File::create(&stdout).map_err(|e| ChaosError::Io(stdout.clone(), e))?;
        let err = File::create(&stderr).map_err(|e| ChaosError::Io(stderr.clone(), e))?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|e| ChaosError::Spawn(format!("{name} ({})", program.display()), e))?;
        Ok(Proc { name: name.to_string(), child, stdout, stderr, started: Instant::now(), exit: None })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status once the process ended (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// SIGKILL, then reap. Returns false when it had already exited on its own.
    pub fn kill(&mut self) -> bool {
        if self.exited().is_some() {
            return false;
        }
        let _ = self.child.kill();
        self.exit = self.child.wait().ok();
        true
    }

    /// SIGINT (the binaries' orderly stop), then waits up to `within`; SIGKILL after that.
    pub fn interrupt(&mut self, within: Duration) -> Option<ExitStatus> {
        if self.exited().is_none() {
            let _ = Command::new("kill").arg("-INT").arg(self.pid().to_string()).status();
            let deadline = Instant::now() + within;
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            self.kill();
        }
        self.exit
    }

    /// Waits for the process to end on its own, up to `within`.
    pub fn wait(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while self.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.exit
    }

    /// The last non-empty line of stdout (the binaries' JSON summary).
    pub fn last_stdout_line(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.stdout).ok()?;
        text.lines().rev().find(|l| !l.trim().is_empty()).map(str::to_string)
    }

    /// The tail of stderr, for error messages.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    /// A campaign that fails half-way must not leave children running.
    fn drop(&mut self) {
        self.kill();
    }
}

/// A UDP port on loopback that was free a moment ago (the server keeps one port across
/// restarts, so agents can reconnect to the address they were given).
pub fn free_udp_port() -> Result<u16, ChaosError> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| ChaosError::Io(PathBuf::from("udp bind"), e))?;
    let port = s.local_addr().map_err(|e| ChaosError::Io(PathBuf::from("udp bind"), e))?.port();
    Ok(port)
}

/// Polls `ready` every 20 ms until it holds, the process exits, or `within` passes.
pub fn wait_until(proc: &mut Proc, within: Duration, what: &str, mut ready: impl FnMut() -> bool) -> Result<(), ChaosError> {
    let deadline = Instant::now() + within;
    loop {
        if ready() {
            return Ok(());
        }
        if let Some(status) = proc.exited() {
            return Err(ChaosError::Timeout(format!(
                "{} exited ({status}) before {what}:\n{}",
                proc.name,
                proc.stderr_tail(20)
            )));
        }
        if Instant::now() > deadline {
            return Err(ChaosError::Timeout(format!("{} not {what} within {within:?}:\n{}", proc.name, proc.stderr_tail(20))));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
