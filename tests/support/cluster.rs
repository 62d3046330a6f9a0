//! A Redis Cluster on free ports: three primaries, each with `replicas`
//! replicas, every node a real `redis-server --cluster-enabled yes` process,
//! joined by `redis-cli --cluster create`.

use std::{
    net::TcpListener as StdListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::eventually;

/// One node: its port, directory and process.
struct Node {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    tls: Option<Tls>,
}

/// A TLS cluster's files: the nodes' certificate and key, and their CA.
#[derive(Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl Tls {
    /// redis-cli's flags for it.
    fn flags(&self) -> Vec<String> {
        vec![
            "--tls".into(),
            "--cacert".into(),
            self.ca.display().to_string(),
        ]
    }
}

pub struct Cluster {
    nodes: Vec<Node>,
    tls: Option<Tls>,
}

/// A port whose cluster bus port (port + 10000) is free too.
fn cluster_port() -> u16 {
    for _ in 0..1000 {
        let Ok(l) = StdListener::bind("127.0.0.1:0") else {
            continue;
        };
        let port = l.local_addr().unwrap().port();
        if port < 55_535 && StdListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

pub fn cli(port: u16, args: &[&str]) -> String {
    cli_with(None, port, args)
}

fn cli_with(tls: Option<&Tls>, port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(tls.map(Tls::flags).unwrap_or_default())
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Node {
    fn cli(&self, args: &[&str]) -> String {
        cli_with(self.tls.as_ref(), self.port, args)
    }

    fn start(tls: Option<&Tls>) -> Self {
        for _ in 0..20 {
            let port = cluster_port();
            let dir = std::env::temp_dir()
                .join(format!("tether-test-cluster-{}-{port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let mut node = Self {
                port,
                dir,
                child: None,
                tls: tls.cloned(),
            };
            if node.spawn() {
                return node;
            }
        }
        panic!("could not start a cluster node");
    }

    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let listen: Vec<&str> = match &self.tls {
            None => vec!["--port", &port],
            Some(tls) => vec![
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-cluster",
                "yes",
                "--tls-replication",
                "yes",
                "--tls-auth-clients",
                "no",
                "--tls-cert-file",
                tls.cert.to_str().unwrap(),
                "--tls-key-file",
                tls.key.to_str().unwrap(),
                "--tls-ca-cert-file",
                tls.ca.to_str().unwrap(),
            ],
        };
        let child = Command::new("redis-server")
            .args(&listen)
            .args(["--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "1000"])
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", self.dir.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.child = Some(child);
        for _ in 0..500 {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            if self.cli(&["PING"]) == "PONG" {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        false
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Cluster {
    /// Starts 3 × (1 + `replicas`) nodes, creates the cluster and waits until
    /// every node says `cluster_state:ok` and every replica is in sync.
    pub async fn start(replicas: usize) -> Self {
        Self::start_with(replicas, None).await
    }

    /// [`Cluster::start`], every port (clients, bus, replication) speaking
    /// TLS with `tls`'s files when given.
    pub async fn start_with(replicas: usize, tls: Option<Tls>) -> Self {
        let nodes: Vec<Node> = (0..3 * (1 + replicas))
            .map(|_| Node::start(tls.as_ref()))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(tls.as_ref().map(Tls::flags).unwrap_or_default())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = Self { nodes, tls };
        let ready = eventually(Duration::from_secs(30), || async {
            c.nodes.iter().all(|n| {
                n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
                    && n.cli(&["CLUSTER", "NODES"]).lines().count() == c.nodes.len()
            }) && c.primaries().len() == 3
                && c.nodes.iter().all(|n| {
                    let info = n.cli(&["INFO", "replication"]);
                    info.contains("role:master") || info.contains("master_link_status:up")
                })
        })
        .await;
        assert!(ready, "the cluster never became ready");
        c
    }

    /// `redis-cluster://` naming every node as a seed.
    pub fn url(&self) -> String {
        self.url_as("redis-cluster", "127.0.0.1")
    }

    fn alive(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
    }

    /// The primaries as a live node sees them: (port, slot ranges).
    fn primary_slots(&self) -> Vec<(u16, Vec<(u16, u16)>)> {
        let Some(seen_by) = self.alive().next() else {
            return Vec::new();
        };
        self.cli(seen_by, &["CLUSTER", "NODES"])
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = fields.get(2)?;
                if !flags.contains("master") || flags.contains("fail") {
                    return None;
                }
                let port: u16 = fields
                    .get(1)?
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                let ranges: Vec<(u16, u16)> = fields
                    .iter()
                    .skip(8)
                    .filter_map(|r| match r.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => r.parse().ok().map(|s| (s, s)),
                    })
                    .collect();
                (!ranges.is_empty()).then_some((port, ranges))
            })
            .collect()
    }

    /// Runs one command with redis-cli on the node at `port` (`-c` in
    /// `args` follows redirects).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        cli_with(self.tls.as_ref(), port, args)
    }

    /// The URL with `host` for the nodes' address and `scheme`.
    pub fn url_as(&self, scheme: &str, host: &str) -> String {
        let mut url = format!("{scheme}://{host}:{}", self.nodes[0].port);
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node={host}:{}", n.port));
        }
        url
    }

    /// Ports of the primaries now serving slots.
    pub fn primaries(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.primary_slots().into_iter().map(|(p, _)| p).collect();
        ports.sort_unstable();
        ports
    }

    /// Port of the primary serving `key`'s slot now.
    pub fn primary_of(&self, key: &str) -> u16 {
        let slot = fred::util::redis_keyslot(key.as_bytes());
        self.primary_slots()
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map_or(0, |(p, _)| p)
    }

    /// Starts the node on `port` again (after [`Cluster::kill`]), with its
    /// directory and so its cluster configuration: it rejoins the cluster.
    pub fn restart(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("no node on that port");
        assert!(node.child.is_none(), "kill it first");
        assert!(node.spawn(), "the node did not start again");
    }

    /// SIGKILL of the node on `port`.
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port) {
            n.kill();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
            let _ = std::fs::remove_dir_all(&n.dir);
        }
    }
}
