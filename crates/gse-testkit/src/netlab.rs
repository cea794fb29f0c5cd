//! Hosts on separate network namespaces joined by a bridge, for tests of
//! what an operator deploys: on 127.0.0.x every process reaches every
//! address, so a server that advertises 127.0.0.1 works there by accident.
//!
//! A [`NetLab`] is one "switch" namespace holding a bridge, and one
//! namespace per [`NetHost`] with a veth cable into it, on 10.77.0.0/24 (a
//! NAT'd host sits behind a gateway host, on 10.77.x.0/24 of its own).
//! Nothing is added to the test machine's own network: every address lives
//! inside the lab's namespaces, which are deleted when the lab is dropped
//! (and, should a test process die, by the next lab started on the machine).
//! Processes run in a host with [`NetHost::launcher`] (`ip netns exec`);
//! the test reaches a host's listener through [`NetHost::forward`]. Needs
//! root, `ip` (iproute2) and `nft` (nftables) for NAT.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

/// Prefix of every lab namespace: `gselab-<pid>-<lab>-<host>`.
const PREFIX: &str = "gselab-";

static LABS: AtomicUsize = AtomicUsize::new(0);

/// A set of hosts on one bridge; dropping it deletes their namespaces.
pub struct NetLab {
    name: String,
    switch: String,
    namespaces: Mutex<Vec<String>>,
    cables: AtomicUsize,
}

/// One host of a [`NetLab`]: a network namespace with one address.
#[derive(Clone, Debug)]
pub struct NetHost {
    pub ns: String,
    pub ip: IpAddr,
    /// The namespace and interface of the host's cable end on the bridge
    /// (the gateway's, for a NAT'd host): cut it to cut the host off.
    switch: String,
    port: String,
}

impl NetLab {
    /// A bridge in a fresh switch namespace.
    pub fn new() -> NetLab {
        remove_stale_labs();
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let lab = NetLab {
            switch: format!("{name}-sw"),
            name,
            namespaces: Mutex::new(Vec::new()),
            cables: AtomicUsize::new(0),
        };
        lab.namespace(&lab.switch);
        ip_cmd(&["-n", &lab.switch, "link", "add", "br0", "type", "bridge"]);
        ip_cmd(&["-n", &lab.switch, "link", "set", "br0", "up"]);
        lab
    }

    /// A host at `10.77.0.<last>` on the bridge.
    pub fn host(&self, name: &str, last: u8) -> NetHost {
        let ns = format!("{}-{name}", self.name);
        self.namespace(&ns);
        let ip = Ipv4Addr::new(10, 77, 0, last);
        let port = self.cable(&ns, "eth0", ip);
        ip_in(&ns, &["route", "add", "default", "dev", "eth0"]);
        NetHost {
            ns,
            ip: ip.into(),
            switch: self.switch.clone(),
            port,
        }
    }

    /// A host at `10.77.<subnet>.2` behind a gateway at `10.77.0.<gateway>`
    /// that masquerades it: its peers see the gateway's address (K7).
    pub fn natted_host(&self, name: &str, gateway: u8, subnet: u8) -> NetHost {
        let gw = self.host(&format!("{name}-gw"), gateway);
        let ns = format!("{}-{name}", self.name);
        self.namespace(&ns);
        let inside = Ipv4Addr::new(10, 77, subnet, 2);
        let outside = Ipv4Addr::new(10, 77, subnet, 1);
        ip_cmd(&[
            "-n", &gw.ns, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ]);
        ip_in(
            &gw.ns,
            &["addr", "add", &format!("{outside}/24"), "dev", "lan0"],
        );
        ip_in(&gw.ns, &["link", "set", "lan0", "up"]);
        ip_in(
            &ns,
            &["addr", "add", &format!("{inside}/24"), "dev", "eth0"],
        );
        ip_in(&ns, &["link", "set", "eth0", "up"]);
        ip_in(
            &ns,
            &["route", "add", "default", "via", &outside.to_string()],
        );
        run(Command::new("ip").args([
            "netns",
            "exec",
            &gw.ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]));
        let rules = "table ip nat {\n chain post {\n  type nat hook postrouting priority srcnat;\n  oifname \"eth0\" masquerade\n }\n}\n";
        let file = std::env::temp_dir().join(format!("{}-nat.nft", gw.ns));
        std::fs::write(&file, rules).expect("write the nft rules");
        run(Command::new("ip")
            .args(["netns", "exec", &gw.ns, "nft", "-f"])
            .arg(&file));
        let _ = std::fs::remove_file(file);
        NetHost {
            ns,
            ip: inside.into(),
            switch: gw.switch,
            port: gw.port,
        }
    }

    fn namespace(&self, ns: &str) {
        ip_cmd(&["netns", "add", ns]);
        self.namespaces.lock().unwrap().push(ns.to_string());
        ip_in(ns, &["link", "set", "lo", "up"]);
    }

