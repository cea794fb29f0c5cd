//! The host's system snapshot (D3): every `data.snapshot_interval` one JSON
//! object with cpu, memory, load, disks, network counters, uptime and the
//! process count, sent as one record on `data.snapshot_data_id` through the
//! agent's data intake, like any collector's record.
//!
//! Start at [`run`]. [`Collector`] owns one `sysinfo` `System`, `Disks` and
//! `Networks`, made once and refreshed only in the parts a snapshot reads,
//! so a snapshot costs a few small `/proc` reads and the agent stays near
//! zero CPU when idle. The JSON shape is [`Snapshot`]; docs/API.md lists
//! its fields. What the server keeps of it, and the API that serves it, is
//! in gse-server's `role/data/snapshot.rs` and `role/api/snapshot.rs`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sysinfo::{DiskRefreshKind, Disks, MemoryRefreshKind, Networks, System};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::data::agent_info::AgentInfo;
use crate::data::config::DataConfig;
use crate::data::{DataPlane, Intake};

/// Version of the snapshot's JSON shape; bumped when a field changes meaning
/// (new fields do not bump it).
pub const SNAPSHOT_VERSION: u32 = 1;

/// Most disks and interfaces listed in one snapshot; a host with thousands
/// of mounts (containers) or interfaces (veths) must not make a huge record.
pub const MAX_LISTED: usize = 64;

/// A collection that takes longer than this is logged (a hung mount, an
/// overloaded host); the next tick waits for it rather than piling up.
const SLOW_COLLECTION: Duration = Duration::from_secs(2);

/// One system snapshot, as sent (JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    /// [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// When it was taken, unix milliseconds (the agent's clock).
    pub time_ms: u64,
    pub bk_agent_id: String,
    pub cloud_id: i64,
    /// Identity IP (K7); empty until the agent knows it (first connection).
    pub ip: String,
    pub hostname: String,
    /// `linux`, `windows`, `macos`, `aix`...
    pub os_type: String,
    pub uptime_s: u64,
    /// Boot time, unix seconds.
    pub boot_time_s: u64,
    pub process_count: u64,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub load: LoadStats,
    /// Mounted local filesystems (network mounts are skipped: statvfs on a
    /// hard NFS mount can hang), at most [`MAX_LISTED`].
    pub disks: Vec<DiskStats>,
    /// Network interfaces, at most [`MAX_LISTED`], sorted by name.
    pub net: Vec<NetStats>,
}

/// CPU use since the previous snapshot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CpuStats {
    /// Logical CPUs.
    pub count: usize,
    /// All CPUs together, 0-100.
    pub usage_percent: f32,
    /// Each logical CPU, 0-100, in the OS's order.
    pub per_core_percent: Vec<f32>,
}

/// Memory and swap, bytes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MemoryStats {
    pub total_bytes: u64,
    pub used_bytes: u64,
    /// What new programs can still get (Linux `MemAvailable`).
    pub available_bytes: u64,
    pub free_bytes: u64,
    /// `used_bytes` as a share of `total_bytes`, 0-100.
    pub usage_percent: f32,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
    pub swap_free_bytes: u64,
}

/// Run-queue load averages (0 on Windows, which has none).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LoadStats {
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
}

/// One mounted filesystem, bytes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DiskStats {
    pub mount: String,
    /// Filesystem type (`ext4`, `xfs`, `NTFS`...).
    pub fs: String,
    /// Device (`/dev/sda1`).
    pub device: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    /// `used_bytes` as a share of `total_bytes`, 0-100.
    pub usage_percent: f32,
}

/// One network interface's counters since boot (a consumer computes rates
/// from two snapshots).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NetStats {
    pub name: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
}

/// Takes snapshots; keep one and call [`Collector::collect`] on a timer, so
/// CPU usage is measured between calls.
pub struct Collector {
    sys: System,
    disks: Disks,
    networks: Networks,
}

// === impl Collector ===

