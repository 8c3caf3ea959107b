//! How a training process uses its host: threads and freed memory. Both are set once, at the
//! start of a binary, before any kernel has run; neither changes a computed number.

/// Keeps candle's own pool for large elementwise ops (its barrier pool, sized once from
/// `CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`) at one thread, unless the caller chose, for this
/// process and those it starts. irec spreads its work over the threads itself
/// ([`crate::algo::concurrent::side_by_side`], the large products in `irec_model::dense`, the
/// fleet's session shards); candle's pool on top adds a spinning thread and serialises the two
/// halves of a step on its lock. `bench-train --mode gru` at two threads: 45.7 ms a step with the
/// pool, 22 ms without (docs/benchmarks.md).
pub fn keep_candle_elementwise_inline() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Lets the allocator keep freed memory for the next training step instead of handing it back
/// to the kernel. A step allocates and frees the same few hundred tensors every time; with glibc's
/// defaults the large ones come back as fresh pages, each zeroed by a page fault
/// (`bench-train --mode gru`, two threads: 18.8 ms a step against 16.3 ms kept, peak RSS 304 MB
/// against 310 MB). For training processes only: an edge agent's footprint is the point of it.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's thresholds; it is called before the process
    // has started other threads.
    #[allow(unsafe_code)]
    unsafe {
        // glibc refuses an mmap threshold above 32 MiB on 64-bit hosts.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
