//! The words quickstart prints once every agent has registered: where the
//! API and the agent link are, the app's credentials, the agents, and
//! commands to try.

use std::path::Path;

use super::QuickstartInfo;

pub(super) fn print(info: &QuickstartInfo, dir: &Path) {
    println!(
        "gse quickstart is running (server pid {}).",
        info.server_pid
    );
    println!("  API:            {}", info.api);
    println!(
        "  agent link:     {} (mutual TLS, certificates in {})",
        info.agent_listen,
        dir.join("certs").display()
    );
    println!(
        "  app:            bk_app_code={} bk_app_secret={}",
        info.bk_app_code, info.bk_app_secret
    );
    println!("  alarm log:      {}", info.alarm_log.display());
    if info.nodes.len() > 1 {
        println!("  nodes ({}):", info.nodes.len());
        for n in &info.nodes {
            println!(
                "    {}  API {}  agent link {}  pid {}  config {}",
                n.node_id,
                n.api,
                n.agent_listen,
                n.pid,
                n.config.display()
            );
        }
        println!(
            "    (a node that stops is reported here; `gse-server run -c <its config>` brings it back)"
        );
    }
    for p in &info.proxies {
        println!(
            "  proxy of cloud area {}: agents connect to {}  pid {}  metrics {}  config {}",
            p.bk_cloud_id,
            p.agent_listen,
            p.pid,
            p.metrics,
            p.config.display()
        );
    }
    println!("  agents ({}):", info.agents.len());
    for a in &info.agents {
        println!(
            "    {}:{}  agent_id {}  pid {}  data socket {}",
            a.bk_cloud_id,
            a.ip,
            a.bk_agent_id,
            a.pid,
            a.data_ipc.display()
        );
    }
    println!(
        "  details:        {}",
        dir.join("quickstart.json").display()
    );
    println!();
    println!("Try:");
    println!("  gsectl --quickstart {} agents", dir.display());
    println!(
        "  curl -s -X POST {}/api/c/compapi/v2/gse/get_agent_status/ -H 'Content-Type: application/json' \\\n    -d '{{\"bk_app_code\":\"{}\",\"bk_app_secret\":\"{}\",\"bk_supplier_account\":\"0\",\"hosts\":[{{\"ip\":\"{}\",\"bk_cloud_id\":0}}]}}'",
        info.api,
        info.bk_app_code,
        info.bk_app_secret,
        info.agents
            .first()
            .map(|a| a.ip.as_str())
            .unwrap_or("127.0.0.1")
    );
    println!();
    println!("Press Ctrl-C to stop.");
}
