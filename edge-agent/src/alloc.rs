//! The allocator setting that keeps a long-running device's memory flat.
//!
//! glibc serves blocks above its mmap threshold with their own mappings, returned to the system
//! when freed, but raises that threshold each time such a block is freed; from then on blocks of
//! that size (a downloaded policy, its parsed weights, a store's buffers) come from heaps that do
//! not shrink. An agent that installs a new policy every round grew by ~2.7 MiB per version that
//! way, and a thousand in-process agents by 1–6 MiB each per round (docs/benchmarks.md). Pinning
//! the threshold stops the drift.

/// Serves every block of `bytes` or more with its own mapping (and stops glibc moving the
/// threshold). Returns whether the allocator took the setting (`false` off glibc).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn pin_mmap_threshold(bytes: i32) -> bool {
    // SAFETY: mallopt only sets an allocator parameter; it takes no pointers and glibc
    // serialises it with allocations, so it may be called at any time from any thread.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn pin_mmap_threshold(_bytes: i32) -> bool {
    false
}

/// What an agent process pins: glibc's own starting threshold, kept there.
pub const AGENT_MMAP_THRESHOLD: i32 = 128 << 10;

#[cfg(test)]
mod tests {
    #[test]
    fn glibc_takes_the_setting() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert!(super::pin_mmap_threshold(super::AGENT_MMAP_THRESHOLD));
    }
}
