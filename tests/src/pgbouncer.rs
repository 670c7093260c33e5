//! A throwaway PgBouncer in transaction-pooling mode in front of the test
//! server, started from Debian's `pgbouncer` binary on a free port, as the
//! throwaway clusters are. One per test process: it is started on first use
//! and stops when the test process exits (a watchdog shell waits for it).

use crate::cluster::{as_server_user, free_port, give_to_server_user};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running PgBouncer.
#[derive(Debug)]
pub struct PgBouncer {
    port: u16,
    dir: PathBuf,
    /// The watchdog shell (it ends with the test process, not before).
    _watchdog: Mutex<std::process::Child>,
}

/// Where the `pgbouncer` binary is.
fn binary() -> PathBuf {
    for candidate in ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    let on_path = Command::new("pgbouncer").arg("--version").output().is_ok();
    assert!(
        on_path,
        "PgBouncer is needed for the pooler tests and was not found; install it: apt-get install pgbouncer \
         (macOS: brew install pgbouncer)"
    );
    PathBuf::from("pgbouncer")
}

impl PgBouncer {
    /// The process-wide PgBouncer in transaction mode in front of the
    /// server at `DATABASE_URL`'s host and port (127.0.0.1:5432 by default).
    pub fn shared() -> &'static PgBouncer {
        static SHARED: OnceLock<PgBouncer> = OnceLock::new();
        SHARED.get_or_init(|| PgBouncer::start("127.0.0.1", upstream_port(), "transaction"))
    }

    /// Start one in `pool_mode` in front of `host:port`; waits until it accepts.
    pub fn start(host: &str, port: u16, pool_mode: &str) -> PgBouncer {
        let listen = free_port();
        let dir = std::env::temp_dir().join(format!("duropg-pgbouncer-{}-{listen}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create pgbouncer dir");
        let userlist = dir.join("userlist.txt");
        std::fs::write(&userlist, "\"postgres\" \"\"\n").expect("write userlist");
        let ini = dir.join("pgbouncer.ini");
        let config = format!(
            "[databases]\n* = host={host} port={port}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {listen}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {userlist}\npool_mode = {pool_mode}\n\
             max_client_conn = 500\ndefault_pool_size = 40\nmax_db_connections = 80\n\
             logfile = {log}\npidfile = {pid}\nadmin_users = postgres\n",
            userlist = userlist.display(),
            log = dir.join("pgbouncer.log").display(),
            pid = dir.join("pgbouncer.pid").display(),
        );
        std::fs::write(&ini, config).expect("write pgbouncer.ini");
        for f in [&dir, &userlist, &ini] {
            give_to_server_user(f);
        }
        // PgBouncer will not run as root; the watchdog stops it when this
        // test process is gone (checked through /proc: the shell runs as the
        // server user, which may not signal a root process).
        let script = format!(
            "{bin} {ini} & child=$!; while [ -d /proc/{me} ] && kill -0 $child 2>/dev/null; do sleep 1; done; kill $child 2>/dev/null",
            bin = binary().display(),
            ini = ini.display(),
            me = std::process::id(),
        );
        let watchdog = as_server_user(Path::new("sh"), &["-c", &script])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start pgbouncer: {e}"));
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", listen)).is_err() {
            if started.elapsed() > Duration::from_secs(20) {
                let log = std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default();
                panic!("pgbouncer did not listen on 127.0.0.1:{listen} within 20 s; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        PgBouncer {
            port: listen,
            dir,
            _watchdog: Mutex::new(watchdog),
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string through it to database `postgres`, without the
    /// `pgbouncer=true` flag (add it, or call the builder's `pgbouncer`).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

/// The test server's port, from `DATABASE_URL` (5432 when it names none).
fn upstream_port() -> u16 {
    let url = crate::database_url();
    let config: tokio_postgres::Config = url.parse().expect("DATABASE_URL parses");
    config.get_ports().first().copied().unwrap_or(5432)
}
