//! Several hosts on this machine: network namespaces, each joined to the root namespace by a veth
//! pair with its own /30 (host `i`: `10.213.i.2`, its gateway in the root namespace `10.213.i.1`).
//! Hosts have no route to each other: whatever one says to another goes through a [`Link`] the
//! campaign runs in the root namespace, which is where the network is made bad.
//!
//! Needs root and iproute2. Everything made is removed when [`Hosts`] is dropped (also on a
//! failed campaign); a namespace that already exists is refused, never reused or deleted.
//!
//! [`Link`]: super::link::Link

use super::ChaosError;
use irec_testkit::procs::Launcher;
use std::net::Ipv4Addr;
use std::process::Command;

/// Namespaces made for a campaign.
#[derive(Debug)]
pub struct Hosts {
    names: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), ChaosError> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<(), ChaosError> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        ChaosError::Config(format!("running `{program}` ({e}): the network campaign needs iproute2 (apt-get install iproute2) and root"))
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ChaosError::Config(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// The namespaces that exist now.
pub fn existing() -> Result<Vec<String>, ChaosError> {
    let out = Command::new("ip").args(["netns", "list"]).output().map_err(|e| ChaosError::Config(format!("running `ip netns list` ({e}): the network campaign needs iproute2 and root")))?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect())
}

impl Hosts {
    /// Makes `n` hosts named `{prefix}-0` … `{prefix}-{n-1}`. `prefix` is at most 8 characters
    /// (interface names are `{prefix}-{i}r` / `{prefix}-{i}h`, and Linux allows 15).
    pub fn create(prefix: &str, n: usize) -> Result<Hosts, ChaosError> {
        if prefix.is_empty() || prefix.len() > 8 || !prefix.chars().all(|c| c.is_ascii_alphanumeric()) || n == 0 || n > 250 {
            return Err(ChaosError::Config(format!("hosts: prefix {prefix:?} must be 1–8 letters or digits and the count 1–250, got {n}")));
        }
        let taken = existing()?;
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
        if let Some(clash) = names.iter().find(|n| taken.contains(n)) {
            return Err(ChaosError::Config(format!(
                "network namespace {clash} already exists (another campaign running, or one killed before cleaning up: `ip netns del {clash}`)"
            )));
        }
        let mut hosts = Hosts { names: Vec::new() };
        for (i, name) in names.iter().enumerate() {
            ip(&["netns", "add", name])?;
            hosts.names.push(name.clone());
            let (root_end, host_end) = (format!("{name}r"), format!("{name}h"));
            ip(&["link", "add", &root_end, "type", "veth", "peer", "name", &host_end])?;
            ip(&["link", "set", &host_end, "netns", name])?;
            ip(&["addr", "add", &format!("{}/30", hosts.gateway(i)), "dev", &root_end])?;
            ip(&["link", "set", &root_end, "up"])?;
            ip(&["netns", "exec", name, "ip", "addr", "add", &format!("{}/30", hosts.addr(i)), "dev", &host_end])?;
            ip(&["netns", "exec", name, "ip", "link", "set", &host_end, "up"])?;
            ip(&["netns", "exec", name, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }

    /// Host `i`'s address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, i as u8, 2)
    }

    /// The root namespace's end of host `i`'s link (where its relay listens).
    pub fn gateway(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, i as u8, 1)
    }

    /// `launcher`, run inside host `i`.
    pub fn launcher(&self, i: usize, launcher: &Launcher) -> Launcher {
        let mut prefix = vec!["netns".to_string(), "exec".to_string(), self.names[i].clone(), launcher.program.display().to_string()];
        prefix.extend(launcher.prefix.iter().cloned());
        Launcher { program: "ip".into(), prefix }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for name in &self.names {
            // Deleting the namespace deletes the veth end in it, and with it its peer.
            let _ = ip(&["netns", "del", name]);
            let _ = ip(&["link", "del", &format!("{name}r")]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ip_command_says_what_to_install() {
        let e = run("ip-not-installed-here", &["netns", "list"]).unwrap_err().to_string();
        assert!(e.contains("iproute2") && e.contains("root"), "{e}");
    }

    #[test]
    fn bad_prefixes_are_refused_before_anything_is_made() {
        for p in ["", "much-too-long", "has space"] {
            assert!(Hosts::create(p, 2).unwrap_err().to_string().contains("prefix"));
        }
    }
}
