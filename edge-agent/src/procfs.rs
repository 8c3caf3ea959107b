//! A process's memory and CPU time from `/proc` (Linux; `None` elsewhere). The agent reports its
//! own in its summary; launchers and campaigns read their children's with the same code.

/// Resident memory, in KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    /// Peak resident set size (`VmHWM`).
    pub peak_kib: u64,
    /// Resident set size now (`VmRSS`).
    pub current_kib: u64,
}

/// The memory of process `pid` (`None`: this process).
pub fn memory(pid: Option<u32>) -> Option<Memory> {
    let text = std::fs::read_to_string(proc_file(pid, "status")).ok()?;
    let field = |name: &str| text.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok());
    Some(Memory { peak_kib: field("VmHWM:")?, current_kib: field("VmRSS:")? })
}

/// Memory only this process holds, from `smaps_rollup`, in KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Private {
    /// Unique set size: `Private_Clean` + `Private_Dirty`, what killing the process would free.
    /// File pages count here only while no other process maps them (a world file mapped by a
    /// lone agent is private; by a fleet of them, shared).
    pub uss_kib: u64,
    /// `Private_Dirty`: memory the process wrote (its heap and stacks, mostly).
    pub dirty_kib: u64,
    /// `Rss` now, for comparison.
    pub rss_kib: u64,
}

/// The private memory of process `pid` (`None`: this process).
pub fn private(pid: Option<u32>) -> Option<Private> {
    let text = std::fs::read_to_string(proc_file(pid, "smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<u64> { text.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()) };
    let (clean, dirty) = (field("Private_Clean:")?, field("Private_Dirty:")?);
    Some(Private { uss_kib: clean + dirty, dirty_kib: dirty, rss_kib: field("Rss:")? })
}

/// The private memory (`Private_Clean` + `Private_Dirty`, KiB) of process `pid` in mappings of
/// the file `path`: the part of its USS that is the world file's pages only because no other
/// process maps them at the moment (the last agent of a fleet to stop holds them alone).
pub fn private_in_file(pid: Option<u32>, path: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(proc_file(pid, "smaps")).ok()?;
    let wanted = std::fs::canonicalize(path).ok()?;
    let mut inside = false;
    let mut kib = 0u64;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: address range, perms, offset, device, inode, path.
            inside = words.nth(4).is_some_and(|p| std::path::Path::new(p) == wanted);
        } else if inside && (first == "Private_Clean:" || first == "Private_Dirty:") {
            kib += words.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Some(kib)
}

/// CPU time process `pid` has used (user + system), in seconds, assuming the usual 100 clock
/// ticks per second.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let text = std::fs::read_to_string(proc_file(pid, "stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn proc_file(pid: Option<u32>, name: &str) -> String {
    match pid {
        Some(p) => format!("/proc/{p}/{name}"),
        None => format!("/proc/self/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let m = memory(None).unwrap();
        assert!(m.peak_kib >= m.current_kib && m.current_kib > 0);
        assert_eq!(memory(Some(std::process::id())).map(|m| m.peak_kib > 0), Some(true));
        assert!(cpu_seconds(None).is_some_and(|s| s >= 0.0));
        let p = private(None).unwrap();
        assert!(p.dirty_kib > 0 && p.uss_kib >= p.dirty_kib && p.rss_kib >= p.uss_kib);
    }
}
