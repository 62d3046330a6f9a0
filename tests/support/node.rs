//! Real BullMQ from npm (`tests/node/`, installed by `scripts/test`), driven
//! through `tests/node/bullmq.js`: Workers that report each job as a JSON
//! line, and one-shot Queue commands.

use std::{path::PathBuf, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

/// The test package's directory.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node")
}

fn command(major: u8, args: &[&str]) -> Command {
    assert!(
        dir().join("node_modules/bullmq6").exists() && dir().join("node_modules/bullmq5").exists(),
        "the Node test packages are missing: run scripts/test, or `npm ci --prefix tests/node`"
    );
    let mut c = Command::new("node");
    c.current_dir(dir())
        .arg("bullmq.js")
        .arg(major.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    c
}

/// Each of `texts` as Node decodes bytes into a string (what the backend's
/// body parser does to a request body before `JSON.parse`).
pub async fn utf8_decode(texts: &[&[u8]]) -> Vec<String> {
    let hex: Vec<String> = texts
        .iter()
        .map(|t| t.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let script = "for (const h of require('fs').readFileSync(0, 'utf8').split('\\n')) \
                  console.log(JSON.stringify(Buffer.from(h, 'hex').toString('utf8')))";
    json_lines(&node_with_input(&["-e", script], hex.join("\n").as_bytes()).await)
}

/// How the backend's Express 4 and 5 route each of `paths` (sent as is)
/// when they mount the two webhook routes with default settings:
/// `[express4, express5]`, each `"workflow"`, `"outreach"` or `None`.
pub async fn express_routes(paths: &[&str]) -> Vec<[Option<String>; 2]> {
    #[derive(serde::Deserialize)]
    struct Routed {
        express4: Option<String>,
        express5: Option<String>,
    }
    let out = node_with_input(&["express-routes.js"], paths.join("\n").as_bytes()).await;
    json_lines::<Routed>(&out)
        .into_iter()
        .map(|r| [r.express4, r.express5])
        .collect()
}

/// Each of `tokens` as the backend reads a session JWT: verified by
/// jsonwebtoken (HS256 with `secret`, `leeway_secs` of clock tolerance),
/// the caller taken as `userId || sub` and `orgId`: `Ok((user, org))`, or
/// `Err(why)`.
pub async fn jsonwebtoken(
    secret: &str,
    leeway_secs: u64,
    tokens: &[String],
) -> Vec<Result<(String, String), String>> {
    #[derive(serde::Deserialize)]
    struct Read {
        user: Option<String>,
        org: Option<String>,
        refused: Option<String>,
    }
    let leeway = leeway_secs.to_string();
    let out = node_with_input(
        &["jsonwebtoken.js", secret, &leeway],
        tokens.join("\n").as_bytes(),
    )
    .await;
    json_lines::<Read>(&out)
        .into_iter()
        .map(|r| match (r.user, r.org) {
            (Some(user), Some(org)) => Ok((user, org)),
            _ => Err(r.refused.unwrap_or_default()),
        })
        .collect()
}

/// One JSON value per line of `out`.
fn json_lines<T: serde::de::DeserializeOwned>(out: &[u8]) -> Vec<T> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// Runs `node ARGS` in the test package's directory with `input` on its
/// stdin; its stdout, once it exits successfully within 30 s.
async fn node_with_input(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("node")
        .current_dir(dir())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, input)
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("node {args:?} hung"))
        .unwrap();
    assert!(out.status.success(), "node {args:?} failed");
    out.stdout
}

/// `data` compressed by Node's `zlib.brotliCompressSync` (a Node client's
/// `Content-Encoding: br` body).
pub async fn brotli(data: &[u8]) -> Vec<u8> {
    let script =
        "process.stdout.write(require('zlib').brotliCompressSync(require('fs').readFileSync(0)))";
    node_with_input(&["-e", script], data).await
}

/// The verdicts of `tests/node/body-parser.js` on `cases` (its input lines):
/// `{"ok":true}` or `{"ok":false,"why":…}`, one per case.
pub async fn body_parser_verdicts(cases: &str) -> Vec<serde_json::Value> {
    assert!(
        dir().join("node_modules/body-parser1").exists(),
        "the Node test packages are missing: run scripts/test, or `npm ci --prefix tests/node`"
    );
    json_lines(&node_with_input(&["body-parser.js"], cases.as_bytes()).await)
}

/// Runs one Queue command to its end; its JSON answer.
pub async fn queue(major: u8, args: &[&str]) -> serde_json::Value {
    let out = tokio::time::timeout(Duration::from_secs(30), command(major, args).output())
        .await
        .expect("node queue command hung")
        .unwrap();
    assert!(out.status.success(), "node {args:?} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("node {args:?} said {text:?}: {e}"))
}

/// A running BullMQ Worker; its lines in order.
pub struct Worker {
    _child: Child,
    lines: mpsc::UnboundedReceiver<serde_json::Value>,
}

impl Worker {
    /// Starts a Worker of `major` on `queue` and waits until it is
    /// connected.
    pub async fn start(major: u8, redis_url: &str, queue: &str, extra: &[&str]) -> Self {
        let mut args = vec!["worker", redis_url, queue];
        args.extend_from_slice(extra);
        let mut child = command(major, &args).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                match serde_json::from_str(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                    Err(_) => eprintln!("worker: {line}"),
                }
            }
        });
        let mut w = Self {
            _child: child,
            lines,
        };
        w.next("ready", Duration::from_secs(30)).await;
        w
    }

    /// Starts a Worker as [`Worker::start`] does and waits until it is idle:
    /// blocked in `BZPOPMIN` on the queue's marker (seen in `CLIENT LIST`),
    /// where only a marker or its drain timeout wakes it.
    pub async fn start_idle(
        major: u8,
        redis: &fred::clients::Client,
        redis_url: &str,
        queue: &str,
        extra: &[&str],
    ) -> Self {
        use fred::prelude::*;
        let w = Self::start(major, redis_url, queue, extra).await;
        let blocked = super::eventually(Duration::from_secs(30), || async {
            let list: String = redis
                .client_list::<String, String>(None, None)
                .await
                .unwrap_or_default();
            list.contains("cmd=bzpopmin")
        })
        .await;
        assert!(blocked, "the worker never waited for a marker");
        w
    }

    /// The next line whose `event` is `event`, skipping others; panics
    /// after `within`.
    pub async fn next(&mut self, event: &str, within: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no {event:?} from the worker within {within:?}"))
                .expect("the worker exited");
            if line["event"] == "error" {
                panic!("worker error: {line}");
            }
            if line["event"] == event {
                return line;
            }
        }
    }

    /// The next line whose `event` is `event` within `within`, or `None`.
    pub async fn next_within(
        &mut self,
        event: &str,
        within: Duration,
    ) -> Option<serde_json::Value> {
        tokio::time::timeout(within, self.next(event, within + Duration::from_secs(1)))
            .await
            .ok()
    }

    /// Every line that arrives within `within` (for "nothing happens").
    pub async fn lines_within(&mut self, within: Duration) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        while let Ok(Some(line)) = tokio::time::timeout_at(deadline, self.lines.recv()).await {
            out.push(line);
        }
        out
    }
}
