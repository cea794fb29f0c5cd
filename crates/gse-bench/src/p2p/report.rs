//! The JSON line of `gse-bench p2p`: the run's parameters and ideal time,
//! then one [`PhaseReport`] per phase (P2P, and the direct baseline), and
//! whether the P2P phase met the targets.

use serde::Serialize;

use super::swarm::SwarmFigures;
use super::transfer::TransferFigures;

/// The targets for the P2P phase.
pub const TARGET: &str =
    "completion p50 <= 1.1 x S/U, max <= 1.5 x S/U; source sends <= 3 x S; agent peak RSS < 64 MiB";
const TARGET_RATIO_P50: f64 = 1.1;
const TARGET_RATIO_MAX: f64 = 1.5;
const TARGET_SOURCE_RATIO: f64 = 3.0;
const TARGET_RSS_MIB: f64 = 64.0;
/// Issue 12's target for `--proxy`.
pub const PROXY_TARGET: &str = "targets behind one proxy: every target done, at most 1.1 copies of the file cross into the area";
const PROXY_MAX_COPIES: f64 = 1.1;

/// What the run was asked to do.
pub struct RunParams {
    pub size_bytes: u64,
    pub agents: u32,
    pub upload_mb: u64,
    pub upload_cap_bytes_per_s: u64,
    pub isolated_targets: bool,
}

/// Everything measured in one phase.
pub struct PhaseFigures {
    pub transfer: TransferFigures,
    pub swarm: SwarmFigures,
    pub server_cpu_percent: f64,
    /// Every core of the machine, whoever used it, % busy.
    pub machine_busy_percent: f64,
    pub verified: usize,
    pub verify_problems: Vec<String>,
}

/// Seconds from the POST to each target's end.
#[derive(Serialize, Debug, Default, Clone, Copy)]
pub struct Completion {
    pub min: f64,
    pub p50: f64,
    pub max: f64,
}

impl Completion {
    /// Nearest-rank percentiles.
    pub fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if v.is_empty() {
                return 0.0;
            }
            let rank = (q * v.len() as f64).ceil() as usize;
            r2(v[rank.clamp(1, v.len()) - 1])
        };
        Completion {
            min: at(0.0),
            p50: at(0.5),
            max: at(1.0),
        }
    }
}

/// One phase in the JSON line.
#[derive(Serialize, Debug)]
pub struct PhaseReport {
    /// POST until each target began (its entry's `start_time`).
    pub start_s: Completion,
    pub completion_s: Completion,
    /// Completion over the ideal S/U.
    pub ratio_p50: f64,
    pub ratio_max: f64,
    /// POST until the last result was seen.
    pub wall_s: f64,
    pub succeeded: usize,
    pub failed: usize,
    /// Target files whose size and blake3 match the source's.
    pub verified: usize,
    pub source_bytes_sent: u64,
    pub source_sent_ratio: f64,
    pub bytes_p2p: u64,
    pub bytes_direct: u64,
    pub p2p_share: f64,
    pub agent_peak_rss_mib_max: f64,
    pub source_peak_rss_mib: f64,
    /// All agents together over the transfer, % of one core.
    pub agents_cpu_percent: f64,
    pub server_cpu_percent: f64,
    /// The whole machine over the transfer (other work included), % of all
    /// cores: near 100 means the figures are the machine's limit.
    pub machine_busy_percent: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_failure: Option<String>,
}

