//! What the scenarios measure besides their own clocks: the server's CPU time and memory from
//! `/proc`, and latency percentiles.

use hdrhistogram::Histogram;
use serde::Serialize;

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

/// The CPU seconds of every process in `pids` together (the nodes of a cluster); `None`
/// without any.
///
/// # Errors
/// A process's CPU time cannot be read.
pub fn total_cpu(pids: &[u32]) -> Result<Option<f64>, String> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut total = 0.0;
    for pid in pids {
        total += cpu_seconds(*pid)?;
    }
    Ok(Some(total))
}

/// Percentiles of a latency, in milliseconds (as the JSON reports name them).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
}

impl Latency {
    /// p50, p95, p99 and max of a histogram of nanoseconds.
    pub fn of(histogram: &Histogram<u64>) -> Latency {
        let ms = |ns: u64| ns as f64 / 1e6;
        Latency {
            latency_p50_ms: ms(histogram.value_at_quantile(0.50)),
            latency_p95_ms: ms(histogram.value_at_quantile(0.95)),
            latency_p99_ms: ms(histogram.value_at_quantile(0.99)),
            latency_max_ms: ms(histogram.max()),
        }
    }
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

/// Prints the tail of a delivery table: what was lost, what came twice, the latency and the
/// server's CPU per delivered `what`.
pub fn print_deliveries(
    lost: u64,
    duplicates: u64,
    latency: &Latency,
    (cpu, per): (Option<f64>, Option<f64>),
    what: &str,
) {
    println!("LOST                  {lost}");
    println!("duplicates            {duplicates}");
    print_latency("latency ms", latency);
    print_cpu(cpu, per, what);
}

/// Prints a latency line of a table: `label` (22 columns), then p50, p95, p99 and max in ms.
pub fn print_latency(label: &str, latency: &Latency) {
    let Latency {
        latency_p50_ms: p50,
        latency_p95_ms: p95,
        latency_p99_ms: p99,
        latency_max_ms: max,
    } = latency;
    println!("{label:<22}p50 {p50:.2}  p95 {p95:.2}  p99 {p99:.2}  max {max:.2}");
}

/// Prints the server's CPU time, when it was measured, and its cost `per` one of `what`.
pub fn print_cpu(cpu: Option<f64>, per: Option<f64>, what: &str) {
    if let (Some(cpu), Some(per)) = (cpu, per) {
        println!("server CPU            {cpu:.2} s, {per:.1} µs per {what}");
    }
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
