//! A real `gse-proxy` for the benches (issue 12), started as quickstart
//! starts one (`gse_launch::quickstart::areas`): its certificate from the
//! bench server's CA, bound to the area, linked to the server.

use std::time::Duration;

use anyhow::{Context, Result};
use gse_core::certs::CertDir;
use gse_launch::quickstart::areas::{self, AreaOption, LocalProxy};
use tokio::time::{Instant, sleep};

use crate::server::BenchServer;

/// The benches' cloud area behind the proxy.
pub const AREA: i64 = 7;
/// Time the proxy has to link to the server.
const LINK_WITHIN: Duration = Duration::from_secs(30);

/// Starts the proxy of [`AREA`] beside `server` and waits until it is
/// linked to it.
pub async fn start(server: &BenchServer) -> Result<LocalProxy> {
    let bin = gse_launch::beside_current_exe("gse-proxy")?;
    let certs = CertDir::new(server.certs_dir());
    let area = AreaOption {
        bk_cloud_id: AREA,
        agents: 0,
    };
    let mut proxy = areas::start_proxy(&bin, (server.dir(), &certs), (&area, 0), &[server.link])?;
    if let Err(e) = wait_linked(&mut proxy).await {
        stop(proxy).await;
        return Err(e);
    }
    Ok(proxy)
}

/// A metric of the proxy (an unlabelled one, or `name{labels}` as the page
/// shows it); `None` when the page cannot be read or has no such line.
pub async fn metric(proxy: &LocalProxy, name: &str) -> Option<f64> {
    let text = reqwest::get(&proxy.entry.metrics)
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub async fn stop(mut proxy: LocalProxy) {
    areas::stop_proxies(std::slice::from_mut(&mut proxy), Duration::from_secs(5)).await;
}

async fn wait_linked(proxy: &mut LocalProxy) -> Result<()> {
    let deadline = Instant::now() + LINK_WITHIN;
    loop {
        areas::check_running(std::slice::from_mut(proxy))?;
        if metric(proxy, "gse_proxy_upstream_connected").await == Some(1.0) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(anyhow::anyhow!(
                "the proxy did not link to the server within {LINK_WITHIN:?}; its log: {}",
                proxy.log.display()
            ))
            .context("starting the proxy");
        }
        sleep(Duration::from_millis(100)).await;
    }
}