impl PhaseReport {
    pub fn new(params: &RunParams, f: PhaseFigures) -> Self {
        let ideal = ideal_s(params);
        let t = f.transfer;
        let completion = Completion::of(&t.completion_s);
        let moved = t.bytes_p2p + t.bytes_direct;
        let first_failure = t
            .first_failure
            .or_else(|| f.verify_problems.first().cloned());
        PhaseReport {
            start_s: Completion::of(&t.start_s),
            completion_s: completion,
            ratio_p50: r3(completion.p50 / ideal),
            ratio_max: r3(completion.max / ideal),
            wall_s: r2(t.wall_s),
            succeeded: t.succeeded,
            failed: t.failed,
            verified: f.verified,
            source_bytes_sent: f.swarm.source_bytes_sent,
            source_sent_ratio: r3(f.swarm.source_bytes_sent as f64 / params.size_bytes as f64),
            bytes_p2p: t.bytes_p2p,
            bytes_direct: t.bytes_direct,
            p2p_share: if moved == 0 {
                0.0
            } else {
                r3(t.bytes_p2p as f64 / moved as f64)
            },
            agent_peak_rss_mib_max: mib(f.swarm.peak_rss_kib_max),
            source_peak_rss_mib: mib(f.swarm.source_peak_rss_kib),
            agents_cpu_percent: r2(100.0 * f.swarm.cpu_seconds / t.wall_s.max(1e-9)),
            server_cpu_percent: r2(f.server_cpu_percent),
            machine_busy_percent: r2(f.machine_busy_percent),
            first_failure,
        }
    }

    /// Why the phase was not clean: a target failed or its file is wrong.
    pub fn failure(&self, agents: u32, isolated: bool) -> Option<String> {
        let want_verified = if isolated { agents as usize } else { 1 };
        (self.failed > 0 || self.succeeded < agents as usize || self.verified < want_verified).then(
            || {
                format!(
                    "{} of {agents} targets succeeded, {} files verified; first problem: {}",
                    self.succeeded,
                    self.verified,
                    self.first_failure.as_deref().unwrap_or("none")
                )
            },
        )
    }

    fn meets_target(&self) -> bool {
        self.failed == 0
            && self.ratio_p50 <= TARGET_RATIO_P50
            && self.ratio_max <= TARGET_RATIO_MAX
            && self.source_sent_ratio <= TARGET_SOURCE_RATIO
            && self.agent_peak_rss_mib_max < TARGET_RSS_MIB
    }
}

/// The run's line; field order is the order of the JSON line.
#[derive(Serialize, Debug)]
pub struct Report {
    bench: &'static str,
    size_bytes: u64,
    agents: u32,
    upload_mb: u64,
    upload_cap_bytes_per_s: u64,
    /// S / U: the source must send every byte at least once.
    ideal_s: f64,
    /// N x S / U: the source sending every target its copy.
    direct_ideal_s: f64,
    /// Each target had its own directory (mount namespace).
    isolated_targets: bool,
    p2p: Option<PhaseReport>,
    direct: Option<PhaseReport>,
    /// Direct's slowest target over P2P's.
    speedup_max: Option<f64>,
    /// `--proxy`: the targets behind a proxy; `p2p` is then its reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy: Option<PhaseReport>,
    /// Piece bytes the proxy fetched upstream: what crossed into the area.
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy_bytes_crossed: Option<u64>,
    /// Those bytes over S (target: at most 1.1 copies).
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy_copies_crossed: Option<f64>,
    /// The proxy phase's completion p50 and max over the reference's.
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy_vs_p2p_p50: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy_vs_p2p_max: Option<f64>,
    cores: usize,
    target: &'static str,
    meets_target: bool,
}

impl Report {
    pub fn new(params: &RunParams, p2p: Option<PhaseReport>, direct: Option<PhaseReport>) -> Self {
        let ideal = ideal_s(params);
        let speedup_max = match (&p2p, &direct) {
            (Some(p), Some(d)) if p.completion_s.max > 0.0 => {
                Some(r2(d.completion_s.max / p.completion_s.max))
            }
            _ => None,
        };
        let meets_target = p2p.as_ref().is_some_and(PhaseReport::meets_target);
        Report {
            bench: "p2p",
            size_bytes: params.size_bytes,
            agents: params.agents,
            upload_mb: params.upload_mb,
            upload_cap_bytes_per_s: params.upload_cap_bytes_per_s,
            ideal_s: r3(ideal),
            direct_ideal_s: r2(ideal * f64::from(params.agents)),
            isolated_targets: params.isolated_targets,
            p2p,
            direct,
            speedup_max,
            proxy: None,
            proxy_bytes_crossed: None,
            proxy_copies_crossed: None,
            proxy_vs_p2p_p50: None,
            proxy_vs_p2p_max: None,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            target: TARGET,
            meets_target,
        }
    }

