//! The agent's own resource use, reported in every heartbeat (K3): CPU
//! percent of one core since the previous sample, resident memory, and that
//! memory as a share of the host's.

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// Samples this process's CPU and memory.
pub struct SelfStats {
    sys: Option<System>,
    pid: Option<Pid>,
}

/// One sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    pub cpu_percent: f32,
    pub mem_bytes: u64,
    pub mem_percent: f32,
}

impl SelfStats {
    pub fn new() -> Self {
        let mut sys = System::new().ok();
        if let Some(sys) = sys.as_mut() {
            sys.refresh_memory();
        }
        let pid = sysinfo::get_current_pid().ok();
        let mut stats = SelfStats { sys, pid };
        stats.sample(); // prime the CPU counter
        stats
    }

    /// CPU use since the previous call, and memory now. Zeroes where the
    /// platform cannot tell.
    pub fn sample(&mut self) -> Sample {
        let (Some(sys), Some(pid)) = (self.sys.as_mut(), self.pid) else {
            return Sample::default();
        };
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        let Some(p) = sys.process(pid) else {
            return Sample::default();
        };
        let total = sys.total_memory();
        Sample {
            cpu_percent: p.cpu_usage(),
            mem_bytes: p.memory(),
            mem_percent: if total > 0 {
                (p.memory() as f64 * 100.0 / total as f64) as f32
            } else {
                0.0
            },
        }
    }
}

impl Default for SelfStats {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_some_memory() {
        let mut s = SelfStats::new();
        let sample = s.sample();
        assert!(sample.mem_bytes > 1024 * 1024, "{sample:?}");
        assert!(sample.mem_percent > 0.0 && sample.mem_percent < 100.0);
    }
}
