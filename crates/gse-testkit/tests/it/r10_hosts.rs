//! Issue 10: a server and agents on separate hosts, deployed as the README's
//! "Deploying by hand" says: certificates from `gse-server certs init
//! --server-name`, the shipped `etc/gse-server.toml` and `etc/gse-agent.toml`
//! with only the keys it names changed, an app from `gse-server apps add`.
//! The hosts are network namespaces on one bridge ([`NetLab`]): nothing
//! reaches anything by the accident of sharing 127.0.0.1.
//!
//! The hosts share one filesystem, so each agent also sets `ipc_links` and
//! `message_ipc_links` to `[]` (the README's "second agent on the host").

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gse_testkit::netlab::{Forward, NetHost, NetLab};
use gse_testkit::{AgentProc, Api, Cluster, ServerProc, bin, eventually};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::d_data::{DATA_ID, connect, file_route, plain, wait_all};
use crate::f_files::{agent_obj, download_of, results, write_file};
use crate::task_api;

pub(crate) const SERVER_NAME: &str = "gse.example.com";
const APP: &str = "bk_job";

/// The shipped config file `name` (in the repository's `etc/`), parsed.
pub(crate) fn shipped(name: &str) -> toml::Table {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../etc")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("the shipped config");
    text.parse().expect("the shipped config parses")
}

/// Sets `section.key` in a parsed config.
pub(crate) fn set(cfg: &mut toml::Table, section: &str, key: &str, value: impl Into<toml::Value>) {
    cfg.get_mut(section)
        .and_then(toml::Value::as_table_mut)
        .unwrap_or_else(|| panic!("[{section}] in the shipped config"))
        .insert(key.into(), value.into());
}

pub(crate) fn set_tls(cfg: &mut toml::Table, certs: &Path, cert: &str) {
    let file = |f: &str| certs.join(f).display().to_string();
    set(cfg, "tls", "ca_file", file("gseca.crt"));
    set(cfg, "tls", "cert_file", file(&format!("{cert}.crt")));
    set(cfg, "tls", "key_file", file(&format!("{cert}.key")));
}

