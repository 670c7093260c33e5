//! Throwaway PostgreSQL clusters: for tests that restart the server, kill its
//! backends, change its authentication or turn TLS on — so a shared server is
//! never disturbed — and for machines where PostgreSQL is installed but not
//! running (see [`database_url`](super::database_url)).
//!
//! A [`Cluster`] is made by `initdb` in a temp dir, started by `pg_ctl` on a
//! free loopback port, and stopped and deleted when dropped. When the tests
//! run as root (CI does) the server runs as the `postgres` OS user, because
//! PostgreSQL refuses to run as root. Binaries come from `DUROPG_PG_BINDIR`,
//! or the newest `/usr/lib/postgresql/<version>/bin`, or Homebrew's
//! `postgresql@16`, or `PATH`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// How a throwaway cluster is set up.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// `pg_hba.conf` lines placed before the default `trust` lines (first match wins).
    pub hba_first: Vec<String>,
    /// Server certificate and key: turns `ssl = on`.
    pub tls: Option<ServerCert>,
    /// Extra `postgresql.conf` lines.
    pub conf: Vec<String>,
}

/// A server certificate and key (PEM files) for a cluster.
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// Certificate chain file.
    pub cert: PathBuf,
    /// Private key file.
    pub key: PathBuf,
}

/// A running throwaway cluster. Stopped (immediate mode) and deleted on drop.
#[derive(Debug)]
pub struct Cluster {
    layout: Layout,
}

/// Where a cluster lives; cloned into the blocking set-up thread (the
/// [`Cluster`] itself deletes everything when dropped).
#[derive(Debug, Clone)]
struct Layout {
    dir: PathBuf,
    port: u16,
    bindir: PathBuf,
}

static CLUSTER_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Cluster {
    /// initdb and start a cluster with default options (trust auth, no TLS).
    pub async fn start() -> Self {
        Self::start_with(ClusterOptions::default()).await
    }

    /// initdb and start a cluster set up per `options`. Panics, saying what
    /// is missing, when the PostgreSQL server binaries cannot be found or fail.
    pub async fn start_with(options: ClusterOptions) -> Self {
        let bindir = bindir().unwrap_or_else(|missing| panic!("{missing}"));
        tokio::task::spawn_blocking(move || Self::start_blocking(bindir, &options))
            .await
            .expect("cluster setup thread")
    }

    /// The synchronous start: initdb, configure, `pg_ctl start`.
    fn start_blocking(bindir: PathBuf, options: &ClusterOptions) -> Self {
        let cluster = Self {
            layout: Layout {
                dir: fresh_dir("pg"),
                port: free_port(),
                bindir,
            },
        };
        cluster.layout.init(options);
        run_ctl(
            cluster.layout.ctl(&["start", "-w", "-t", "60"]),
            &cluster.layout,
            &["start"],
        );
        cluster
    }

    /// Start a cluster with default options that lives as long as this
    /// process: a small watcher process stops and deletes it once this
    /// process has exited. `Err` names the install command when no server
    /// binaries are installed.
    pub fn start_for_process() -> Result<Self, String> {
        let cluster = Self::start_blocking(bindir()?, &ClusterOptions::default());
        cluster.stop_when_process_exits();
        Ok(cluster)
    }

    fn stop_when_process_exits(&self) {
        let stop = self.layout.ctl(&["stop", "-m", "immediate", "-w"]);
        let mut words: Vec<String> = vec![stop.get_program().to_string_lossy().into_owned()];
        words.extend(stop.get_args().map(|a| a.to_string_lossy().into_owned()));
        let quoted: Vec<String> = words
            .iter()
            .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
            .collect();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; cd /; {stop} >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            stop = quoted.join(" "),
            dir = path_str(&self.layout.dir),
        );
        let spawned = Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Err(e) = spawned {
            eprintln!("duropg: cannot start the watcher that stops the throwaway cluster at exit: {e}");
        }
    }

    /// The directory holding the server binaries this cluster runs.
    pub fn bindir(&self) -> &Path {
        &self.layout.bindir
    }

    /// A `postgres` superuser URL for this cluster (trust auth).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.layout.port)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.layout.port
    }

    /// The cluster's directory (owned by the server's OS user).
    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    /// Restart with a fast shutdown: the server terminates every session
    /// (SQLSTATE 57P01), checkpoints, and comes back on the same port.
    pub async fn restart_fast(&self) {
        self.ctl(&["restart", "-m", "fast", "-w", "-t", "60"]).await;
    }

    /// Restart after an immediate shutdown: the server stops without a
    /// checkpoint, as in a crash, and recovers by replaying its WAL.
    pub async fn restart_crash(&self) {
        self.ctl(&["restart", "-m", "immediate", "-w", "-t", "60"]).await;
    }

    /// A streaming-replication standby of `primary` (`pg_basebackup -R`),
    /// started on a port of its own, reporting as `application_name`
    /// (name it in the primary's `synchronous_standby_names` to make every
    /// commit wait for it).
    pub async fn standby_of(primary: &Cluster, application_name: &str) -> Self {
        let standby = Self {
            layout: Layout {
                dir: fresh_dir("pg"),
                port: free_port(),
                bindir: primary.layout.bindir.clone(),
            },
        };
        let (layout, primary_port, name) = (standby.layout.clone(), primary.port(), application_name.to_string());
        tokio::task::spawn_blocking(move || layout.init_standby(primary_port, &name))
            .await
            .expect("standby setup thread");
        standby.ctl(&["start", "-w", "-t", "60"]).await;
        standby
    }

    /// Stop at once, without a checkpoint — a crash of the primary.
    pub async fn stop_immediate(&self) {
        self.ctl(&["stop", "-m", "immediate", "-w"]).await;
    }

    /// Promote a standby to primary, waiting until it accepts writes.
    pub async fn promote(&self) {
        self.ctl(&["promote", "-w", "-t", "60"]).await;
    }

    /// A superuser connection (panics if the cluster does not answer).
    pub async fn admin(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("throwaway cluster on port {} does not answer: {e}", self.layout.port));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    async fn ctl(&self, args: &[&str]) {
        let cmd = self.layout.ctl(args);
        let (layout, args) = (
            self.layout.clone(),
            args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        );
        // pg_ctl waits for the server: keep that off the async runtime's threads.
        tokio::task::spawn_blocking(move || run_ctl(cmd, &layout, &args))
            .await
            .expect("pg_ctl thread");
    }
}

