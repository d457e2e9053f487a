//! The chaos harness's network: one namespace per server node and per client process, each
//! with one veth link to a bridge in a namespace of its own. Addresses come from
//! [`NET`] only and nothing is routed anywhere else: no namespace has a default route and the
//! bridge has no uplink ([`Topology::check_isolated`] refuses to run otherwise). Faults are
//! nftables rules inside the namespaces (partitions, one-way cuts, random loss).

use std::io;
use std::net::Ipv4Addr;
use std::process::{Command, Output};

/// Every address the harness uses is in this range, inside its own namespaces only.
pub const NET: &str = "10.177.0.0/16";

/// Prefix of every namespace the harness creates, what its clean-up may delete:
/// `LUCKY_CHAOS_PREFIX` (two harnesses at once need two prefixes), else `lkc-`.
pub fn prefix() -> &'static str {
    static P: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    P.get_or_init(|| std::env::var("LUCKY_CHAOS_PREFIX").unwrap_or_else(|_| "lkc-".into()))
}

/// Runs `cmd`, failing with its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

fn ip(args: &[&str]) -> io::Result<Output> {
    run(Command::new("ip").args(args))
}

/// One end host: a server node or a client process, in a namespace of its own.
#[derive(Clone, Debug)]
pub struct Host {
    /// Its namespace (`lkc-n0`, `lkc-c3`).
    pub ns: String,
    /// Its address, in [`NET`].
    pub addr: Ipv4Addr,
}

/// The harness's namespaces; [`Topology::teardown`] (also run on drop) removes them.
#[derive(Debug)]
pub struct Topology {
    /// The namespace holding the bridge.
    pub bridge: String,
    /// Server nodes: `10.177.1.<i+1>`.
    pub nodes: Vec<Host>,
    /// Client processes: `10.177.2.<i+1>`.
    pub clients: Vec<Host>,
}

/// Whether this process may create network namespaces (root, `ip` and `nft` installed):
/// `Err` says what is missing.
pub fn can_build() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("the chaos harness needs root (network namespaces, nftables)".into());
    }
    for tool in ["ip", "nft"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!(
                "`{tool}` is missing: run `bash scripts/services.sh chaos-deps`"
            ));
        }
    }
    let probe = format!("{}probe", prefix());
    let _ = ip(&["netns", "del", &probe]);
    ip(&["netns", "add", &probe]).map_err(|e| format!("cannot create a namespace: {e}"))?;
    let _ = ip(&["netns", "del", &probe]);
    Ok(())
}

/// Removes every namespace the harness may have left (a harness killed before its own
/// clean-up), killing the processes still in them.
pub fn cleanup_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(ns) = line.split_whitespace().next() else {
            continue;
        };
        if ns.starts_with(prefix()) {
            delete_ns(ns);
        }
    }
}

fn delete_ns(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-CONT", pid]).status();
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
}

impl Topology {
    /// Builds `nodes` server namespaces and `clients` client namespaces on one bridge.
    pub fn build(nodes: usize, clients: usize) -> io::Result<Topology> {
        let mut t = Topology {
            bridge: format!("{}br", prefix()),
            nodes: Vec::new(),
            clients: Vec::new(),
        };
        ip(&["netns", "add", &t.bridge])?;
        ip(&["-n", &t.bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &t.bridge, "link", "set", "br0", "up"])?;
        for i in 0..nodes {
            let h = t.host(&format!("n{i}"), Ipv4Addr::new(10, 177, 1, i as u8 + 1))?;
            t.nodes.push(h);
        }
        for i in 0..clients {
            let h = t.host(&format!("c{i}"), Ipv4Addr::new(10, 177, 2, i as u8 + 1))?;
            t.clients.push(h);
        }
        t.check_isolated().map_err(io::Error::other)?;
        Ok(t)
    }

    fn host(&mut self, short: &str, addr: Ipv4Addr) -> io::Result<Host> {
        let ns = format!("{}{short}", prefix());
        let peer = format!("b-{short}");
        ip(&["netns", "add", &ns])?;
        ip(&[
            "-n",
            &self.bridge,
            "link",
            "add",
            &peer,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ])?;
        ip(&[
            "-n",
            &self.bridge,
            "link",
            "set",
            &peer,
            "master",
            "br0",
            "up",
        ])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/16"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(Host { ns, addr })
    }

    /// Every namespace of the harness routes only [`NET`], with no default route, and the
    /// bridge namespace holds only the bridge and the hosts' links.
    pub fn check_isolated(&self) -> Result<(), String> {
        for h in self.nodes.iter().chain(&self.clients) {
            let out = ip(&["-n", &h.ns, "-4", "route", "show"]).map_err(|e| e.to_string())?;
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if !line.starts_with("10.177.0.0/16 ") {
                    return Err(format!(
                        "namespace {} routes more than {NET}: `{line}`; refusing to run",
                        h.ns
                    ));
                }
            }
        }
        let out = ip(&["-n", &self.bridge, "-o", "link", "show"]).map_err(|e| e.to_string())?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split(':').nth(1).unwrap_or("").trim();
            let name = name.split('@').next().unwrap_or(name);
            if !(name == "lo" || name == "br0" || name.starts_with("b-")) {
                return Err(format!(
                    "the bridge namespace has a link `{name}` the harness did not make; refusing to run"
                ));
            }
        }
        Ok(())
    }

    /// A command run inside `host`'s namespace.
    pub fn exec(host: &Host, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &host.ns, program]);
        c
    }

    /// Replaces `host`'s fault rules with `rules` (nft rule bodies for its `input` and
    /// `output` chains: `("input", "ip saddr 10.177.2.1 drop")`). Empty: heals the host.
    pub fn set_rules(host: &Host, rules: &[(&str, String)]) -> io::Result<()> {
        let mut script = String::from(
            "table inet chaos\ndelete table inet chaos\ntable inet chaos {\n\
             chain input { type filter hook input priority 0; policy accept;\n",
        );
        for (_, r) in rules.iter().filter(|(c, _)| *c == "input") {
            script.push_str(r);
            script.push('\n');
        }
        script.push_str("}\nchain output { type filter hook output priority 0; policy accept;\n");
        for (_, r) in rules.iter().filter(|(c, _)| *c == "output") {
            script.push_str(r);
            script.push('\n');
        }
        script.push_str("}\n}\n");
        let path = std::env::temp_dir().join(format!("{}.nft", host.ns));
        std::fs::write(&path, script)?;
        run(Command::new("ip").args([
            "netns",
            "exec",
            &host.ns,
            "nft",
            "-f",
            path.to_str().unwrap_or_default(),
        ]))?;
        Ok(())
    }

    /// Removes every namespace of this topology, killing what still runs in them.
    pub fn teardown(&mut self) {
        for h in self.nodes.drain(..).chain(self.clients.drain(..)) {
            delete_ns(&h.ns);
        }
        if !self.bridge.is_empty() {
            delete_ns(&self.bridge);
            self.bridge.clear();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.teardown();
    }
}
