//! Process figures from `/proc` (Linux): resident memory (now and peak),
//! bytes written, CPU time, and the open-files limit every simulated or
//! served agent spends one descriptor of.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use nix::unistd::{SysconfVar, sysconf};

/// Clock ticks per second of `utime`/`stime` in `/proc/<pid>/stat`.
fn clock_ticks() -> f64 {
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(n)) if n > 0 => n as f64,
        // 100 is what Linux reports everywhere in practice.
        _ => 100.0,
    }
}

/// `VmRSS` of `pid` ("self" for this process), KiB.
pub fn rss_kib(pid: &str) -> Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// A `kB` line of `/proc/<pid>/status`.
fn status_kib(pid: &str, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{path} has no {key} line"))
}

/// `VmHWM` of `pid`: the most resident memory it ever had, KiB.
pub fn peak_rss_kib(pid: &str) -> Result<u64> {
    status_kib(pid, "VmHWM:")
}

/// Bytes `pid` has passed to write-like calls so far (sockets included):
/// `wchar` of `/proc/<pid>/io`.
pub fn written_bytes(pid: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/io");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("{path} has no wchar line"))
}

/// User + system CPU seconds `pid` has used so far.
pub fn cpu_seconds(pid: &str) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name (field 2) may hold spaces; fields are counted from
    // the ')' that closes it. utime and stime are fields 14 and 15.
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path} is not a stat line"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: field {} is not a number", i + 3))
    };
    Ok((ticks(11)? + ticks(12)?) as f64 / clock_ticks())
}

/// The whole machine's CPU time so far, in ticks: (busy, total), from the
/// first line of `/proc/stat` (idle and iowait are not busy).
pub fn machine_cpu_ticks() -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let fields: Vec<u64> = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .context("/proc/stat has no cpu line")?
        .split_whitespace()
        .take(8)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// Marks a point in a process's CPU use, to report the share of one core it
/// used until a later point.
pub struct CpuMark {
    pid: String,
    at: Instant,
    cpu_s: f64,
}

impl CpuMark {
    pub fn now(pid: &str) -> Result<Self> {
        Ok(CpuMark {
            pid: pid.to_string(),
            at: Instant::now(),
            cpu_s: cpu_seconds(pid)?,
        })
    }

    /// CPU used since the mark, percent of one core (200 = both of 2 cores).
    pub fn percent_since(&self) -> Result<f64> {
        let wall = self.at.elapsed().as_secs_f64();
        let used = cpu_seconds(&self.pid)? - self.cpu_s;
        Ok(if wall > 0.0 { 100.0 * used / wall } else { 0.0 })
    }
}

/// Lifts the soft open-files limit to the hard one (children inherit it);
/// returns the limit now in force.
pub fn raise_fd_limit() -> Result<u64> {
    gse_core::rlimit::raise_open_files().map_err(anyhow::Error::msg)
}

/// Descriptors each process keeps for itself beyond one per agent (listeners,
/// log files, SQLite, epoll, the runtime).
const FD_RESERVE: u64 = 100;

/// Refuses, up front and naming the limit, a run of `agents` simulated
/// agents that the open-files limit cannot hold: both the server and this
/// process hold one descriptor per agent.
pub fn check_fd_limit(agents: u32, fd_limit: u64) -> Result<()> {
    check_fd_limit_of("--agents", agents, fd_limit)
}

/// [`check_fd_limit`] for a count given by the flag `flag`.
pub fn check_fd_limit_of(flag: &str, agents: u32, fd_limit: u64) -> Result<()> {
    if u64::from(agents) + FD_RESERVE > fd_limit {
        bail!(
            "{flag} {agents} needs about {} open files in gse-server and in gse-bench, \
             but the open-files hard limit (RLIMIT_NOFILE) is {fd_limit} and raising it needs \
             CAP_SYS_RESOURCE; use {flag} {} or fewer, or raise the hard limit \
             (ulimit -Hn, limits.conf, systemd LimitNOFILE)",
            u64::from(agents) + FD_RESERVE,
            fd_limit.saturating_sub(FD_RESERVE)
        );
    }
    Ok(())
}

/// Pins every thread of process `pid` ("self" for this one) to `cpus`.
/// Threads and children made later inherit it from the thread that makes
/// them.
pub fn pin_process(pid: &str, cpus: &[usize]) -> Result<()> {
    use nix::sched::{CpuSet, sched_setaffinity};
    use nix::unistd::Pid;
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu).with_context(|| format!("cpu {cpu}"))?;
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("cannot list the threads of process {pid}"))?;
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        sched_setaffinity(Pid::from_raw(tid), &set).with_context(|| {
            format!("cannot pin thread {tid} of process {pid} to cpus {cpus:?}")
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_limit_error_names_the_limit_and_the_largest_count() {
        check_fd_limit(19_000, 20_000).unwrap();
        let err = check_fd_limit(50_000, 20_000).unwrap_err().to_string();
        assert!(err.contains("hard limit (RLIMIT_NOFILE) is 20000"), "{err}");
        assert!(err.contains("--agents 19900 or fewer"), "{err}");
        let err = check_fd_limit_of("--agents-per-node", 20_000, 20_000).unwrap_err();
        assert!(
            err.to_string().starts_with("--agents-per-node 20000 needs"),
            "{err}"
        );
    }

    #[test]
    fn reads_own_figures() {
        assert!(rss_kib("self").unwrap() > 0);
        assert!(peak_rss_kib("self").unwrap() >= rss_kib("self").unwrap() / 2);
        assert!(written_bytes("self").is_ok());
        let (busy, total) = machine_cpu_ticks().unwrap();
        assert!(busy <= total && total > 0);
        assert!(cpu_seconds("self").unwrap() >= 0.0);
        assert!(CpuMark::now("self").unwrap().percent_since().unwrap() >= 0.0);
    }
}