/// Run a `pg_ctl` command; panic with the server log if it fails.
fn run_ctl<S: std::fmt::Debug>(mut cmd: Command, layout: &Layout, args: &[S]) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run pg_ctl: {e}"));
    if !out.status.success() {
        let log = std::fs::read_to_string(layout.dir.join("server.log")).unwrap_or_default();
        panic!(
            "pg_ctl {args:?} failed ({}): {}\nserver log:\n{log}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Layout {
    /// `pg_ctl -D data -l log args…`, as the server user, run in the
    /// cluster's directory (the server inherits pg_ctl's working directory;
    /// the caller's may not be readable by the server user).
    fn ctl(&self, args: &[&str]) -> Command {
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        let mut full: Vec<String> = vec!["-D".into(), path_str(&data), "-l".into(), path_str(&log)];
        full.extend(args.iter().map(|s| s.to_string()));
        let mut cmd = as_server_user(&self.bindir.join("pg_ctl"), &full);
        cmd.current_dir(&self.dir);
        cmd
    }

    /// Synchronous part of start-up: directory, initdb, configuration.
    fn init(&self, options: &ClusterOptions) {
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).expect("create cluster dir");
        give_to_server_user(&self.dir);
        let data = self.dir.join("data");
        let initdb = [
            "-D",
            &path_str(&data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ];
        run_checked(
            as_server_user(&self.bindir.join("initdb"), &initdb).current_dir(&self.dir),
            "initdb",
        );
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("port = {}", self.port),
            format!("unix_socket_directories = '{}'", path_str(&self.dir)),
            // A test cluster: durability across an OS crash is not needed,
            // a clean shutdown still checkpoints everything.
            "fsync = off".to_string(),
            "max_connections = 200".to_string(),
        ];
        if let Some(tls) = &options.tls {
            conf.extend(self.install_cert(tls));
        }
        conf.extend(options.conf.iter().cloned());
        append(&data.join("postgresql.conf"), &conf.join("\n"));
        if !options.hba_first.is_empty() {
            let hba = data.join("pg_hba.conf");
            let old = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
            let new = format!("{}\n{old}", options.hba_first.join("\n"));
            std::fs::write(&hba, new).expect("write pg_hba.conf");
        }
    }

    /// Synchronous part of a standby's start-up: a base backup of the
    /// primary with recovery settings (`-R`), then its own port and socket.
    fn init_standby(&self, primary_port: u16, application_name: &str) {
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).expect("create standby dir");
        give_to_server_user(&self.dir);
        let data = self.dir.join("data");
        let port = primary_port.to_string();
        let args = [
            "-D",
            &path_str(&data),
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            "--no-sync",
        ];
        run_checked(
            as_server_user(&self.bindir.join("pg_basebackup"), &args).current_dir(&self.dir),
            "pg_basebackup",
        );
        let conf = [
            format!("port = {}", self.port),
            format!("unix_socket_directories = '{}'", path_str(&self.dir)),
            format!(
                "primary_conninfo = 'host=127.0.0.1 port={primary_port} user=postgres application_name={application_name}'"
            ),
        ];
        append(&data.join("postgresql.auto.conf"), &conf.join("\n"));
    }

    /// Copy the certificate and key where the server user owns them (the
    /// server refuses a key others can read).
    fn install_cert(&self, tls: &ServerCert) -> Vec<String> {
        let (cert, key) = (self.dir.join("server.crt"), self.dir.join("server.key"));
        std::fs::copy(&tls.cert, &cert).expect("copy server cert");
        std::fs::copy(&tls.key, &key).expect("copy server key");
        for f in [&cert, &key] {
            give_to_server_user(f);
        }
        set_mode(&key, 0o600);
        vec![
            "ssl = on".to_string(),
            format!("ssl_cert_file = '{}'", path_str(&cert)),
            format!("ssl_key_file = '{}'", path_str(&key)),
        ]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .layout
            .ctl(&["-m", "immediate", "-w", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.layout.dir);
    }
}

