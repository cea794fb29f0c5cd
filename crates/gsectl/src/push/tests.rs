use clap::Parser;
use serde_json::json;

use super::results::{ByteSplit, Entries};
use super::spec::{self, Selection};
use super::*;

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    push: PushArgs,
}

fn parse(args: &[&str]) -> Result<PushArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("push").chain(args.iter().copied())).map(|c| c.push)
}

fn plan(args: &[&str]) -> Plan {
    parse(args).unwrap().plan().unwrap()
}

#[test]
fn ids_keep_their_colons_and_the_path_starts_at_the_first_slash() {
    let p = plan(&[
        "--from",
        "0:127.0.0.1:/data/a:b/app.tgz",
        "--to",
        "0:127.0.0.2,0:127.0.0.3:/opt/x:y/",
    ]);
    assert_eq!(p.source.agent, "0:127.0.0.1");
    assert_eq!(
        (p.source.dir.as_str(), p.source.name.as_str()),
        ("/data/a:b", "app.tgz")
    );
    assert_eq!(p.source.selection, Selection::File);
    assert_eq!(p.targets[0].agents, ["0:127.0.0.2", "0:127.0.0.3"]);
    assert_eq!(p.targets[0].dir, "/opt/x:y");
}

#[test]
fn a_bare_ipv4_means_cloud_zero_and_real_ids_pass() {
    let p = plan(&[
        "--from",
        "10.0.0.1:/f",
        "--to",
        "0100abc-1,10.0.0.2:/d",
        "--to",
        "7:10.0.0.3:/e",
    ]);
    assert_eq!(p.source.agent, "0:10.0.0.1");
    assert_eq!((p.source.dir.as_str(), p.source.name.as_str()), ("/", "f"));
    assert_eq!(p.targets[0].agents, ["0100abc-1", "0:10.0.0.2"]);
    assert_eq!(p.targets[1].agents, ["7:10.0.0.3"]);
    assert_eq!(p.expected_downloads(), 3);
}

#[test]
fn windows_drive_paths_are_paths() {
    let (agent, path) = spec::split_endpoint("--to", r"0:10.0.0.9:C:\deploy").unwrap();
    assert_eq!((agent, path), ("0:10.0.0.9", r"C:\deploy"));
}

#[test]
fn directories_and_patterns_select_what_is_sent() {
    let p = plan(&[
        "--from",
        "0:127.0.0.1:/srv/app/",
        "--to",
        "0:127.0.0.2:/opt",
    ]);
    assert_eq!(
        (
            p.source.dir.as_str(),
            p.source.name.as_str(),
            p.source.selection
        ),
        ("/srv/app", "", Selection::Dir)
    );
    let p = plan(&[
        "--from",
        "0:127.0.0.1:/srv/app",
        "--dir",
        "--to",
        "0:127.0.0.2:/opt",
    ]);
    assert_eq!(p.source.selection, Selection::Dir);
    let p = plan(&[
        "--from",
        "0:127.0.0.1:/srv/app",
        "--wildcard",
        "*.log",
        "--to",
        "0:127.0.0.2:/opt",
    ]);
    assert_eq!(
        (
            p.source.dir.as_str(),
            p.source.name.as_str(),
            p.source.selection
        ),
        ("/srv/app", "*.log", Selection::Wildcard)
    );
    let p = plan(&[
        "--from",
        "0:127.0.0.1:/srv/app",
        "--regex",
        r"^a\d+$",
        "--to",
        "0:127.0.0.2:/opt",
    ]);
    assert_eq!(p.source.selection, Selection::Regex);
    assert!(
        parse(&[
            "--from",
            "0:1.1.1.1:/a",
            "--wildcard",
            "x",
            "--regex",
            "y",
            "--to",
            "0:1.1.1.2:/b"
        ])
        .is_err()
    );
}

