//! `gsectl agents`: which agents the cluster knows and how they are doing.
//!
//! Without AGENT arguments it calls our `list_agents` extension (every
//! agent); with them, the standard `list_agent_info` (COMPAT.md §2.2).
//! The `list_agents` table gets a PEER IP column when some agent connects
//! from another address than its identity IP (NAT, K7): that address for
//! those agents, "-" for the others.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;
use serde_json::json;

use crate::client::ApiClient;
use crate::table::Table;

const LIST_AGENTS: &str = "/api/v2/cluster/list_agents";
const LIST_AGENT_INFO: &str = "/api/v2/cluster/list_agent_info";

const UNEXPECTED: &str =
    "the server's answer has an unexpected shape; is gsectl older than gse-server?";

/// `status_code` the API gives a connected agent.
const STATUS_RUNNING: i64 = 2;

const HEADERS: &[&str] = &[
    "AGENT",
    "AGENT_ID",
    "STATE",
    "VERSION",
    "CPU%",
    "MEM",
    "LAST HEARTBEAT",
];

/// Options of `gsectl agents`.
#[derive(Args, Debug)]
pub struct AgentsArgs {
    /// Only show agents that are connected now.
    #[arg(long)]
    pub alive_only: bool,

    /// Print the API's answer (its `data`) as JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Agents to show, each as cloud_id:ip (0:10.0.0.1) or an agent id;
    /// every known agent when none is given.
    #[arg(value_name = "AGENT")]
    pub agents: Vec<String>,
}

/// The `data` of `list_agents`.
#[derive(Debug, Deserialize)]
struct AgentList {
    agents: Vec<ListedAgent>,
}

/// One entry of `list_agents`.
#[derive(Debug, Deserialize)]
struct ListedAgent {
    agent_key: String,
    bk_agent_id: String,
    /// The identity IP.
    #[serde(default)]
    ip: String,
    /// The socket address the server sees the agent connect from.
    #[serde(default)]
    peer_addr: String,
    alive: bool,
    #[serde(default)]
    version: String,
    #[serde(default)]
    cpu_rate: f64,
    #[serde(default)]
    mem_bytes: u64,
    #[serde(default)]
    report_time: u64,
}

/// One entry of `list_agent_info`.
#[derive(Debug, Deserialize)]
struct AgentInfo {
    bk_agent_id: String,
    bk_cloud_id: i64,
    bk_host_ip: String,
    status_code: i64,
    #[serde(default)]
    version: String,
    #[serde(default)]
    cpu_rate: f64,
    #[serde(default)]
    mem_rate: f64,
    #[serde(default)]
    report_time: u64,
}

pub async fn run(client: &ApiClient, args: &AgentsArgs) -> Result<()> {
    let now_ms = now_ms();
    let (data, table) = if args.agents.is_empty() {
        let data = client
            .post(LIST_AGENTS, &json!({ "alive_only": args.alive_only }))
            .await?;
        let list: AgentList = serde_json::from_value(data.clone()).context(UNEXPECTED)?;
        (data, listed_table(&list.agents, now_ms))
    } else {
        let mut data = client
            .post(LIST_AGENT_INFO, &json!({ "agent_id_list": args.agents }))
            .await?;
        if args.alive_only
            && let Some(list) = data.as_array_mut()
        {
            list.retain(|v| v["status_code"].as_i64() == Some(STATUS_RUNNING));
        }
        let infos: Vec<AgentInfo> = serde_json::from_value(data.clone()).context(UNEXPECTED)?;
        (data, info_table(&infos, now_ms))
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&data)?);
    } else {
        print!("{}", table.render());
    }
    Ok(())
}

fn listed_table(agents: &[ListedAgent], now_ms: u64) -> Table {
    let natd = agents.iter().any(|a| a.peer_ip().is_some());
    let mut headers = HEADERS.to_vec();
    if natd {
        headers.insert(2, "PEER IP");
    }
    let mut table = Table::new(&headers);
    for a in agents {
        let mut row = vec![
            a.agent_key.clone(),
            a.bk_agent_id.clone(),
            state(a.alive).into(),
            a.version.clone(),
            format!("{:.1}", a.cpu_rate),
            human_bytes(a.mem_bytes),
            age(now_ms, a.report_time),
        ];
        if natd {
            row.insert(2, a.peer_ip().map_or("-".into(), |ip| ip.to_string()));
        }
        table.push(row);
    }
    table
}

impl ListedAgent {
    /// The IP the agent connects from, when it is not its identity IP.
    fn peer_ip(&self) -> Option<IpAddr> {
        let peer = self.peer_addr.parse::<SocketAddr>().ok()?.ip();
        (self.ip.parse::<IpAddr>().ok() != Some(peer)).then_some(peer)
    }
}