impl Collector {
    /// Reads the CPU counters once, so the first snapshot has a usage.
    pub fn new() -> Result<Self, sysinfo::Error> {
        let mut sys = System::new()?;
        sys.refresh_cpu_usage();
        Ok(Collector {
            sys,
            disks: Disks::new()?,
            networks: Networks::new()?,
        })
    }

    /// One snapshot of the host, labelled with `who`.
    pub fn collect(&mut self, who: &AgentInfo) -> Snapshot {
        self.sys.refresh_cpu_usage();
        self.sys
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram().with_swap());
        self.disks
            .refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
        self.networks.refresh(true);
        Snapshot {
            version: SNAPSHOT_VERSION,
            time_ms: now_ms(),
            bk_agent_id: who.bk_agent_id.clone(),
            cloud_id: i64::from(who.cloud_id),
            ip: who.ip.clone(),
            hostname: System::host_name().unwrap_or_default(),
            os_type: std::env::consts::OS.to_string(),
            uptime_s: System::uptime().unwrap_or(0),
            boot_time_s: System::boot_time().unwrap_or(0),
            process_count: process_count(&mut self.sys),
            cpu: self.cpu(),
            memory: self.memory(),
            load: load(),
            disks: self.disk_list(),
            net: self.net_list(),
        }
    }

    fn cpu(&self) -> CpuStats {
        let per_core: Vec<f32> = self.sys.cpus().iter().map(|c| percent(c.usage())).collect();
        CpuStats {
            count: per_core.len(),
            usage_percent: percent(self.sys.global_cpu_usage()),
            per_core_percent: per_core,
        }
    }

    fn memory(&self) -> MemoryStats {
        let s = &self.sys;
        MemoryStats {
            total_bytes: s.total_memory(),
            used_bytes: s.used_memory(),
            available_bytes: s.available_memory(),
            free_bytes: s.free_memory(),
            usage_percent: share(s.used_memory(), s.total_memory()),
            swap_total_bytes: s.total_swap(),
            swap_used_bytes: s.used_swap(),
            swap_free_bytes: s.free_swap(),
        }
    }

    fn disk_list(&self) -> Vec<DiskStats> {
        self.disks
            .iter()
            .take(MAX_LISTED)
            .map(|d| {
                let total = d.total_space();
                let free = d.available_space();
                let used = total.saturating_sub(free);
                DiskStats {
                    mount: d.mount_point().to_string_lossy().into_owned(),
                    fs: d.file_system().to_string_lossy().into_owned(),
                    device: d.name().to_string_lossy().into_owned(),
                    total_bytes: total,
                    used_bytes: used,
                    free_bytes: free,
                    usage_percent: share(used, total),
                }
            })
            .collect()
    }

    fn net_list(&self) -> Vec<NetStats> {
        let mut list: Vec<NetStats> = self
            .networks
            .iter()
            .map(|(name, n)| NetStats {
                name: name.to_string_lossy().into_owned(),
                rx_bytes: n.total_received(),
                tx_bytes: n.total_transmitted(),
                rx_packets: n.total_packets_received(),
                tx_packets: n.total_packets_transmitted(),
                rx_errors: n.total_errors_on_received(),
                tx_errors: n.total_errors_on_transmitted(),
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list.truncate(MAX_LISTED);
        list
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A percentage with two decimals; NaN (no sample yet) becomes 0.
fn percent(p: f32) -> f32 {
    if p.is_finite() {
        (p * 100.0).round() / 100.0
    } else {
        0.0
    }
}

fn share(part: u64, total: u64) -> f32 {
    if total == 0 {
        return 0.0;
    }
    percent((part as f64 * 100.0 / total as f64) as f32)
}

fn load() -> LoadStats {
    let l = System::load_average().unwrap_or(sysinfo::LoadAvg {
        one: 0.0,
        five: 0.0,
        fifteen: 0.0,
    });
    LoadStats {
        load1: l.one,
        load5: l.five,
        load15: l.fifteen,
    }
}

/// Processes on the host. On Linux the numeric entries of /proc are
/// counted: one directory read, where a sysinfo process refresh would read
/// a file per process.
fn process_count(sys: &mut System) -> u64 {
    #[cfg(target_os = "linux")]
    {
        let _ = sys;
        std::fs::read_dir("/proc")
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_str().is_some_and(is_pid))
                    .count() as u64
            })
            .unwrap_or(0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        sys.refresh_processes_specifics(
            sysinfo::ProcessesToUpdate::All,
            true,
            sysinfo::ProcessRefreshKind::nothing(),
        );
        sys.processes().len() as u64
    }
}

#[cfg(target_os = "linux")]
fn is_pid(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit())
}

