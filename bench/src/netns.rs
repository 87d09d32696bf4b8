//! Network namespaces for runs across several nodes (`stoa-bench relay`).
//!
//! The harness moves into a namespace of its own, the *hub* ([`isolate`]); each node then gets
//! a namespace of its own ([`NodeNet`]), joined to the hub by a veth pair. The addresses are in
//! 10.77.0.0/16 and exist only inside these namespaces: the hub holds [`HUB`] on its `lo` (the
//! harness's clients and Redis use it) and 10.77.N.1 on its end of node N's link; node N holds
//! 10.77.N.2 with its default route through the hub, which forwards between nodes, so a
//! node-to-node packet crosses two veth links and the hub's forwarding, as it would cross a
//! switch. The hub has no interface but `lo` and those links: nothing leaves the machine.
//!
//! A node's namespace is held by a `sleep` started under `unshare -n` (bounded by the run);
//! processes enter it with `nsenter -t PID -n`, which execs them, so their process id is their
//! own. The namespace and its veth pair vanish when the holder is killed and they exit.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The hub's address, on its `lo`.
pub const HUB: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The first two octets of every address in these namespaces.
const PREFIX: [u8; 2] = [10, 77];
/// Longest wait for a holder to be in its own namespace.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Set once this process made the hub: from then on, 10.77.0.0/16 is this run's own.
static MADE: AtomicBool = AtomicBool::new(false);

/// Why the namespaces could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    /// A namespace, link or address could not be made (needs root or CAP_SYS_ADMIN and
    /// CAP_NET_ADMIN, and `ip`, `unshare`, `nsenter` from iproute2 and util-linux).
    #[error("network namespace: {0}")]
    Setup(String),
}

/// Whether the harness may send to or bind `ip`: loopback, or an address of the namespaces
/// this process made (once [`isolate`] succeeded).
pub fn reachable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || (MADE.load(Ordering::Relaxed) && v4.octets()[..2] == PREFIX)
        }
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// Move the calling thread into a new network namespace, the hub: `lo` up with 127.0.0.1 and
/// [`HUB`], forwarding on. Call it before any thread is started: threads started earlier stay
/// in the old namespace; threads and processes started later by this thread inherit the hub.
pub fn isolate() -> Result<(), NetnsError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| NetnsError::Setup(format!("unshare(CLONE_NEWNET): {e} (run as root)")))?;
    ip(None, &["link", "set", "lo", "up"])?;
    ip(None, &["addr", "add", &format!("{HUB}/32"), "dev", "lo"])?;
    // This thread's namespace: /proc/sys/net is the opener's.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| NetnsError::Setup(format!("enable forwarding in the hub: {e}")))?;
    MADE.store(true, Ordering::Relaxed);
    Ok(())
}

/// One node's network namespace, linked to the hub; removed when dropped.
#[derive(Debug)]
pub struct NodeNet {
    holder: Child,
    /// Its number N (1 to 200): its address is 10.77.N.2.
    pub index: u8,
    /// Its address.
    pub address: Ipv4Addr,
}

impl NodeNet {
    /// Make node `index`'s namespace (from the hub: call [`isolate`] first, on this thread),
    /// held at most `lifetime`.
    pub fn create(index: u8, lifetime: Duration) -> Result<NodeNet, NetnsError> {
        if !(1..=200).contains(&index) {
            return Err(NetnsError::Setup(format!(
                "node index {index} not in 1-200"
            )));
        }
        if !MADE.load(Ordering::Relaxed) {
            return Err(NetnsError::Setup("make the hub first (isolate)".into()));
        }
        let holder = Command::new("unshare")
            .args(["-n", "sleep"])
            .arg(lifetime.as_secs().max(1).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| NetnsError::Setup(format!("unshare -n: {e}")))?;
        let net = NodeNet {
            index,
            address: Ipv4Addr::new(PREFIX[0], PREFIX[1], index, 2),
            holder,
        };
        net.wait_own_namespace()?;
        let pid = net.holder.id().to_string();
        let (hub_dev, hub_ip) = (
            format!("sr{index}"),
            Ipv4Addr::new(PREFIX[0], PREFIX[1], index, 1),
        );
        ip(
            None,
            &[
                "link", "add", &hub_dev, "type", "veth", "peer", "name", "eth0", "netns", &pid,
            ],
        )?;
        ip(
            None,
            &["addr", "add", &format!("{hub_ip}/24"), "dev", &hub_dev],
        )?;
        ip(None, &["link", "set", &hub_dev, "up"])?;
        let inside = Some(pid.as_str());
        ip(inside, &["link", "set", "lo", "up"])?;
        ip(
            inside,
            &["addr", "add", &format!("{}/24", net.address), "dev", "eth0"],
        )?;
        ip(inside, &["link", "set", "eth0", "up"])?;
        ip(
            inside,
            &["route", "add", "default", "via", &hub_ip.to_string()],
        )?;
        Ok(net)
    }

    /// `program` to be run inside this namespace (through `nsenter`, which execs it).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.holder.id().to_string(), "-n", "--"])
            .arg(program);
        c
    }

    /// A setup step that moves the thread it runs on into this namespace (`setns(2)`; the
    /// thread's later sockets are the namespace's).
    pub fn enter(&self) -> impl FnOnce() -> std::io::Result<()> + Send + 'static {
        let path = format!("/proc/{}/ns/net", self.holder.id());
        move || {
            let ns = std::fs::File::open(&path)?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        }
    }

    /// Wait (bounded) until the holder has left the hub's namespace.
    fn wait_own_namespace(&self) -> Result<(), NetnsError> {
        let ours = std::fs::read_link("/proc/thread-self/ns/net")
            .map_err(|e| NetnsError::Setup(format!("read this thread's namespace: {e}")))?;
        // The harness owns a clock: this bounds a real wait.
        #[allow(clippy::disallowed_methods)]
        let deadline = Instant::now() + SETUP_TIMEOUT;
        loop {
            let theirs = std::fs::read_link(format!("/proc/{}/ns/net", self.holder.id()));
            if let Ok(t) = theirs
                && t != ours
            {
                return Ok(());
            }
            #[allow(clippy::disallowed_methods)]
            if Instant::now() > deadline {
                return Err(NetnsError::Setup(
                    "unshare -n did not make a namespace within 5 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for NodeNet {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// `ip args`, in the hub or (with `inside`, a holder's pid) in that namespace.
fn ip(inside: Option<&str>, args: &[&str]) -> Result<(), NetnsError> {
    let mut command = match inside {
        Some(pid) => {
            let mut c = Command::new("nsenter");
            c.args(["-t", pid, "-n", "--", "ip"]);
            c
        }
        None => Command::new("ip"),
    };
    let out = command
        .args(args)
        .output()
        .map_err(|e| NetnsError::Setup(format!("ip {}: {e}", args.join(" "))))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Setup(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_reachable_before_the_hub_exists() {
        assert!(reachable(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(reachable(
            "::1".parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
        ));
        assert!(!reachable(IpAddr::V4(Ipv4Addr::new(10, 77, 1, 2))));
        assert!(!reachable(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
    }
}
