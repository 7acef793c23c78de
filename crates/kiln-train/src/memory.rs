//! Peak resident memory of this process, as the kernel counts it (`VmHWM`), and the allocator
//! settings a training process wants.

/// Peak resident set size in MiB, or `None` where `/proc` does not tell.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Keeps freed tensors' memory in the process for reuse. glibc hands every allocation above its
/// mmap threshold (128 KiB, growing to at most 32 MiB) back to the kernel when it is freed, so
/// each training step faults hundreds of megabytes of fresh, zeroed pages in again. With the
/// threshold at 32 MiB and trimming off, a MiniLM training step (16 x 128) took about 20% less
/// time at the same peak memory (mimalloc and jemalloc, which also return large blocks, were
/// slower). Call it first thing in `main`, before any thread starts; elsewhere it does nothing.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets two of glibc's malloc parameters; it is called before the
    // process starts other threads, and a refused setting (return value 0) changes nothing.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