/// Where snapshots go: the agent's data intake in production, a channel in
/// tests.
pub trait SnapshotOut: Send + 'static {
    fn push(&self, data_id: u32, payload: Bytes);
}

/// What [`run`] needs.
pub struct SnapshotTask<O> {
    /// Time between snapshots; zero turns them off.
    pub interval: Duration,
    pub data_id: u32,
    /// Who the agent is (its ip is known after the first connection).
    pub identity: watch::Receiver<AgentInfo>,
    pub out: O,
}

impl SnapshotOut for Intake {
    fn push(&self, data_id: u32, payload: Bytes) {
        if !Intake::push(self, data_id, payload) {
            tracing::warn!(
                data_id,
                "the data path's queue is full; a system snapshot was dropped"
            );
        }
    }
}

// === impl SnapshotTask ===

impl SnapshotTask<Intake> {
    /// The agent's snapshots as `[data]` configures them, into its data path.
    pub fn new(cfg: &DataConfig, data: &DataPlane) -> Self {
        SnapshotTask {
            interval: cfg.snapshot_interval,
            data_id: cfg.snapshot_data_id,
            identity: data.info.subscribe(),
            out: data.intake.clone(),
        }
    }
}

/// Takes a snapshot every `interval` and pushes it until `shutdown`.
/// Returns at once when the interval is zero or the host's counters cannot
/// be read at all (logged).
pub async fn run<O: SnapshotOut>(task: SnapshotTask<O>, shutdown: CancellationToken) {
    if task.interval.is_zero() {
        tracing::info!("system snapshots are off (data.snapshot_interval = 0)");
        return;
    }
    let mut collector = match Collector::new() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot read this host's system counters; no system snapshots will be sent");
            return;
        }
    };
    let mut ticks = tokio::time::interval(task.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate; let the CPU counters move first
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let who = task.identity.borrow().clone();
        let began = std::time::Instant::now();
        // sysinfo reads files; keep that off the async workers.
        let joined = tokio::task::spawn_blocking(move || {
            let snap = collector.collect(&who);
            (collector, snap)
        })
        .await;
        let Ok((c, snap)) = joined else {
            tracing::error!(
                "the system snapshot collector panicked; no more snapshots will be sent"
            );
            return;
        };
        collector = c;
        if began.elapsed() > SLOW_COLLECTION {
            tracing::warn!(took = ?began.elapsed(), "a system snapshot took long to collect");
        }
        match serde_json::to_vec(&snap) {
            Ok(json) => task.out.push(task.data_id, Bytes::from(json)),
            Err(e) => tracing::error!(error = %e, "cannot encode a system snapshot"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> AgentInfo {
        AgentInfo {
            cloud_id: 3,
            ip: "10.0.0.7".into(),
            bk_agent_id: "0100abc".into(),
            ..AgentInfo::default()
        }
    }

    #[test]
    fn a_snapshot_has_plausible_values_and_every_documented_field() {
        let mut c = Collector::new().unwrap();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let snap = c.collect(&who());
        assert_eq!(snap.version, SNAPSHOT_VERSION);
        assert_eq!((snap.cloud_id, snap.ip.as_str()), (3, "10.0.0.7"));
        assert_eq!(snap.bk_agent_id, "0100abc");
        assert!(snap.time_ms > 1_600_000_000_000);
        assert!(snap.cpu.count > 0 && snap.cpu.per_core_percent.len() == snap.cpu.count);
        assert!(
            (0.0..=100.0).contains(&snap.cpu.usage_percent),
            "{:?}",
            snap.cpu
        );
        assert!(snap.memory.total_bytes > 0);
        assert!(snap.memory.used_bytes <= snap.memory.total_bytes);
        assert!(snap.memory.available_bytes <= snap.memory.total_bytes);
        assert!(snap.uptime_s > 0 && snap.boot_time_s > 1_000_000_000);
        assert!(snap.process_count > 0);
        assert!(snap.load.load1 >= 0.0);
        assert!(snap.net.iter().any(|n| n.name == "lo"), "{:?}", snap.net);
        for d in &snap.disks {
            assert!(d.used_bytes + d.free_bytes <= d.total_bytes, "{d:?}");
        }

        // The wire form: a JSON object with the names docs/API.md lists.
        let json: serde_json::Value = serde_json::to_value(&snap).unwrap();
        for key in [
            "version",
            "time_ms",
            "bk_agent_id",
            "cloud_id",
            "ip",
            "hostname",
            "os_type",
            "uptime_s",
            "boot_time_s",
            "process_count",
            "cpu",
            "memory",
            "load",
            "disks",
            "net",
        ] {
            assert!(json.get(key).is_some(), "missing {key} in {json}");
        }
        assert!(json["cpu"]["usage_percent"].is_number());
        assert!(json["memory"]["swap_total_bytes"].is_number());
        assert!(json["load"]["load15"].is_number());
        assert!(json["net"][0]["rx_packets"].is_number());
        assert!(serde_json::to_vec(&snap).unwrap().len() < 32 * 1024);
    }

    #[test]
    fn counters_are_cumulative_between_snapshots() {
        let mut c = Collector::new().unwrap();
        let a = c.collect(&who());
        let b = c.collect(&who());
        assert!(b.time_ms >= a.time_ms);
        let lo = |s: &Snapshot| s.net.iter().find(|n| n.name == "lo").cloned();
        if let (Some(x), Some(y)) = (lo(&a), lo(&b)) {
            assert!(y.rx_bytes >= x.rx_bytes);
        }
    }

    #[test]
    fn percentages_are_clean() {
        assert_eq!(percent(f32::NAN), 0.0);
        assert_eq!(percent(12.3456), 12.35);
        assert_eq!(share(1, 0), 0.0);
        assert_eq!(share(1, 4), 25.0);
    }

    struct Chan(std::sync::mpsc::Sender<(u32, Bytes)>);

    impl SnapshotOut for Chan {
        fn push(&self, data_id: u32, payload: Bytes) {
            let _ = self.0.send((data_id, payload));
        }
    }

    #[tokio::test]
    async fn run_pushes_json_on_the_data_id_every_interval() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (_id_tx, identity) = watch::channel(who());
        let shutdown = CancellationToken::new();
        let task = SnapshotTask {
            interval: Duration::from_millis(250),
            data_id: 1100001,
            identity,
            out: Chan(tx),
        };
        let handle = tokio::spawn(run(task, shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(1200)).await;
        shutdown.cancel();
        handle.await.unwrap();
        let got: Vec<(u32, Bytes)> = rx.try_iter().collect();
        assert!((2..=6).contains(&got.len()), "{} snapshots", got.len());
        for (data_id, payload) in got {
            assert_eq!(data_id, 1100001);
            let snap: Snapshot = serde_json::from_slice(&payload).unwrap();
            assert_eq!(snap.ip, "10.0.0.7");
        }
    }

    #[tokio::test]
    async fn a_zero_interval_sends_nothing() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (_id_tx, identity) = watch::channel(who());
        let task = SnapshotTask {
            interval: Duration::ZERO,
            data_id: 1,
            identity,
            out: Chan(tx),
        };
        run(task, CancellationToken::new()).await;
        assert!(rx.try_recv().is_err());
    }
}
