//! Starting and stopping the fleet: the server and the agents as separate processes (fleet-sim's
//! own executable running their code through its hidden `irec-server` / `edge-agent`
//! subcommands, or the real executables from `--bin-dir`), or all in this process as
//! tasks for large fleets. Either way the server writes `status.json`, which is what we watch.

use anyhow::{bail, Context};
use irec_edge_agent::cli::Summary;
use irec_edge_agent::{AgentConfig, Stats};
use irec_model::loader::{NeuralLoader, PolicyLoader};
use irec_learn::round::{LearnedTrainer, RoundTrainer};
use irec_server::status::read_file as read_status;
use irec_server::ServerConfig;
use irec_testkit::procs::{Binaries, Proc};
use irec_world::sim::{Environment, Pool, World};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a stopped process may take to exit before it is killed.
const GRACE: Duration = Duration::from_secs(30);

/// What an agent reported when it stopped.
#[derive(Clone, Debug)]
pub struct AgentReport {
    pub stats: Option<Stats>,
    /// The agent process's peak RSS in KiB, as it reported it (process mode, Linux).
    pub peak_rss_kib: Option<u64>,
    /// Its private memory when it stopped, the shared world file left out, in KiB (process
    /// mode, Linux).
    pub private_kib: Option<u64>,
    /// Its whole USS when it stopped, in KiB.
    pub uss_kib: Option<u64>,
    /// Why there are no stats (exit status, unreadable output).
    pub problem: Option<String>,
}

/// A running fleet.
pub enum Fleet {
    Processes(Processes),
    InProcess(InProcess),
}

impl Fleet {
    /// Fails when the server or an agent is gone before it was asked to stop.
    pub fn check(&mut self) -> anyhow::Result<()> {
        match self {
            Fleet::Processes(p) => p.check(),
            Fleet::InProcess(p) => p.check(),
        }
    }

