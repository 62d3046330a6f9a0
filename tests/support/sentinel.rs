//! A Sentinel deployment on free ports: one primary, two replicas and three
//! sentinels (`redis-server --sentinel`), each a real process.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{RedisServer, eventually, free_port, unique_dir};

pub const SERVICE: &str = "tether-primary";

pub struct Sentinels {
    pub primary: RedisServer,
    pub replicas: Vec<RedisServer>,
    pub ports: Vec<u16>,
    dir: PathBuf,
    children: Vec<Child>,
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Sentinels {
    /// Starts the five servers and the three sentinels, and waits until the
    /// sentinels see both replicas and agree on the primary.
    pub async fn start() -> Self {
        let primary = RedisServer::start_durable();
        let replicas: Vec<RedisServer> = (0..2).map(|_| RedisServer::start_durable()).collect();
        for r in &replicas {
            r.cli(&["REPLICAOF", "127.0.0.1", &primary.port.to_string()]);
        }
        let dir = unique_dir("sentinel");
        std::fs::create_dir_all(&dir).unwrap();
        let mut ports = Vec::new();
        let mut children = Vec::new();
        for i in 0..3 {
            let (port, child) = spawn_sentinel(&dir, i, primary.port);
            ports.push(port);
            children.push(child);
        }
        let s = Self {
            primary,
            replicas,
            ports,
            dir,
            children,
        };
        let ready = eventually(Duration::from_secs(30), || async {
            s.ports.iter().all(|p| {
                cli(*p, &["SENTINEL", "replicas", SERVICE])
                    .matches("flags\nslave\n")
                    .count()
                    == 2
                    && cli(*p, &["SENTINEL", "ckquorum", SERVICE]).starts_with("OK")
            }) && s.replicas.iter().all(|r| {
                r.cli(&["INFO", "replication"])
                    .contains("master_link_status:up")
            })
        })
        .await;
        assert!(ready, "the sentinels never saw the deployment");
        s
    }

    /// `redis-sentinel://` naming all three sentinels.
    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName={SERVICE}&node=127.0.0.1:{}&node=127.0.0.1:{}",
            self.ports[0], self.ports[1], self.ports[2]
        )
    }

    /// The port the sentinels name as the primary now.
    pub fn primary_port(&self) -> u16 {
        let addr = cli(
            self.ports[0],
            &["SENTINEL", "get-master-addr-by-name", SERVICE],
        );
        addr.lines()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// The server listening on `port` (the primary or a replica).
    pub fn server(&self, port: u16) -> &RedisServer {
        std::iter::once(&self.primary)
            .chain(&self.replicas)
            .find(|s| s.port == port)
            .expect("no server on that port")
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts sentinel `i` on a free port, trying another when the port was
/// taken before it bound it (it exits then, or another test's server answers
/// there: the sentinel is ready when the process on its port is itself).
fn spawn_sentinel(dir: &std::path::Path, i: usize, primary: u16) -> (u16, Child) {
    for _ in 0..20 {
        let port = free_port();
        let conf = dir.join(format!("sentinel-{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {SERVICE} 1000\n\
                 sentinel failover-timeout {SERVICE} 5000\n\
                 sentinel parallel-syncs {SERVICE} 2\n",
                dir.display(),
            ),
        )
        .unwrap();
        let mut child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        let own = format!("process_id:{}", child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if cli(port, &["INFO", "server"])
                .lines()
                .any(|l| l.trim_end() == own)
            {
                return (port, child);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("could not start a sentinel");
}
