//! `fleet-sim chaos <campaign>`: the long reliability campaigns (docs/reliability.md). Each prints
//! its figures, and with `--json` one JSON object as the last stdout line; the exit status is
//! non-zero when the campaign saw a promise broken.

use irec_testkit::procs::Binaries;
use crate::chaos::{self, Outcome};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ChaosArgs {
    #[command(subcommand)]
    pub campaign: Campaign,
    /// Run the irec-server and edge-agent executables from this folder (e.g. target/release)
    /// instead of this executable's copies of their code (`fleet-sim irec-server|edge-agent`).
    #[arg(long, global = true, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Working directory; the campaign uses <DIR>/<campaign> (default: a temporary directory).
    #[arg(long, global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Seed of everything random in the campaign.
    #[arg(long, global = true, default_value_t = 1)]
    pub seed: u64,
    /// Make the last line of stdout one JSON object.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Campaign {
    /// R1: SIGKILL edge-agent processes at random points; D must hold every session once.
    AgentsKilled {
        #[arg(long, default_value_t = 6)]
        agents: usize,
        /// Sessions per device, over all its lives (finished devices are replaced while kills
        /// remain).
        #[arg(long, default_value_t = 200)]
        sessions: u64,
        #[arg(long, default_value_t = 120)]
        kills: usize,
    },
    /// R2: SIGKILL the server mid-ingest, mid-training and mid-publish; agents keep going.
    ServerKilled {
        #[arg(long, default_value_t = 24)]
        kills: usize,
        #[arg(long, default_value_t = 4)]
        agents: usize,
        /// New sessions that close a round.
        #[arg(long, default_value_t = 100)]
        round_quota: u64,
        /// Extra server settings, TOML (e.g. a `[trainer]` section; default: a small learned
        /// trainer on a perception pretrained at the start).
        #[arg(long, value_name = "FILE")]
        server_config: Option<PathBuf>,
    },
    /// R3: random and mutated input to the frame decoder and every message handler, in memory,
    /// then a sample of it against a live server.
    Fuzz {
        /// Inputs for the in-memory handlers.
        #[arg(long, default_value_t = 10_000_000)]
        inputs: u64,
        /// Inputs sent to a live server over QUIC.
        #[arg(long, default_value_t = 20_000)]
        live: u64,
        /// Worker threads of the in-memory part (the inputs do not depend on it).
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// R4: a thousand in-process agents against one server process on loopback.
    Load {
        #[arg(long, default_value_t = 1_000)]
        agents: usize,
        /// Sessions per agent.
        #[arg(long, default_value_t = 20)]
        sessions: u64,
        /// Pause between an agent's sessions, in milliseconds.
        #[arg(long, default_value_t = 1_000)]
        session_interval_ms: u64,
        /// Agents start evenly over this many milliseconds (0: all at once).
        #[arg(long, default_value_t = 5_000)]
        ramp_ms: u64,
    },
    /// R7: agents on several hosts (network namespaces; needs root and iproute2) reaching the
    /// server through impaired links, one host cut off every round.
    Network {
        /// Hosts with agents (the server gets one more).
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        #[arg(long, default_value_t = 2)]
        agents_per_host: usize,
        #[arg(long, default_value_t = 120)]
        round_quota: u64,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// One-way delay of each link, in milliseconds (the round trip is twice this).
        #[arg(long, default_value_t = 50)]
        delay_ms: u64,
        #[arg(long, default_value_t = 10)]
        jitter_ms: u64,
        /// Share of datagrams lost, each way.
        #[arg(long, default_value_t = 0.05)]
        loss: f64,
        #[arg(long, default_value_t = 0.01)]
        duplicate: f64,
        #[arg(long, default_value_t = 0.01)]
        reorder: f64,
        /// Seconds one host is cut off every round.
        #[arg(long, default_value_t = 10.0)]
        partition_s: f64,
        /// Prefix of the namespaces made (and removed).
        #[arg(long, default_value = "irecnet")]
        prefix: String,
    },
    /// R9: SIGKILL the server under a thousand connected agents, restart it after a while, and
    /// measure how the fleet comes back (reconnect spread, largest burst).
    Reconnect {
        #[arg(long, default_value_t = 1_000)]
        agents: usize,
        /// Seconds the server stays away.
        #[arg(long, default_value_t = 5.0)]
        away_s: f64,
        /// A rolling restart (SIGTERM, orderly) instead of a crash (SIGKILL).
        #[arg(long)]
        graceful: bool,
    },
    /// R6: search all server storage and traffic for what must stay on devices.
    Privacy {
        #[arg(long, default_value_t = 4)]
        agents: usize,
        /// Sessions per agent.
        #[arg(long, default_value_t = 40)]
        sessions: u64,
        /// Close a round every this many sessions, trained by a small learned trainer (its state
        /// and the policies it publishes are audited too); 0: no rounds.
        #[arg(long, default_value_t = 0)]
        round_quota: u64,
        /// Extra server settings (TOML merged into its config).
        #[arg(long, value_name = "FILE")]
        server_config: Option<PathBuf>,
    },
}

pub fn run(args: ChaosArgs) -> anyhow::Result<()> {
    let bins = || -> anyhow::Result<Binaries> {
        Ok(match &args.bin_dir {
            Some(d) => Binaries::in_dir(d)?,
            None => Binaries::this_executable()?,
        })
    };
    let mut progress = |m: &str| eprintln!("{m}");
    let outcome = match args.campaign {
        Campaign::AgentsKilled { agents, sessions, kills } => {
            let c = chaos::agents_killed::AgentsKilledConfig { agents, sessions, kills, seed: args.seed, dir: args.dir.clone(), ..Default::default() };
            chaos::agents_killed::run(&bins()?, &c, &mut progress)?
        }
        Campaign::ServerKilled { kills, agents, round_quota, server_config } => {
            let server_extra = server_config.as_deref().map(chaos::fleet::read_extra).transpose()?;
            let c = chaos::server_killed::ServerKilledConfig {
                kills,
                agents,
                round_quota,
                server_extra,
                seed: args.seed,
                dir: args.dir.clone(),
                ..Default::default()
            };
            chaos::server_killed::run(&bins()?, &c, &mut progress)?
        }
        Campaign::Fuzz { inputs, live, threads } => {
            let c = chaos::fuzz::FuzzConfig { inputs, threads, seed: args.seed, ..Default::default() };
            let say = |m: &str| eprintln!("{m}");
            let mut out = chaos::fuzz::run(&c, &say)?;
            if live > 0 {
                let dir = chaos::fleet::workdir(args.dir.as_deref(), "fuzz-live")?;
                out.absorb(chaos::fuzz_live::run(live, args.seed, &dir, &say)?);
            }
            out
        }
        Campaign::Load { agents, sessions, session_interval_ms, ramp_ms } => {
            let c = chaos::load::LoadConfig { agents, sessions, session_interval_ms, ramp_ms, dir: args.dir.clone(), ..Default::default() };
            chaos::load::run(&bins()?, &c, &|m: &str| eprintln!("{m}"))?
        }
        Campaign::Network { hosts, agents_per_host, round_quota, rounds, delay_ms, jitter_ms, loss, duplicate, reorder, partition_s, prefix } => {
            let impairment = chaos::link::Impairment { delay_ms, jitter_ms, loss, duplicate, reorder };
            let c = chaos::network::NetworkConfig { hosts, agents_per_host, round_quota, rounds, impairment, partition_s, prefix, seed: args.seed, dir: args.dir.clone(), ..Default::default() };
            chaos::network::run(&bins()?, &c, &mut progress)?
        }
        Campaign::Reconnect { agents, away_s, graceful } => {
            let c = chaos::reconnect::ReconnectConfig { agents, away_s, graceful, dir: args.dir.clone(), ..Default::default() };
            chaos::reconnect::run(&bins()?, &c, &|m: &str| eprintln!("{m}"))?
        }
        Campaign::Privacy { agents, sessions, round_quota, server_config } => {
            let server_extra = server_config.as_deref().map(chaos::fleet::read_extra).transpose()?;
            let c = chaos::privacy::PrivacyConfig { agents, sessions, round_quota, server_extra, dir: args.dir.clone(), ..Default::default() };
            chaos::privacy::run(&bins()?, &c)?
        }
    };
    report(&outcome, args.json)
}

fn report(outcome: &Outcome, json: bool) -> anyhow::Result<()> {
    println!("campaign {}: {}", outcome.campaign, if outcome.passed() { "PASSED" } else { "FAILED" });
    for (k, v) in &outcome.figures {
        println!("  {k:<32} {v}");
    }
    for v in &outcome.violations {
        println!("  violation: {v}");
    }
    crate::commands::print_json(json, &serde_json::to_value(outcome)?);
    if !outcome.passed() {
        anyhow::bail!("{} violation(s)", outcome.violations.len());
    }
    Ok(())
}