pub(crate) fn gse_server(args: &[&str]) -> String {
    let out = Command::new(bin("gse-server"))
        .args(args)
        .output()
        .expect("run gse-server");
    assert!(
        out.status.success(),
        "gse-server {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Certificates in `certs` (`certs init --server-name`), and a server on
/// host 10.77.0.1 of `lab` from the shipped config with `edit` applied;
/// its API is reached through the returned forwarder.
pub(crate) async fn deploy_server(
    lab: &NetLab,
    cluster: &Cluster,
    certs: &Path,
    edit: fn(&mut toml::Table),
) -> (ServerProc, Forward) {
    gse_server(&[
        "certs",
        "init",
        "--dir",
        certs.to_str().unwrap(),
        "--server-name",
        SERVER_NAME,
    ]);
    let server_host = lab.host("server", 1);
    let dir = cluster.path.join("server");
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = shipped("gse-server.toml");
    set(
        &mut cfg,
        "node",
        "data_dir",
        dir.join("data").display().to_string(),
    );
    set_tls(&mut cfg, certs, "gse_server");
    // So that bk-job on another host reaches the API.
    set(&mut cfg, "api", "listen", "10.77.0.1:59313");
    edit(&mut cfg);
    let config_path = dir.join("gse-server.toml");
    std::fs::write(&config_path, toml::to_string(&cfg).unwrap()).unwrap();
    let out = gse_server(&[
        "apps",
        "add",
        "-c",
        config_path.to_str().unwrap(),
        "--code",
        APP,
    ]);
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("bk_app_secret: "))
        .unwrap_or_else(|| panic!("no secret in {out:?}"))
        .to_string();
    let api_addr: SocketAddr = "10.77.0.1:59313".parse().unwrap();
    let api = server_host.forward(api_addr);
    let server = ServerProc::from_config(
        dir,
        config_path,
        server_host.launcher(),
        Api::new(format!("http://{}", api.addr), APP, &secret),
        api_addr,
    )
    .await;
    (server, api)
}

/// A server host (10.77.0.1) and agent hosts, deployed from the shipped
/// configs. Fields drop in order: processes first, the lab (namespaces) last.
struct Deployment {
    agents: Vec<AgentProc>,
    server: ServerProc,
    _api: Forward,
    hosts: Vec<NetHost>,
    cluster: Cluster,
    _lab: NetLab,
}

impl Deployment {
    /// Hosts `agent-<last>` at 10.77.0.<last> for each of `agents`, plus a
    /// host behind NAT (10.77.9.2 behind 10.77.0.20) when `natted`.
    async fn start(agents: &[u8], natted: bool) -> Deployment {
        Deployment::start_with(agents, natted, |_| {}).await
    }

    /// As [`Deployment::start`], with `edit` applied to the server config.
    async fn start_with(agents: &[u8], natted: bool, edit: fn(&mut toml::Table)) -> Deployment {
        let lab = NetLab::new();
        let cluster = Cluster::new();
        let certs = cluster.path.join("etc-certs");
        let (server, api) = deploy_server(&lab, &cluster, &certs, edit).await;
        let mut hosts: Vec<NetHost> = agents
            .iter()
            .map(|last| lab.host(&format!("agent-{last}"), *last))
            .collect();
        if natted {
            hosts.push(lab.natted_host("natted", 20, 9));
        }
        let agents = hosts
            .iter()
            .map(|host| start_agent(&cluster, &certs, host))
            .collect();
        for host in &hosts {
            server.api.wait_alive(&host.ip.to_string()).await;
        }
        Deployment {
            agents,
            server,
            _api: api,
            hosts,
            cluster,
            _lab: lab,
        }
    }

    fn agent_id(&self, i: usize) -> String {
        self.agents[i].agent_id().expect("agent id written")
    }
}

/// An agent on `host` from the shipped config with the README's changes.
pub(crate) fn start_agent(cluster: &Cluster, certs: &Path, host: &NetHost) -> AgentProc {
    start_agent_with(cluster, certs, host, |cfg| {
        set(cfg, "upstream", "servers", vec!["10.77.0.1:28668"]);
        set(cfg, "upstream", "server_name", SERVER_NAME);
    })
}

/// An agent on `host` from the shipped config with the README's changes
/// for a second agent on a host (its data dir, certificates, no host-wide
/// socket links), then `edit`'s (its upstream).
pub(crate) fn start_agent_with(
    cluster: &Cluster,
    certs: &Path,
    host: &NetHost,
    edit: impl FnOnce(&mut toml::Table),
) -> AgentProc {
    let dir = cluster.path.join(format!("agent-{}", host.ip));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = shipped("gse-agent.toml");
    set(
        &mut cfg,
        "agent",
        "data_dir",
        dir.join("data").display().to_string(),
    );
    set_tls(&mut cfg, certs, "gse_agent");
    set(&mut cfg, "data", "ipc_links", Vec::<String>::new());
    set(
        &mut cfg,
        "plugin",
        "message_ipc_links",
        Vec::<String>::new(),
    );
    if !host.ip.to_string().starts_with("10.77.0.") {
        // Behind NAT, as the shipped config's comment says.
        set(&mut cfg, "agent", "identity_ip", host.ip.to_string());
    }
    edit(&mut cfg);
    let path = dir.join("gse-agent.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    AgentProc::from_config(dir, path, host.ip, host.launcher())
}

async fn agent_info(api: &Api, ip: &str) -> Value {
    let (_, v) = api
        .post(
            "/api/c/compapi/v2/gse/get_agent_info",
            json!({"bk_supplier_account": "0", "hosts": [{"ip": ip, "bk_cloud_id": 0}]}),
        )
        .await;
    v["data"][format!("0:{ip}")].clone()
}

#[tokio::test]
async fn r10_agents_on_other_hosts_get_data_tasks_files_and_nat_from_the_shipped_configs() {
    let d = Deployment::start(&[11, 12], true).await;
    let api = &d.server.api;
    let ips: Vec<String> = d.hosts.iter().map(|h| h.ip.to_string()).collect();

    // Every agent is told the server's address, whatever it connected from.
    for ip in &ips {
        let info = agent_info(api, ip).await;
        assert_eq!(info["parent_ip"], "10.77.0.1", "{ip}: {info}");
        assert_eq!(info["parent_port"], 28668, "{ip}: {info}");
    }

    // Records reach the sink through the DataServer the node assigned.
    records_arrive(&d, 20).await;

    // A task runs on each host: each sees its own address.
    let ids: Vec<String> = (0..d.agents.len()).map(|i| d.agent_id(i)).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let task = task_api::start(api, &id_refs, "ip -4 -o addr show dev eth0", json!({})).await;
    let done = task_api::wait_final(api, &task, &id_refs, Duration::from_secs(60)).await;
    for (id, ip) in ids.iter().zip(&ips) {
        let e = done
            .iter()
            .find(|e| e["bk_agent_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no entry for {id}: {done:?}"));
        assert_eq!(e["error_code"], 0, "{e}");
        assert!(
            e["screen"]
                .as_str()
                .unwrap()
                .contains(&format!("inet {ip}/")),
            "{e}"
        );
    }

    // The NAT'd agent is keyed by its identity IP; its peer is the gateway.
    let (_, v) = api.post("/api/v2/cluster/list_agents", json!({})).await;
    let natted = v["data"]["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_key"] == "0:10.77.9.2")
        .unwrap_or_else(|| panic!("no 0:10.77.9.2 in {v}"))
        .clone();
    assert!(
        natted["peer_addr"]
            .as_str()
            .unwrap()
            .starts_with("10.77.0.20:"),
        "{natted}"
    );

    // P2P between agent hosts: pieces go from host 11 to host 12.
    let got = push(&d, &ids, 0, &[1, 2]).await;
    assert!(
        got[0]["content"]["bytes_p2p"].as_u64().unwrap() > 0,
        "host 12 fetched pieces from host 11 peer to peer: {}",
        got[0]
    );
    // Nobody reaches the NAT'd host's P2P address: its file still arrives,
    // direct through the server, and the result says why.
    let got = push(&d, &ids, 2, &[1]).await;
    let reason = got[0]["content"]["p2p_fallback"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("10.77.9.2:20020"), "{}", got[0]);
    assert_eq!(got[0]["content"]["bytes_p2p"], 0, "{}", got[0]);
}

/// `n` records through the local socket of every agent reach a new file
/// route.
async fn records_arrive(d: &Deployment, n: usize) {
    let sink = file_route(&d.server, DATA_ID).await;
    let mut want = Vec::new();
    for (i, agent) in d.agents.iter().enumerate() {
        let mut conn = connect(&agent.dir.join("data/ipc.state.report")).await;
        for k in 0..n {
            let payload = format!("host{i}-record{k}");
            conn.write_all(&plain(0xC01, DATA_ID, payload.as_bytes()))
                .await
                .unwrap();
            want.push(payload);
        }
    }
    wait_all(&sink, &want, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn r10_1_a_loopback_advertise_ip_is_never_told_to_a_remote_agent() {
    let d = Deployment::start_with(&[41], false, |cfg| {
        set(cfg, "node", "advertise_ip", "127.0.0.1");
    })
    .await;
    let info = agent_info(&d.server.api, "10.77.0.41").await;
    assert_eq!(info["parent_ip"], "10.77.0.1", "{info}");
    records_arrive(&d, 10).await;
    assert!(
        d.server
            .log()
            .contains("node.advertise_ip is a loopback address"),
        "the server says why it did not use it"
    );
    // check-config says it before anything is deployed.
    let out = Command::new(bin("gse-server"))
        .args(["check-config", "-c"])
        .arg(&d.server.config_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: node.advertise_ip = \"127.0.0.1\" is loopback"),
        "{stderr}"
    );
}

/// Pushes a 6 MiB file from agent `src` to the agents `targets`, each into
/// its own directory (the hosts share a filesystem); checks every copy and
/// returns each target's download entry.
async fn push(d: &Deployment, ids: &[String], src: usize, targets: &[usize]) -> Vec<Value> {
    let dir = d.cluster.path.join(format!("push-{src}"));
    let content = crate::f_files::noise(6 << 20, src as u64);
    write_file(&dir.join("src/pkg.bin"), &content, 0o644);
    let tasks = targets
        .iter()
        .map(|t| {
            json!({
                "source": {"file_name": "pkg.bin", "store_dir": dir.join("src"), "agent": agent_obj(&ids[src])},
                "target": {"file_name": "", "store_dir": dir.join(format!("to-{t}")), "agents": [agent_obj(&ids[*t])]},
            })
        })
        .collect();
    let api = &d.server.api;
    let id = crate::f_files::start(api, tasks, json!({})).await;
    let done = eventually("the push final", Duration::from_secs(90), || async {
        let got = results(api, &id).await;
        let finals = targets
            .iter()
            .filter(|t| {
                got.iter().any(|e| {
                    e["content"]["mode"] == 1
                        && e["content"]["dest_agent_id"] == ids[**t].as_str()
                        && crate::f_files::code(e) != 115
                })
            })
            .count();
        (finals == targets.len())
            .then_some(got.clone())
            .ok_or(format!("{got:#?}"))
    })
    .await;
    targets
        .iter()
        .map(|t| {
            let e = download_of(&done, &ids[*t]).clone();
            assert_eq!(crate::f_files::code(&e), 0, "{e}");
            let copy = dir.join(format!("to-{t}/pkg.bin"));
            assert_eq!(std::fs::read(copy).unwrap(), content);
            e
        })
        .collect()
}

#[tokio::test]
async fn r10_a_cut_link_and_a_server_crash_give_offline_and_agent_lost() {
    let mut d = Deployment::start(&[31, 32], false).await;
    let count = |server: &ServerProc, agent: &str| {
        server
            .alarms()
            .iter()
            .filter(|a| a["kind"] == "agent_lost" && a["agent"] == agent)
            .count()
    };
    let api = d.server.api.clone();
    let alive = |want: i64, ip: &'static str| {
        let api = api.clone();
        async move {
            eventually(
                &format!("{ip} alive == {want}"),
                Duration::from_secs(60),
                || {
                    let api = api.clone();
                    async move {
                        let got = api.alive(0, ip).await;
                        (got == want).then_some(()).ok_or(format!("alive = {got}"))
                    }
                },
            )
            .await
        }
    };

    // A cable pulled, no process told: offline, then one agent_lost.
    d.hosts[1].cut();
    alive(0, "10.77.0.32").await;
    eventually(
        "agent_lost for the cut host",
        Duration::from_secs(60),
        || async {
            (count(&d.server, "0:10.77.0.32") == 1)
                .then_some(())
                .ok_or(format!("{:?}", d.server.alarms()))
        },
    )
    .await;
    d.hosts[1].restore();
    alive(1, "10.77.0.32").await;
    assert_eq!(d.server.api.alive(0, "10.77.0.31").await, 1);

    // The server crashes; host 32 never comes back, host 31 does.
    d.server.kill9();
    d.agents[1].kill9();
    d.server.start_again().await;
    alive(1, "10.77.0.31").await;
    eventually(
        "agent_lost for the host that did not come back",
        Duration::from_secs(60),
        || async {
            (count(&d.server, "0:10.77.0.32") == 2)
                .then_some(())
                .ok_or(format!("{:?}", d.server.alarms()))
        },
    )
    .await;
    assert_eq!(d.server.api.alive(0, "10.77.0.32").await, 0);
    assert_eq!(
        count(&d.server, "0:10.77.0.31"),
        0,
        "{:?}",
        d.server.alarms()
    );
}