/// `list_agent_info` echoes the id the caller asked with, so AGENT_ID shows
/// "-" when that was the `cloud:ip` key itself.
fn info_table(infos: &[AgentInfo], now_ms: u64) -> Table {
    let mut table = Table::new(HEADERS);
    for a in infos {
        let key = format!("{}:{}", a.bk_cloud_id, a.bk_host_ip);
        let id = if a.bk_agent_id == key {
            "-".to_string()
        } else {
            a.bk_agent_id.clone()
        };
        table.push(vec![
            key,
            id,
            state(a.status_code == STATUS_RUNNING).into(),
            a.version.clone(),
            format!("{:.1}", a.cpu_rate),
            format!("{:.1}%", a.mem_rate),
            age(now_ms, a.report_time),
        ]);
    }
    table
}

fn state(alive: bool) -> &'static str {
    if alive { "alive" } else { "offline" }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How long ago `then_ms` was, coarsely: "3s ago", "5m ago", "2h10m ago".
/// 0 means never; a time in the future (clock skew) reads as "just now".
pub fn age(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        return "never".to_string();
    }
    let Some(ms) = now_ms.checked_sub(then_ms) else {
        return "just now".to_string();
    };
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h{}m ago", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h ago", s / 86400, s % 86400 / 3600),
    }
}

/// A byte count in binary units with one decimal: "512 B", "7.8 MiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_coarsely() {
        let now = 1_700_000_000_000;
        assert_eq!(age(now, now - 3_400), "3s ago");
        assert_eq!(age(now, now - 125_000), "2m ago");
        assert_eq!(age(now, now - 7_800_000), "2h10m ago");
        assert_eq!(age(now, now - 90_000_000), "1d1h ago");
        assert_eq!(age(now, now + 5_000), "just now");
        assert_eq!(age(now, 0), "never");
    }

    #[test]
    fn bytes_read_in_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(8_178_892), "7.8 MiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }

    #[test]
    fn list_agents_data_renders_as_a_table() {
        let data = json!([{
            "agent_key": "0:127.0.0.1", "bk_agent_id": "0100abc", "alive": true, "version": "0.1.0",
            "cpu_rate": 1.26, "mem_bytes": 8_178_892, "report_time": 1_000, "hostname": "ignored"
        }]);
        let agents: Vec<ListedAgent> = serde_json::from_value(data).unwrap();
        assert_eq!(
            listed_table(&agents, 4_000).render(),
            "AGENT        AGENT_ID  STATE  VERSION  CPU%  MEM      LAST HEARTBEAT\n\
             0:127.0.0.1  0100abc   alive  0.1.0    1.3   7.8 MiB  3s ago\n"
        );
    }

    #[test]
    fn a_natd_agent_shows_the_ip_it_connects_from() {
        let data = json!([
            {"agent_key": "0:10.77.0.11", "bk_agent_id": "a1", "ip": "10.77.0.11", "peer_addr": "192.168.1.5:40000",
             "alive": true, "report_time": 1_000},
            {"agent_key": "0:10.77.0.12", "bk_agent_id": "a2", "ip": "10.77.0.12", "peer_addr": "10.77.0.12:40001",
             "alive": true, "report_time": 1_000},
            {"agent_key": "0:fd00::3", "bk_agent_id": "a3", "ip": "fd00::3", "peer_addr": "[fd00::3]:40002",
             "alive": false, "report_time": 0}
        ]);
        let agents: Vec<ListedAgent> = serde_json::from_value(data).unwrap();
        let text = listed_table(&agents, 4_000).render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("AGENT         AGENT_ID  PEER IP      STATE"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("0:10.77.0.11  a1        192.168.1.5  alive"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("0:10.77.0.12  a2        -            alive"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("0:fd00::3     a3        -            offline"),
            "{text}"
        );
        // Nobody behind NAT: no column.
        let plain = listed_table(&agents[1..], 4_000).render();
        assert!(!plain.contains("PEER IP"), "{plain}");
    }

    #[test]
    fn list_agent_info_data_renders_with_mem_rate() {
        let data = json!([
            {"bk_agent_id": "0:10.0.0.1", "bk_cloud_id": 0, "bk_host_ip": "10.0.0.1", "status_code": -2,
             "version": "0.1.0", "cpu_rate": 0.0, "mem_rate": 12.5, "report_time": 1_000},
            {"bk_agent_id": "0100abc", "bk_cloud_id": 0, "bk_host_ip": "10.0.0.2", "status_code": 2,
             "version": "0.1.0", "cpu_rate": 3.0, "mem_rate": 1.0, "report_time": 2_000}
        ]);
        let infos: Vec<AgentInfo> = serde_json::from_value(data).unwrap();
        let text = info_table(&infos, 62_000).render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].starts_with("0:10.0.0.1  -         offline  0.1.0    0.0   12.5%  1m ago"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("0:10.0.0.2  0100abc   alive"),
            "{text}"
        );
    }
}
