//! Reading a process's resident memory and CPU time from /proc (Linux), for the
//! server processes named by `--server-pid` and for the workers themselves.

use std::sync::OnceLock;

/// One observation of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// utime + stime, clock ticks.
    pub cpu_ticks: u64,
}

/// Clock ticks per second (`getconf CLK_TCK`, read once; 100 if that fails).
pub fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// Converts clock ticks to milliseconds.
pub fn ticks_to_ms(ticks: u64) -> u64 {
    ticks * 1000 / clk_tck()
}

/// Samples `pid` (`"self"` for this process); `None` if it is gone or unreadable.
pub fn sample(pid: &str) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(Sample { rss_kib: status_kib(&status, "VmRSS:")?, cpu_ticks: stat_cpu_ticks(&stat)? })
}

/// A `Vm…:` line of /proc/PID/status, in KiB.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// utime + stime (fields 14 and 15) of /proc/PID/stat. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted after the last `)`.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11); // field 3 is the first after ')'
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// This process's CPU time (ms) and peak RSS (KiB).
pub fn own_usage() -> (u64, u64) {
    let cpu = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| stat_cpu_ticks(&s)).map(ticks_to_ms);
    let hwm = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| status_kib(&s, "VmHWM:"));
    (cpu.unwrap_or(0), hwm.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_and_status() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 100 1000 50";
        assert_eq!(stat_cpu_ticks(stat), Some(325));
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(status_kib(status, "VmHWM:"), Some(2048));
        let me = sample("self").expect("/proc/self is readable");
        assert!(me.rss_kib > 0);
        assert!(clk_tck() > 0);
    }
}