#[test]
fn the_request_is_shaped_like_bk_jobs() {
    let p = plan(&[
        "--from",
        "0:127.0.0.1:/data/app.tgz",
        "--to",
        "0:127.0.0.2:/opt",
        "--name",
        "new.tgz",
        "--owner",
        "app:app",
        "--permission",
        "0640",
        "--no-mkdir",
        "--upload-speed",
        "20",
        "--download-speed",
        "30",
        "--timeout",
        "90",
        "--zone-chain",
        "dc2=0:10.2.0.1,0:10.2.0.2",
        "--pass-through",
        "dc1:dc3",
    ]);
    assert_eq!(
        p.request(),
        json!({
            "tasks": [{
                "source": {"file_name": "app.tgz", "store_dir": "/data", "agent": {"bk_agent_id": "0:127.0.0.1"}, "file_type": 1},
                "target": {"file_name": "new.tgz", "store_dir": "/opt", "owner": "app:app", "permission": 640,
                           "agents": [{"bk_agent_id": "0:127.0.0.2"}]},
            }],
            "timeout_seconds": 90, "auto_mkdir": false, "upload_speed": 20, "download_speed": 30,
            "zone_chain": [{"zone": "dc2", "relays": [{"bk_agent_id": "0:10.2.0.1"}, {"bk_agent_id": "0:10.2.0.2"}]}],
            "pass_through": [{"from_zone": "dc1", "to_zone": "dc3"}],
        })
    );
    let p = plan(&[
        "--from",
        "0:127.0.0.1:/d/",
        "--to",
        "0:127.0.0.2:/opt",
        "--poll",
        "2s",
    ]);
    let body = p.request();
    assert_eq!(body["auto_mkdir"], true);
    assert_eq!(body["tasks"][0]["target"]["file_name"], "");
    assert!(body.get("zone_chain").is_none());
}

#[test]
fn poll_takes_milliseconds_or_a_duration() {
    let ms = |v: &str| {
        parse(&[
            "--from",
            "0:1.1.1.1:/a",
            "--to",
            "0:1.1.1.2:/b",
            "--poll",
            v,
        ])
        .map(|a| a.poll)
    };
    assert_eq!(ms("250").unwrap(), Duration::from_millis(250));
    assert_eq!(ms("2s").unwrap(), Duration::from_secs(2));
    assert!(ms("soon").is_err());
}

#[test]
fn bad_input_names_the_flag_and_what_was_expected() {
    let err = |args: &[&str]| match parse(args) {
        Err(e) => e.to_string(),
        Ok(a) => a.plan().unwrap_err().to_string(),
    };
    let e = err(&["--from", "0:127.0.0.1", "--to", "0:127.0.0.2:/d"]);
    assert!(
        e.contains("--from") && e.contains("AGENT:/absolute/path"),
        "{e}"
    );
    let e = err(&["--from", "0:127.0.0.1:/a", "--to", "0:300.0.0.2:/d"]);
    assert!(e.contains("cloud_id:ipv4"), "{e}");
    let e = err(&["--from", "0:127.0.0.1:/a", "--to", "0:127.0.0.2,:/d"]);
    assert!(e.contains("empty"), "{e}");
    let e = err(&[
        "--from",
        "0:127.0.0.1,0:127.0.0.3:/a",
        "--to",
        "0:127.0.0.2:/d",
    ]);
    assert!(e.contains("exactly one agent"), "{e}");
    let e = err(&["--from", ":/a", "--to", "0:127.0.0.2:/d"]);
    assert!(e.contains("no agent"), "{e}");
    let e = err(&[
        "--from",
        "0:127.0.0.1:/a",
        "--to",
        "0:127.0.0.2:/d",
        "--permission",
        "0899",
    ]);
    assert!(e.contains("octal"), "{e}");
    let e = err(&[
        "--from",
        "0:127.0.0.1:/a",
        "--to",
        "0:127.0.0.2:/d",
        "--zone-chain",
        "dc2",
    ]);
    assert!(e.contains("ZONE=RELAY"), "{e}");
    let e = err(&[
        "--from",
        "0:127.0.0.1:/a",
        "--to",
        "0:127.0.0.2:/d",
        "--pass-through",
        "dc1",
    ]);
    assert!(e.contains("FROM_ZONE:TO_ZONE"), "{e}");
    let e = err(&[
        "--from",
        "0:127.0.0.1:/a/",
        "--to",
        "0:127.0.0.2:/d",
        "--name",
        "x",
    ]);
    assert!(e.contains("--name"), "{e}");
    let e = err(&["--from", "0:127.0.0.1:/a"]);
    assert!(e.contains("--to"), "{e}");
}

