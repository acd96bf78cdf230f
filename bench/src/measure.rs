//! What the scenarios measure besides their own clocks: the server's CPU time and memory from
//! `/proc`, and latency percentiles.

use hdrhistogram::Histogram;

/// The server's CPU seconds between two readings, and per delivery.
pub fn server_cpu(
    before: Option<f64>,
    after: Option<f64>,
    delivered: u64,
) -> (Option<f64>, Option<f64>) {
    let cpu = before.zip(after).map(|(a, b)| b - a);
    let per = cpu
        .filter(|_| delivered > 0)
        .map(|cpu| cpu * 1e6 / delivered as f64);
    (cpu, per)
}

/// p50, p95, p99 and max of a histogram of nanoseconds, in milliseconds.
pub fn latencies_ms(histogram: &Histogram<u64>) -> [f64; 4] {
    let ms = |ns: u64| ns as f64 / 1e6;
    [
        ms(histogram.value_at_quantile(0.50)),
        ms(histogram.value_at_quantile(0.95)),
        ms(histogram.value_at_quantile(0.99)),
        ms(histogram.max()),
    ]
}

/// CPU time (user + system) a process has used, in seconds, from `/proc/{pid}/stat`.
pub fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read the CPU time of process {pid}: {e}"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| "malformed /proc stat".to_string())
    };
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name.
    let total = ticks(11)? + ticks(12)?;
    Ok(total as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    // USER_HZ is 100 on every Linux this runs on; sysconf would need libc.
    100.0
}

/// Resident memory of a process, from `/proc/{pid}/status`.
pub fn rss_bytes(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read the memory of process {pid}: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// Bytes in MiB, for tables.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_rss_and_cpu() {
        assert!(super::rss_bytes(std::process::id()).unwrap() > 0);
        assert!(super::cpu_seconds(std::process::id()).unwrap() >= 0.0);
    }
}
