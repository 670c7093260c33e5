//! Separate OS processes running duropg (the `duropg-node` binary of this
//! crate), driven over stdin/stdout: each prints `ready`, waits for a `go`
//! line, does its role, and reports on stdout. See `src/bin/duropg-node.rs`.

use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a node may take to answer a step.
const STEP_LIMIT: Duration = Duration::from_secs(120);

/// One child process.
pub struct Node {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: JoinHandle<String>,
}

/// What a node printed and how it ended.
#[derive(Debug)]
pub struct NodeReport {
    /// Whether it exited with status 0.
    pub success: bool,
    /// Its stdout lines not yet consumed.
    pub lines: Vec<String>,
    /// Its whole stderr.
    pub stderr: String,
}

impl Node {
    /// Start `binary role` against `url` and `schema`, and wait for `ready`.
    pub async fn spawn(binary: &str, role: &str, url: &str, schema: &str) -> Self {
        let mut child = tokio::process::Command::new(binary)
            .arg(role)
            .env("DUROPG_NODE_URL", url)
            .env("DUROPG_NODE_SCHEMA", schema)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        let mut node = Self {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        };
        node.expect_line("ready").await;
        node
    }

    /// Wait for the next stdout line and check that it starts with `prefix`.
    pub async fn expect_line(&mut self, prefix: &str) -> String {
        match tokio::time::timeout(STEP_LIMIT, self.lines.recv()).await {
            Ok(Some(line)) if line.starts_with(prefix) => line,
            Ok(Some(line)) => panic!("node said {line:?}, expected {prefix:?}"),
            Ok(None) => panic!("node exited before saying {prefix:?}"),
            Err(_) => panic!("node said nothing within {STEP_LIMIT:?} (expected {prefix:?})"),
        }
    }

    /// Send one line on stdin.
    pub async fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to node");
        stdin.flush().await.expect("flush node stdin");
    }

    /// Close stdin (the node's signal to stop) and collect what it printed.
    pub async fn finish(mut self) -> NodeReport {
        drop(self.stdin.take());
        let status = tokio::time::timeout(STEP_LIMIT, self.child.wait())
            .await
            .expect("node exits after stdin closes")
            .expect("wait for node");
        let mut lines = Vec::new();
        while let Some(line) = self.lines.recv().await {
            lines.push(line);
        }
        NodeReport {
            success: status.success(),
            lines,
            stderr: self.stderr.await.unwrap_or_default(),
        }
    }
}
