//! The real binaries as child processes: where to find them, how to start one with its output in
//! files, and how to kill it the hard way (SIGKILL: no destructor, no flush, no goodbye).

use crate::KitError;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How to start one of the binaries: a program and the arguments that precede its own flags.
#[derive(Clone, Debug)]
pub struct Launcher {
    pub program: PathBuf,
    pub prefix: Vec<String>,
}

impl Launcher {
    pub fn describe(&self) -> String {
        std::iter::once(self.program.display().to_string()).chain(self.prefix.iter().cloned()).collect::<Vec<_>>().join(" ")
    }
}

/// How to start `irec-server` and `edge-agent`.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub server: Launcher,
    pub agent: Launcher,
}

impl Binaries {
    /// The executables `irec-server` and `edge-agent` in `dir` (e.g. `target/release`).
    pub fn in_dir(dir: &Path) -> Result<Binaries, KitError> {
        let exe = |name: &str| -> Result<Launcher, KitError> {
            let p = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
            if !p.is_file() {
                return Err(KitError::Binary(format!(
                    "{} (build it: cargo build --release -p irec-server -p irec-edge-agent)",
                    p.display()
                )));
            }
            Ok(Launcher { program: p, prefix: Vec::new() })
        };
        Ok(Binaries { server: exe("irec-server")?, agent: exe("edge-agent")? })
    }

    /// A fleet-sim executable's hidden `irec-server` / `edge-agent` subcommands, which run the
    /// binaries' own code (and so can never be a stale build of it).
    pub fn via_fleet_sim(fleet_sim: &Path) -> Binaries {
        let sub = |name: &str| Launcher { program: fleet_sim.to_path_buf(), prefix: vec![name.to_string()] };
        Binaries { server: sub("irec-server"), agent: sub("edge-agent") }
    }

    /// This fleet-sim executable's subcommands.
    pub fn this_executable() -> Result<Binaries, KitError> {
        let exe = std::env::current_exe().map_err(|e| KitError::Io(PathBuf::from("current_exe"), e))?;
        Ok(Binaries::via_fleet_sim(&exe))
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
    /// Starts `launcher args` with `env` added, writing `<logs>.out` and `<logs>.log`.
    pub fn spawn(name: &str, launcher: &Launcher, args: &[String], env: &[(&str, &str)], logs: &Path) -> Result<Proc, KitError> {
        let stdout = logs.with_extension("out");
        let stderr = logs.with_extension("log");
        let out = File::create(&stdout).map_err(|e| KitError::Io(stdout.clone(), e))?;
        let err = File::create(&stderr).map_err(|e| KitError::Io(stderr.clone(), e))?;
        let mut cmd = Command::new(&launcher.program);
        cmd.args(&launcher.prefix).args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|e| KitError::Spawn(format!("{name} ({})", launcher.describe()), e))?;
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

    /// Sends SIGINT (the binaries' orderly stop, as Ctrl-C would) without waiting, so a fleet
    /// can be asked to stop all at once.
    pub fn ask_to_stop(&mut self) {
        self.signal("INT");
    }

    /// Sends signal `name` (`INT`, `TERM`, …) if the process still runs.
    pub fn signal(&mut self, name: &str) {
        if self.exited().is_none() {
            let _ = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }

    /// SIGINT, then waits up to `within`; SIGKILL after that.
    pub fn interrupt(&mut self, within: Duration) -> Option<ExitStatus> {
        if self.exited().is_none() {
            self.ask_to_stop();
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

    /// Everything written to stdout so far.
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
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
pub fn free_udp_port() -> Result<u16, KitError> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| KitError::Io(PathBuf::from("udp bind"), e))?;
    let port = s.local_addr().map_err(|e| KitError::Io(PathBuf::from("udp bind"), e))?.port();
    Ok(port)
}

/// Polls `ready` every 20 ms until it holds, the process exits, or `within` passes.
pub fn wait_until(proc: &mut Proc, within: Duration, what: &str, mut ready: impl FnMut() -> bool) -> Result<(), KitError> {
    let deadline = Instant::now() + within;
    loop {
        if ready() {
            return Ok(());
        }
        if let Some(status) = proc.exited() {
            return Err(KitError::Timeout(format!(
                "{} exited ({status}) before {what}:\n{}",
                proc.name,
                proc.stderr_tail(20)
            )));
        }
        if Instant::now() > deadline {
            return Err(KitError::Timeout(format!("{} not {what} within {within:?}:\n{}", proc.name, proc.stderr_tail(20))));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