    /// Adds the proxy phase (`--proxy`): `crossed` piece bytes entered the
    /// area; the p2p phase is its reference. The target becomes the
    /// proxy's: at most [`PROXY_MAX_COPIES`] copies crossed, every target
    /// done.
    pub fn with_proxy(mut self, proxy: PhaseReport, crossed: u64) -> Self {
        let copies = r3(crossed as f64 / self.size_bytes.max(1) as f64);
        if let Some(p2p) = &self.p2p {
            let ratio = |a: f64, b: f64| if b > 0.0 { r2(a / b) } else { f64::INFINITY };
            self.proxy_vs_p2p_p50 = Some(ratio(proxy.completion_s.p50, p2p.completion_s.p50));
            self.proxy_vs_p2p_max = Some(ratio(proxy.completion_s.max, p2p.completion_s.max));
        }
        self.target = PROXY_TARGET;
        self.meets_target = proxy.failed == 0 && copies <= PROXY_MAX_COPIES;
        self.proxy = Some(proxy);
        self.proxy_bytes_crossed = Some(crossed);
        self.proxy_copies_crossed = Some(copies);
        self
    }

    /// The first phase's failure, named.
    pub fn failure(&self) -> Option<String> {
        let isolated = self.isolated_targets;
        if let Some(f) = self
            .proxy
            .as_ref()
            .and_then(|p| p.failure(self.agents, isolated))
        {
            return Some(format!("proxy: {f}"));
        }
        let p = self
            .p2p
            .as_ref()
            .and_then(|p| p.failure(self.agents, isolated))
            .map(|f| format!("p2p: {f}"));
        p.or_else(|| {
            self.direct
                .as_ref()
                .and_then(|d| d.failure(self.agents, isolated))
                .map(|f| format!("direct: {f}"))
        })
    }
}

fn ideal_s(params: &RunParams) -> f64 {
    params.size_bytes as f64 / params.upload_cap_bytes_per_s.max(1) as f64
}

fn mib(kib: u64) -> f64 {
    r2(kib as f64 / 1024.0)
}

fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_percentiles_are_nearest_rank() {
        let c = Completion::of(&[3.0, 1.0, 2.0, 4.0]);
        assert_eq!((c.min, c.p50, c.max), (1.0, 2.0, 4.0));
        assert_eq!(Completion::of(&[]).max, 0.0);
    }

    #[test]
    fn ratios_are_against_s_over_u() {
        let params = RunParams {
            size_bytes: 100 << 20,
            agents: 2,
            upload_mb: 10,
            upload_cap_bytes_per_s: 10 << 20,
            isolated_targets: true,
        };
        let f = PhaseFigures {
            transfer: TransferFigures {
                completion_s: vec![10.5, 12.0],
                wall_s: 12.2,
                succeeded: 2,
                bytes_p2p: 150 << 20,
                bytes_direct: 50 << 20,
                ..TransferFigures::default()
            },
            swarm: SwarmFigures {
                source_bytes_sent: 120 << 20,
                source_peak_rss_kib: 20 << 10,
                peak_rss_kib_max: 30 << 10,
                cpu_seconds: 6.1,
            },
            server_cpu_percent: 3.0,
            machine_busy_percent: 50.0,
            verified: 2,
            verify_problems: vec![],
        };
        let p = PhaseReport::new(&params, f);
        assert_eq!((p.ratio_p50, p.ratio_max), (1.05, 1.2));
        assert_eq!(p.source_sent_ratio, 1.2);
        assert_eq!(p.p2p_share, 0.75);
        assert_eq!(p.agent_peak_rss_mib_max, 30.0);
        assert!(p.failure(2, true).is_none());
        assert!(p.failure(3, true).unwrap().contains("2 of 3 targets"));
        let report = Report::new(&params, Some(p), None);
        assert!(report.meets_target);
        assert!(report.failure().is_none());
    }
}