    /// Waits up to `timeout` for every agent to finish its sessions and exit on its own.
    pub fn wait_agents(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check()?;
            let running = match self {
                Fleet::Processes(p) => p.running_agents(),
                Fleet::InProcess(p) => p.agents.iter().filter(|a| !a.is_finished()).count(),
            };
            if running == 0 || Instant::now() > deadline {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the agents still running (each uploads nothing more and reports), then the server.
    pub fn stop(self) -> anyhow::Result<Vec<AgentReport>> {
        match self {
            Fleet::Processes(p) => p.stop(),
            Fleet::InProcess(p) => p.stop(),
        }
    }
}

/// Waits for the server's status to name its bound address.
fn wait_listening(server_dir: &Path, alive: &mut dyn FnMut() -> anyhow::Result<()>) -> anyhow::Result<SocketAddr> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        alive()?;
        if let Some(addr) = read_status(server_dir).and_then(|s| s.listening) {
            return Ok(addr);
        }
        if Instant::now() > deadline {
            bail!("the server did not report its address within 2 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where the agents reach the server (it listens on 127.0.0.1 port 0).
pub fn agent_address(listening: SocketAddr) -> String {
    format!("127.0.0.1:{}", listening.port())
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

pub struct Processes {
    server: Proc,
    agents: Vec<(usize, Proc)>,
    bins: Binaries,
    /// How the executables were found, for the report.
    pub launcher: String,
}

fn log_level() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())
}

impl Processes {
    /// Starts the server from `server_config` and waits until it listens. The binaries are the
    /// executables in `bin_dir`, or else this very executable's hidden subcommands, which run
    /// the same library code and can never be a stale build of it.
    pub fn start(server_config: &Path, server_dir: &Path, logs: &Path, bin_dir: Option<&Path>) -> anyhow::Result<(Processes, SocketAddr)> {
        let bins = match bin_dir {
            Some(dir) => Binaries::in_dir(dir)?,
            None => Binaries::this_executable()?,
        };
        let launcher = bins.server.describe();
        let args = vec!["--config".to_string(), server_config.display().to_string()];
        let server = Proc::spawn("irec-server", &bins.server, &args, &[("RUST_LOG", &log_level())], &logs.join("server"))?;
        let mut p = Processes { server, agents: Vec::new(), bins, launcher };
        let addr = wait_listening(server_dir, &mut || p.check())?;
        Ok((p, addr))
    }

    pub fn spawn_agent(&mut self, i: usize, config: &Path, logs: &Path) -> anyhow::Result<()> {
        let args = vec!["--config".to_string(), config.display().to_string()];
        let agent = Proc::spawn(&format!("agent {i}"), &self.bins.agent, &args, &[("RUST_LOG", &log_level())], &logs.join(format!("agent-{i}")))?;
        self.agents.push((i, agent));
        Ok(())
    }

    fn running_agents(&mut self) -> usize {
        self.agents.iter_mut().map(|(_, a)| a.exited().is_none()).filter(|running| *running).count()
    }

    fn check(&mut self) -> anyhow::Result<()> {
        if let Some(s) = self.server.exited() {
            bail!("the server exited early ({s}); see its log in the run's logs/");
        }
        for (i, a) in &mut self.agents {
            // Finishing its sessions is an agent's normal way out; failing is not.
            if let Some(s) = a.exited().filter(|s| !s.success()) {
                bail!("agent {i} failed ({s}); see logs/agent-{i}.log");
            }
        }
        Ok(())
    }

    fn stop(mut self) -> anyhow::Result<Vec<AgentReport>> {
        for (_, a) in &mut self.agents {
            a.ask_to_stop();
        }
        let mut reports = Vec::new();
        for (i, a) in &mut self.agents {
            let status = a.interrupt(GRACE);
            let summary = Summary::from_stdout(&a.stdout_text());
            let peak_rss_kib = summary.as_ref().and_then(|s| s.peak_rss_kib);
            let private_kib = summary.as_ref().and_then(|s| s.private_kib);
            let uss_kib = summary.as_ref().and_then(|s| s.uss_kib);
            let stats = summary.map(|s| s.stats);
            let problem = match (&stats, status.is_some_and(|s| s.success())) {
                (Some(_), true) => None,
                _ => Some(format!(
                    "agent {i} ended with {}; its summary {}",
                    status.map_or("no status".to_string(), |s| s.to_string()),
                    if stats.is_some() { "was read" } else { "is missing" }
                )),
            };
            reports.push(AgentReport { stats, peak_rss_kib, private_kib, uss_kib, problem });
        }
        match self.server.interrupt(GRACE) {
            Some(s) if s.success() => Ok(reports),
            other => bail!("the server ended with {other:?}; see logs/server.log"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// In process
// ---------------------------------------------------------------------------------------------

type AgentTask = tokio::task::JoinHandle<Result<Stats, irec_edge_agent::AgentError>>;

pub struct InProcess {
    runtime: tokio::runtime::Runtime,
    server: tokio::task::JoinHandle<Result<(), irec_server::ServerError>>,
    stop_server: watch::Sender<bool>,
    stop_agents: watch::Sender<bool>,
    agents: Vec<AgentTask>,
    env: Option<Arc<Environment>>,
    /// One loader per initial policy, shared by the agents that start with it.
    loaders: HashMap<Option<PathBuf>, Arc<NeuralLoader>>,
}

async fn raised(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

impl InProcess {
    pub fn start(config: ServerConfig) -> anyhow::Result<(InProcess, SocketAddr)> {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let trainer: Arc<dyn RoundTrainer> = Arc::new(LearnedTrainer::new(config.trainer.clone(), config.world.clone(), &config.data_dir));
        let server = runtime.block_on(irec_server::Server::bind(config, trainer))?;
        let addr = server.local_addr()?;
        let (stop_server, rx) = watch::channel(false);
        let server = runtime.spawn(server.serve(raised(rx)));
        let (stop_agents, _) = watch::channel(false);
        Ok((InProcess { runtime, server, stop_server, stop_agents, agents: Vec::new(), env: None, loaders: HashMap::new() }, addr))
    }

    pub fn spawn_agent(&mut self, config: AgentConfig) -> anyhow::Result<()> {
        let env = match &self.env {
            Some(e) => e.clone(),
            None => {
                let world = Arc::new(World::build(&config.world)?);
                let e = Arc::new(Environment::with_truth(world, Pool::Train));
                self.env = Some(e.clone());
                e
            }
        };
        let loader = self
            .loaders
            .entry(config.initial_policy.clone())
            .or_insert_with(|| Arc::new(NeuralLoader::new(env.world.clone(), config.initial_policy.clone())))
            .clone();
        let loader: Arc<dyn PolicyLoader> = loader;
        let rx = self.stop_agents.subscribe();
        self.agents.push(self.runtime.spawn(irec_edge_agent::run_in(config, env, loader, raised(rx))));
        Ok(())
    }

    /// Runs one cohort of agents to completion (each exits once its sessions are acked), for a
    /// sampled study; agents still running at `deadline` are stopped. Also returns the largest
    /// resident set size of this process seen while they ran, in KiB.
    pub fn run_cohort(&mut self, configs: Vec<AgentConfig>, deadline: Instant) -> anyhow::Result<(Vec<AgentReport>, Option<u64>)> {
        let first = self.agents.len();
        for c in configs {
            self.spawn_agent(c)?;
        }
        let tasks: Vec<AgentTask> = self.agents.drain(first..).collect();
        let stop = self.stop_agents.clone();
        Ok(self.runtime.block_on(async move {
            let mut rss_kib: Option<u64> = None;
            let waited = tokio::time::timeout_at(deadline.into(), async {
                while !tasks.iter().all(|t| t.is_finished()) {
                    if let Some(m) = irec_edge_agent::procfs::memory(None) {
                        rss_kib = Some(rss_kib.unwrap_or(0).max(m.current_kib));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
            if waited.await.is_err() {
                let _ = stop.send(true);
            }
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                out.push(report_of(t.await));
            }
            (out, rss_kib)
        }))
    }

    pub fn check(&mut self) -> anyhow::Result<()> {
        if self.server.is_finished() {
            bail!("the server task ended early");
        }
        Ok(())
    }

    fn stop(self) -> anyhow::Result<Vec<AgentReport>> {
        let InProcess { runtime, server, stop_server, stop_agents, agents, .. } = self;
        let _ = stop_agents.send(true);
        let reports = runtime.block_on(async {
            let mut out = Vec::new();
            for a in agents {
                out.push(report_of(a.await));
            }
            out
        });
        let _ = stop_server.send(true);
        runtime.block_on(server).context("server task")??;
        Ok(reports)
    }
}

fn report_of(joined: Result<Result<Stats, irec_edge_agent::AgentError>, tokio::task::JoinError>) -> AgentReport {
    let (stats, problem) = match joined {
        Ok(Ok(stats)) => (Some(stats), None),
        Ok(Err(e)) => (None, Some(e.to_string())),
        Err(e) => (None, Some(format!("agent task: {e}"))),
    };
    AgentReport { stats, peak_rss_kib: None, private_kib: None, uss_kib: None, problem }
}
