//! Resource limits of hosted plugins (`spec.resource`, percent of the
//! host).
//!
//! Policy: every check samples each hosted plugin's CPU (share of all the
//! host's cores since the previous sample) and resident memory (share of
//! the host's memory). A plugin over either limit for `plugin.limit_samples`
//! checks in a row is killed with SIGKILL; the supervisor then restarts it
//! like any plugin that died (with `start_interval` backoff, counting
//! towards `start_retries` only if the restart itself fails). One sample
//! under the limits resets the count, so a short burst is tolerated. A
//! limit of 0 means none.

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use super::spec::PluginSpec;

/// Samples plugin processes.
pub struct Sampler {
    sys: Option<System>,
    cpus: f64,
}

/// One plugin's use, percent of the host.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub cpu_percent: f64,
    pub mem_percent: f64,
}

/// What the tracker says after a sample.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Within,
    /// Over a limit, `streak` samples in a row so far.
    Over {
        streak: u32,
    },
    /// Over for long enough: kill it; the text says which limit.
    Kill(String),
}

/// Counts a plugin's samples over its limits.
#[derive(Clone, Debug, Default)]
pub struct LimitTracker {
    streak: u32,
}

// === impl Sampler ===

impl Sampler {
    pub fn new() -> Self {
        let mut sys = System::new().ok();
        if let Some(sys) = sys.as_mut() {
            sys.refresh_memory();
        }
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0);
        Sampler { sys, cpus }
    }

    /// Refreshes `pids` and returns the use of each that is still there.
    pub fn sample(&mut self, pids: &[u32]) -> Vec<(u32, Usage)> {
        let Some(sys) = self.sys.as_mut() else {
            return Vec::new();
        };
        let wanted: Vec<Pid> = pids.iter().map(|p| Pid::from_u32(*p)).collect();
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&wanted),
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        let total = sys.total_memory().max(1) as f64;
        pids.iter()
            .filter_map(|&pid| {
                let p = sys.process(Pid::from_u32(pid))?;
                Some((
                    pid,
                    Usage {
                        cpu_percent: f64::from(p.cpu_usage()) / self.cpus,
                        mem_percent: p.memory() as f64 * 100.0 / total,
                    },
                ))
            })
            .collect()
    }
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

// === impl LimitTracker ===

impl LimitTracker {
    /// Takes one sample; `needed` is `plugin.limit_samples`.
    pub fn observe(&mut self, usage: Usage, spec: &PluginSpec, needed: u32) -> Verdict {
        let cpu_over = spec.cpu_limit > 0.0 && usage.cpu_percent > spec.cpu_limit;
        let mem_over = spec.mem_limit > 0.0 && usage.mem_percent > spec.mem_limit;
        if !cpu_over && !mem_over {
            self.streak = 0;
            return Verdict::Within;
        }
        self.streak += 1;
        if self.streak < needed {
            return Verdict::Over {
                streak: self.streak,
            };
        }
        self.streak = 0;
        let which = if cpu_over {
            format!(
                "cpu {:.1}% over its limit of {:.1}%",
                usage.cpu_percent, spec.cpu_limit
            )
        } else {
            format!(
                "memory {:.1}% over its limit of {:.1}%",
                usage.mem_percent, spec.mem_limit
            )
        };
        Verdict::Kill(format!("{which} for {needed} checks in a row"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec(cpu: f64, mem: f64) -> PluginSpec {
        let wire = gse_proto::link::ProcSpec {
            proc_name: "p".into(),
            setup_path: "/x".into(),
            cpu_limit_percent: cpu,
            mem_limit_percent: mem,
            ..Default::default()
        };
        PluginSpec::from_wire(&wire, BTreeMap::new()).unwrap()
    }

    fn use_of(cpu: f64, mem: f64) -> Usage {
        Usage {
            cpu_percent: cpu,
            mem_percent: mem,
        }
    }

    #[test]
    fn kill_only_after_enough_samples_in_a_row() {
        let s = spec(10.0, 10.0);
        let mut t = LimitTracker::default();
        assert_eq!(
            t.observe(use_of(50.0, 1.0), &s, 3),
            Verdict::Over { streak: 1 }
        );
        assert_eq!(
            t.observe(use_of(50.0, 1.0), &s, 3),
            Verdict::Over { streak: 2 }
        );
        // One good sample resets the streak.
        assert_eq!(t.observe(use_of(1.0, 1.0), &s, 3), Verdict::Within);
        assert_eq!(
            t.observe(use_of(1.0, 50.0), &s, 3),
            Verdict::Over { streak: 1 }
        );
        t.observe(use_of(1.0, 50.0), &s, 3);
        let Verdict::Kill(why) = t.observe(use_of(1.0, 50.0), &s, 3) else {
            panic!("expected a kill");
        };
        assert!(why.contains("memory"), "{why}");
    }

    #[test]
    fn zero_means_no_limit() {
        let s = spec(0.0, 0.0);
        let mut t = LimitTracker::default();
        for _ in 0..10 {
            assert_eq!(t.observe(use_of(99.0, 99.0), &s, 1), Verdict::Within);
        }
    }

    #[test]
    fn the_sampler_sees_this_process() {
        let mut s = Sampler::new();
        let me = std::process::id();
        let got = s.sample(&[me]);
        assert_eq!(got.len(), 1);
        assert!(got[0].1.mem_percent > 0.0);
    }
}
