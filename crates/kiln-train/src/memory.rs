//! Peak resident memory of this process, as the kernel counts it (`VmHWM`).

/// Peak resident set size in MiB, or `None` where `/proc` does not tell.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