/// A fresh, unique temp dir path (not created) for `what`. Short: a Unix
/// socket path must stay under 108 bytes.
pub fn fresh_dir(what: &str) -> PathBuf {
    let n = CLUSTER_COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("duropg-{what}-{}-{n}", std::process::id()))
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// What to run when no PostgreSQL server binaries are installed.
pub const INSTALL_HINT: &str = "install PostgreSQL: `sudo apt-get install postgresql` (Debian/Ubuntu) or \
`brew install postgresql@16` (macOS); or set DUROPG_PG_BINDIR to the directory holding initdb and pg_ctl";

/// Where the PostgreSQL server binaries are: `DUROPG_PG_BINDIR`, the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian/Ubuntu), Homebrew's
/// `postgresql@16`, or `PATH`. `Err` says how to install them.
pub fn bindir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("DUROPG_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    for brew in [
        "/opt/homebrew/opt/postgresql@16/bin",
        "/usr/local/opt/postgresql@16/bin",
    ] {
        if Path::new(brew).join("initdb").exists() {
            return Ok(PathBuf::from(brew));
        }
    }
    if Command::new("initdb").arg("--version").output().is_ok() {
        return Ok(PathBuf::new());
    }
    Err(format!(
        "the PostgreSQL server binaries (initdb, pg_ctl) were not found in /usr/lib/postgresql/*/bin, \
         Homebrew's postgresql@16 or on PATH; {INSTALL_HINT}"
    ))
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// `program args…`, as the `postgres` OS user when running as root.
pub fn as_server_user<S: AsRef<std::ffi::OsStr>>(program: &Path, args: &[S]) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

/// Hand `path` to the `postgres` OS user when running as root.
pub fn give_to_server_user(path: &Path) {
    if running_as_root() {
        run_checked(
            Command::new("chown").args(["postgres:postgres", &path_str(path)]),
            "chown",
        );
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).expect("open conf");
    writeln!(f, "\n{text}").expect("append conf");
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Run a command; panic with its output if it fails.
pub fn run_checked(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
