//! Probing a lost agent's host (C11) for the alarm role: from this node
//! for hosts it reaches, or, for a host of a cloud area, by the proxy the
//! agent was reached through (the lowest one of a chain probes), or by
//! any proxy of that area linked to this node when its path is not known.
//!
//! The proxies linked to this node are kept here ([`ProxyLinks`]) with
//! their link's queue; a probe goes down as `ProxyProbe` and its answer,
//! `ProxyProbeResult`, comes back on the same link ([`ProxyLinks::answered`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gse_core::seams::AgentRecord;
use gse_link::probe::{ProbeSpec, Verdict, probe};
use gse_proto::link::{ProxyProbe, ProxyProbeResult};
use gse_proto::{Frame, MsgType};
use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::LinkService;
use gse_link::proxy::mux::Up;

/// Probes run at once from this node (a partition can lose thousands of
/// agents together).
const PROBES_AT_ONCE: usize = 256;
/// Time a proxy gets beyond the probe's own (ICMP, then TCP) to answer.
const PROXY_SLACK: Duration = Duration::from_secs(2);

/// The proxies linked to this node, and the probes waiting on them.
pub(super) struct ProxyLinks {
    links: Mutex<HashMap<String, ProxyLink>>,
    /// By probe id: the link asked, and who waits for the answer.
    waiting: Mutex<HashMap<u64, (u64, oneshot::Sender<Verdict>)>>,
    next: AtomicU64,
    slots: Semaphore,
}

/// The way to a proxy that can probe a host.
struct Route {
    proxy: String,
    link_id: u64,
    tx: mpsc::Sender<Up>,
    /// The proxies below it the probe passes, nearest first.
    below: Vec<String>,
}

struct ProxyLink {
    /// Tells this link from a newer one of the same proxy.
    link_id: u64,
    area: i64,
    tx: mpsc::Sender<Up>,
}

impl Default for ProxyLinks {
    fn default() -> Self {
        ProxyLinks {
            links: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            slots: Semaphore::new(PROBES_AT_ONCE),
        }
    }
}

impl ProxyLinks {
    /// Proxy `id` of `area` is linked here; its link's frames go to `tx`.
    pub fn linked(&self, id: &str, area: i64, link_id: u64, tx: mpsc::Sender<Up>) {
        let link = ProxyLink { link_id, area, tx };
        self.links.lock().insert(id.to_string(), link);
    }

    /// Link `link_id` of proxy `id` ended (a newer one stays).
    pub fn unlinked(&self, id: &str, link_id: u64) {
        let mut links = self.links.lock();
        if links.get(id).is_some_and(|l| l.link_id == link_id) {
            links.remove(id);
        }
    }

    /// Link `link_id`'s answer to probe `result.probe_id`; an answer on
    /// another link than the one asked is ignored (a proxy answers only
    /// for itself and the proxies below it).
    pub fn answered(&self, link_id: u64, result: ProxyProbeResult) {
        let mut waiting = self.waiting.lock();
        if waiting
            .get(&result.probe_id)
            .is_some_and(|(asked, _)| *asked == link_id)
            && let Some((_, tx)) = waiting.remove(&result.probe_id)
        {
            let _ = tx.send(Verdict {
                reachable: result.reachable,
                probe: result.probe,
            });
        }
    }

    /// The link to ask for a host of `area` reached through `via`, with
    /// the rest of the path below it.
    fn route(&self, area: i64, via: &[String]) -> Option<Route> {
        let links = self.links.lock();
        let (id, link, below) = match via.split_first() {
            Some((top, rest)) => (top.clone(), links.get(top)?, rest.to_vec()),
            None => links
                .iter()
                .find(|(_, l)| l.area == area)
                .map(|(id, l)| (id.clone(), l, Vec::new()))?,
        };
        Some(Route {
            proxy: id,
            link_id: link.link_id,
            tx: link.tx.clone(),
            below,
        })
    }

    /// Asks `route`'s proxy to probe `ip`, the probe passing the proxies
    /// below it.
    async fn through_proxy(&self, route: Route, ip: std::net::IpAddr, spec: ProbeSpec) -> Verdict {
        let Route {
            proxy,
            link_id,
            tx,
            below,
        } = route;
        let probe_id = self.next.fetch_add(1, Ordering::Relaxed);
        let (answer_tx, answer) = oneshot::channel();
        self.waiting.lock().insert(probe_id, (link_id, answer_tx));
        let ask = ProxyProbe {
            probe_id,
            ip: ip.to_string(),
            tcp_port: spec.tcp_port.into(),
            timeout_ms: spec.timeout.as_millis() as u32,
            via: below,
        };
        let limit = spec.timeout * 2 + PROXY_SLACK;
        let asked = tx
            .send_timeout(Up::Raw(Frame::new(MsgType::ProxyProbe, 0, &ask)), limit)
            .await
            .is_ok();
        let verdict = match asked {
            true => tokio::time::timeout(limit, answer)
                .await
                .ok()
                .and_then(Result::ok),
            false => None,
        };
        self.waiting.lock().remove(&probe_id);
        verdict.unwrap_or_else(|| {
            Verdict::none(format_args!(
                "proxy {proxy} did not answer the probe within {limit:?}"
            ))
        })
    }
}

#[async_trait::async_trait]
impl crate::role::alarm::HostProber for LinkService {
    async fn probe(&self, agent: &AgentRecord, via: &[String], spec: ProbeSpec) -> Verdict {
        let Ok(_slot) = self.proxy_links.slots.acquire().await else {
            return Verdict::none("this node is stopping");
        };
        let ip = agent.key.ip;
        let area = agent.key.cloud_id;
        if via.is_empty() && area == 0 {
            return probe(ip, spec).await;
        }
        match self.proxy_links.route(area, via) {
            Some(route) => self.proxy_links.through_proxy(route, ip, spec).await,
            // Reached directly, or its proxy is gone: probe from here.
            None if via.is_empty() => probe(ip, spec).await,
            None => Verdict::none(format_args!(
                "its proxy {} is not linked to node {}",
                via[0], self.node_id
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rogue proxy (or one below it) cannot answer a probe asked of
    /// another proxy's link: the answer counts only from the link asked.
    #[tokio::test]
    async fn a_probe_is_answered_only_by_the_link_it_was_asked_on() {
        let links = ProxyLinks::default();
        let (tx, mut rx) = mpsc::channel(4);
        links.linked("pa-1", 7, 1, tx);
        let asked = links.through_proxy(
            links.route(7, &[]).expect("a proxy of area 7"),
            "10.7.0.9".parse().unwrap(),
            ProbeSpec {
                tcp_port: 22,
                timeout: Duration::from_millis(200),
            },
        );
        let answer = async {
            let Some(Up::Raw(frame)) = rx.recv().await else {
                panic!("no probe sent")
            };
            let ask: ProxyProbe = frame.decode().unwrap();
            let said = |reachable| ProxyProbeResult {
                probe_id: ask.probe_id,
                reachable,
                probe: "icmp".into(),
            };
            links.answered(2, said(true));
            links.answered(1, said(false));
        };
        let (verdict, ()) = tokio::join!(asked, answer);
        assert_eq!(
            verdict,
            Verdict {
                reachable: false,
                probe: "icmp".into()
            }
        );
    }
}
