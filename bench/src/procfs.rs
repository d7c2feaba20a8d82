//! What the kernel says about processes and the machine: CPU time (utime + stime) and
//! resident memory from `/proc`, the CPU model and core count, the load average.

use std::time::Instant;

use serde::Serialize;

/// CPU time used so far by process `pid` (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size of process `pid`, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Threads of process `pid`.
pub fn threads(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on Linux in practice).
pub fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|hz| *hz > 0.0)
        .unwrap_or(100.0)
}

/// The soft limit on open files of this process.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Mean time of a 4 KiB write + fsync in `dir` (20 of them), in milliseconds: what each
/// SQLite commit with synchronous=FULL waits for at least once.
pub fn fsync_ms(dir: &std::path::Path) -> Option<f64> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir).ok()?;
    let path = dir.join(".fsync-probe");
    let mut file = std::fs::File::create(&path).ok()?;
    let block = [0u8; 4096];
    let started = Instant::now();
    for _ in 0..20 {
        file.write_all(&block).ok()?;
        file.sync_data().ok()?;
    }
    let ms = started.elapsed().as_secs_f64() * 1e3 / 20.0;
    let _ = std::fs::remove_file(&path);
    Some(ms)
}

/// The 1, 5 and 15 minute load averages, as the kernel prints them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Online CPUs.
    pub nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// Total memory.
    pub mem_total_mib: u64,
    /// `uname -r`.
    pub kernel: String,
    /// Load average when the run started (others' builds share this machine).
    pub loadavg_at_start: String,
}

/// Describes this machine.
pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total_mib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, usize::from),
        cpu_model,
        mem_total_mib,
        kernel,
        loadavg_at_start: loadavg(),
    }
}

/// The processes whose CPU time a phase is split between.
#[derive(Debug, Clone)]
pub struct Roles {
    /// This process: the load generator (and, in the smoke test, everything else too).
    pub loadgen: u32,
    /// The broker under test.
    pub broker: u32,
    /// The partner adapter, when it runs as its own process and matters to the phase.
    pub adapter: Option<u32>,
    hz: f64,
}

/// CPU counters at the start of a phase.
#[derive(Debug, Clone)]
pub struct CpuMark {
    at: Instant,
    loadgen: u64,
    broker: u64,
    adapter: Option<u64>,
}

/// Where the CPU time of a phase went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuSplit {
    /// Wall-clock time of the phase.
    pub wall_s: f64,
    /// CPU seconds of the load generator (this process).
    pub loadgen_cpu_s: f64,
    /// CPU seconds of the broker.
    pub broker_cpu_s: f64,
    /// CPU seconds of the partner adapter, if measured separately.
    pub adapter_cpu_s: Option<f64>,
    /// True when the broker runs inside the load generator's process (smoke test): the two
    /// figures are then the same counter.
    pub shared_process: bool,
}

impl CpuSplit {
    /// Broker CPU per operation, in milliseconds.
    pub fn broker_ms_per(&self, operations: u64) -> f64 {
        if operations == 0 {
            0.0
        } else {
            self.broker_cpu_s * 1e3 / operations as f64
        }
    }
}

impl Roles {
    /// The load generator is this process.
    pub fn new(broker: u32, adapter: Option<u32>) -> Roles {
        Roles {
            loadgen: std::process::id(),
            broker,
            adapter,
            hz: ticks_per_second(),
        }
    }

    /// Reads the counters now.
    pub fn mark(&self) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            loadgen: cpu_ticks(self.loadgen).unwrap_or(0),
            broker: cpu_ticks(self.broker).unwrap_or(0),
            adapter: self.adapter.and_then(cpu_ticks),
        }
    }

    /// CPU used since `mark`.
    pub fn since(&self, mark: &CpuMark) -> CpuSplit {
        let now = self.mark();
        let secs = |after: u64, before: u64| after.saturating_sub(before) as f64 / self.hz;
        CpuSplit {
            wall_s: mark.at.elapsed().as_secs_f64(),
            loadgen_cpu_s: secs(now.loadgen, mark.loadgen),
            broker_cpu_s: secs(now.broker, mark.broker),
            adapter_cpu_s: match (now.adapter, mark.adapter) {
                (Some(a), Some(b)) => Some(secs(a, b)),
                _ => None,
            },
            shared_process: self.broker == self.loadgen,
        }
    }

    /// The broker's threads now.
    pub fn broker_threads(&self) -> u64 {
        threads(self.broker).unwrap_or(0)
    }

    /// The broker's resident memory now, in KiB.
    pub fn broker_rss_kib(&self) -> u64 {
        rss_kib(self.broker).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_some());
        assert!(rss_kib(me).unwrap() > 0);
        assert!(threads(me).unwrap() >= 1);
        let m = machine();
        assert!(m.nproc >= 1);
        assert!(m.mem_total_mib > 0);
    }
}