fn entry(dest: &str, code: i64, progress: u32, p2p: u64, direct: u64) -> serde_json::Value {
    json!({"error_code": code, "error_msg": if code == 705 { "no such file /data/app.tgz on 0:127.0.0.1" } else { "" },
           "content": {"mode": 1, "source_agent_id": "0:127.0.0.1", "source_file_dir": "/data", "source_file_name": "app.tgz",
                       "dest_agent_id": dest, "dest_file_dir": "/opt", "dest_file_name": "app.tgz",
                       "progress": progress, "speed": 1024, "size": 1000, "bytes_p2p": p2p, "bytes_direct": direct}})
}

#[test]
fn results_group_by_outcome_and_sum_the_byte_split() {
    let mut entries = Entries::default();
    let upload = json!({"error_code": 0, "content": {"mode": 0, "source_agent_id": "0:127.0.0.1", "source_file_dir": "/data",
                                                     "source_file_name": "app.tgz", "size": 1000}});
    entries.update(&json!([
        upload,
        entry("0:127.0.0.2", 115, 40, 300, 100),
        entry("0:127.0.0.3", 0, 100, 900, 100)
    ]));
    assert!(!entries.downloads_done(2));
    entries.update(&json!([
        entry("0:127.0.0.2", 0, 100, 700, 300),
        entry("0:127.0.0.4", 705, 0, 0, 0)
    ]));
    assert!(entries.downloads_done(3));
    assert!(
        !entries.downloads_done(4),
        "a target not yet reported keeps the poll going"
    );
    assert!(!entries.all_succeeded(3));
    assert_eq!(
        entries.byte_split(),
        ByteSplit {
            p2p: 1600,
            direct: 400
        }
    );
    let text = entries.render(3, Duration::from_millis(2500));
    assert!(
        text.starts_with("=== 2 targets (0:127.0.0.2, 0:127.0.0.3): OK\n"),
        "{text}"
    );
    assert!(
        text.contains("=== 1 target (0:127.0.0.4): failed (705 source missing): no such file /data/app.tgz on 0:127.0.0.1\n"),
        "{text}"
    );
    assert!(text.contains("2 of 3 targets OK, 2.0 KiB delivered in 2.5s; from peers (P2P) 1.6 KiB (80.0%), direct 400 B (20.0%)"), "{text}");
}

#[test]
fn every_target_ok_is_success_and_missing_targets_are_named() {
    let mut entries = Entries::default();
    entries.update(&json!([entry("0:127.0.0.2", 0, 100, 0, 1000)]));
    assert!(entries.all_succeeded(1));
    assert!(!entries.all_succeeded(2));
    assert!(
        entries
            .render(2, Duration::ZERO)
            .contains("1 target(s) never reported a result")
    );
}

#[test]
fn targets_that_fell_back_to_direct_are_grouped_by_their_reason() {
    let why = "source 0:127.0.0.1 at 10.0.0.9:20020 unreachable over P2P: connection refused";
    let with_reason = |dest: &str| {
        let mut e = entry(dest, 0, 100, 0, 1000);
        e["content"]["p2p_fallback"] = json!(why);
        e
    };
    let mut entries = Entries::default();
    entries.update(&json!([
        with_reason("0:127.0.0.2"),
        with_reason("0:127.0.0.3"),
        entry("0:127.0.0.4", 0, 100, 1000, 0)
    ]));
    let text = entries.render(3, Duration::ZERO);
    let line = format!(
        "=== 2 targets (0:127.0.0.2, 0:127.0.0.3) fell back to direct through the server: {why}\n"
    );
    assert!(text.contains(&line), "{text}");
    assert_eq!(text.matches("fell back").count(), 1, "{text}");
}
