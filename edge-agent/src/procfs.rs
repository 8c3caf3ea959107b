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
    }
}