    /// A host at `10.77.<area>.<last>` on the isolated network of `area`
    /// (a bridge of its own, made on first use): it reaches that network
    /// only, as a host of a cloud area reaches its proxy and not the
    /// servers.
    pub fn area_host(&self, name: &str, area: u8, last: u8) -> NetHost {
        let ns = format!("{}-{name}", self.name);
        self.namespace(&ns);
        let ip = Ipv4Addr::new(10, 77, area, last);
        let port = self.cable_on(&self.area_bridge(area), &ns, "eth0", ip);
        NetHost {
            ns,
            ip: ip.into(),
            switch: self.switch.clone(),
            port,
        }
    }

    /// Gives `host` a second cable, `eth1` at `10.77.<area>.<last>`, into
    /// the isolated network of `area` (a proxy's host: on the servers'
    /// network and its area's, forwarding nothing between them). Returns
    /// the address there.
    pub fn join_area(&self, host: &NetHost, area: u8, last: u8) -> IpAddr {
        let ip = Ipv4Addr::new(10, 77, area, last);
        self.cable_on(&self.area_bridge(area), &host.ns, "eth1", ip);
        ip.into()
    }

    /// The bridge of `area`'s network, made on first use.
    fn area_bridge(&self, area: u8) -> String {
        let bridge = format!("br{area}");
        let exists = Command::new("ip")
            .args(["-n", &self.switch, "link", "show", &bridge])
            .output()
            .is_ok_and(|o| o.status.success());
        if !exists {
            ip_cmd(&["-n", &self.switch, "link", "add", &bridge, "type", "bridge"]);
            ip_cmd(&["-n", &self.switch, "link", "set", &bridge, "up"]);
        }
        bridge
    }

    /// A veth pair from the bridge into `ns` (named `dev` there, holding
    /// `ip`/24); returns the bridge end's name.
    fn cable(&self, ns: &str, dev: &str, ip: Ipv4Addr) -> String {
        self.cable_on("br0", ns, dev, ip)
    }

    /// [`Self::cable`] on `bridge`.
    fn cable_on(&self, bridge: &str, ns: &str, dev: &str, ip: Ipv4Addr) -> String {
        let port = format!("p{}", self.cables.fetch_add(1, Ordering::Relaxed));
        ip_cmd(&[
            "-n",
            &self.switch,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            dev,
            "netns",
            ns,
        ]);
        ip_cmd(&["-n", &self.switch, "link", "set", &port, "master", bridge]);
        ip_cmd(&["-n", &self.switch, "link", "set", &port, "up"]);
        ip_in(ns, &["addr", "add", &format!("{ip}/24"), "dev", dev]);
        ip_in(ns, &["link", "set", dev, "up"]);
        port
    }
}

impl Default for NetLab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        let namespaces =
            std::mem::take(&mut *self.namespaces.lock().unwrap_or_else(|e| e.into_inner()));
        for ns in namespaces.into_iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

impl NetHost {
    /// The command prefix that runs a program in this host.
    pub fn launcher(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.ns].map(String::from).to_vec()
    }

    /// Pulls this host's cable: its links go silent, no process is told.
    pub fn cut(&self) {
        ip_cmd(&["-n", &self.switch, "link", "set", &self.port, "down"]);
    }

    /// Plugs the cable back in.
    pub fn restore(&self) {
        ip_cmd(&["-n", &self.switch, "link", "set", &self.port, "up"]);
    }

    /// A TCP connection to `addr` made from inside this host.
    pub fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        // A socket belongs to the network namespace of the thread that
        // creates it; a short-lived thread enters the host's namespace for
        // the connect only (setns changes only the calling thread).
        let path = format!("/var/run/netns/{}", self.ns);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path)?;
                setns(ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            })
            .join()
            .expect("connect thread")
        })
    }

    /// A loopback address of the test's own namespace that leads to `addr`
    /// as dialed from inside this host (the API of a server in the lab).
    pub fn forward(&self, addr: SocketAddr) -> Forward {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a forwarder");
        let local = listener.local_addr().expect("forwarder address");
        let stop = Arc::new(AtomicBool::new(false));
        let host = self.clone();
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                match host.connect(addr) {
                    Ok(upstream) => {
                        std::thread::spawn(move || splice(conn, upstream));
                    }
                    Err(e) => eprintln!("forwarder: cannot reach {addr} in {}: {e}", host.ns),
                }
            }
        });
        Forward { addr: local, stop }
    }
}

/// A running forwarder; stops accepting when dropped.
pub struct Forward {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies both ways until either side closes.
fn splice(a: TcpStream, b: TcpStream) {
    let (Ok(mut a2), Ok(mut b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut a2, &mut b2);
        let _ = b2.shutdown(Shutdown::Write);
    });
    let (mut a, mut b) = (a, b);
    let _ = io::copy(&mut b, &mut a);
    let _ = a.shutdown(Shutdown::Write);
    let _ = up.join();
}

/// Deletes namespaces left by lab processes that no longer run.
fn remove_stale_labs() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let ns = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = ns
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip_in(ns: &str, args: &[&str]) {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip_cmd(&all);
}

fn ip_cmd(args: &[&str]) {
    run(Command::new("ip").args(args));
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (is iproute2/nftables installed?): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}
