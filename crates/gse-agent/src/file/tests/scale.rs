//! A swarm in one process, to see how the scheduler behaves at scale:
//! `cargo test -p gse-agent --release -- --ignored swarm_scale --nocapture`
//! with GSE_SWARM_AGENTS (targets, 20), GSE_SWARM_MB (file size, 64) and
//! GSE_SWARM_UPLOAD_MB (every agent's upload cap, 4); GSE_SWARM_DIRECT set
//! makes the targets serve no one (plain copy). The real benchmark
//! (separate processes) is `gse-bench p2p`.

use std::time::Duration;

use gse_proto::link::FileState;
use tokio::time::Instant;

use super::harness::*;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds this process used so far.
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, not a check; run by hand"]
async fn swarm_scale() {
    let targets = env("GSE_SWARM_AGENTS", 20) as usize;
    let size = env("GSE_SWARM_MB", 64) << 20;
    let upload = env("GSE_SWARM_UPLOAD_MB", 4);
    let certs = certs();
    // GSE_SWARM_DIRECT: targets serve no one (every byte from the source).
    let direct = std::env::var("GSE_SWARM_DIRECT").is_ok();
    let mut world = World::start(&certs, targets + 1, |i, f| {
        f.upload_speed_mb = upload;
        if direct && i > 0 {
            f.p2p_listen = None;
        }
    })
    .await;
    let data = content(size as usize, 3);
    std::fs::write(world.agents[0].path("big.bin"), &data).unwrap();
    drop(data);
    let dir = world.agents[0].dir.path().to_path_buf();
    let manifest = world.manifest(0, &dir, "big.bin", 0).await;
    let peers: Vec<_> = (0..=targets)
        .map(|i| world.agents[i].peer(i == 0))
        .collect();
    let began = Instant::now();
    let services: Vec<_> = world.agents.iter().map(|a| a.service.clone()).collect();
    let sampler = tokio::spawn(async move {
        let mut last = (0u64, 0u64, cpu_s());
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let served = |i: usize| services[i].store.get(TRANSFER, 0).map_or(0, |s| s.served());
            let source = served(0);
            let peers: u64 = (1..services.len()).map(served).sum();
            let cpu = cpu_s();
            eprintln!(
                "t={:>4.1}s source {:>5.2} MiB/s, peers {:>6.2} MiB/s, cpu {:>3.0}%",
                began.elapsed().as_secs_f64(),
                (source - last.0) as f64 / 1048576.0,
                (peers - last.1) as f64 / 1048576.0,
                (cpu - last.2) * 100.0
            );
            last = (source, peers, cpu);
            if std::env::var("GSE_SWARM_DETAIL").is_ok() {
                let each: Vec<String> = (1..services.len())
                    .map(|i| format!("{:.0}", served(i) as f64 / 1048576.0))
                    .collect();
                eprintln!("  served MiB: {}", each.join(" "));
            }
        }
    });
    for t in 1..=targets {
        world.start_target(
            t,
            file_start(&manifest, &world.agents[t].path("out"), peers.clone()),
        );
    }
    let mut times = Vec::new();
    let ids: Vec<usize> = (1..=targets).collect();
    let patience = Duration::from_secs(600);
    for (t, (p, at)) in ids.iter().zip(world.finals_timed(&ids, patience).await) {
        assert_eq!(p.state, FileState::FileDone as i32, "agent {t}: {p:?}");
        times.push(at - began);
    }
    sampler.abort();
    times.sort();
    let ideal = Duration::from_secs_f64(size as f64 / (upload << 20) as f64);
    let share = world.agents[0].service.store.get(TRANSFER, 0).unwrap();
    eprintln!(
        "targets {targets}, {} MiB, cap {upload} MiB/s: ideal {ideal:?}, first {:?}, p50 {:?}, last {:?}, source copies {:.2}, peak RSS {} MiB",
        size >> 20,
        times[0],
        times[times.len() / 2],
        times[times.len() - 1],
        share.served() as f64 / size as f64,
        peak_rss_mib()
    );
}
