//! Throwaway PostgreSQL clusters for tests that restart the server, kill its
//! backends, change its authentication or turn TLS on — so the shared server
//! every other test uses is never disturbed.
//!
//! A [`Cluster`] is made by `initdb` in a temp dir, started by `pg_ctl` on a
//! free loopback port, and stopped and deleted when dropped. When the tests
//! run as root (CI does) the server runs as the `postgres` OS user, because
//! PostgreSQL refuses to run as root. Binaries come from `DUROPG_PG_BINDIR`,
//! or the newest `/usr/lib/postgresql/<version>/bin`, or `PATH`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
        let n = CLUSTER_COUNTER.fetch_add(1, Ordering::Relaxed);
        // Short path: the Unix socket path must stay under 108 bytes.
        let dir = std::env::temp_dir().join(format!("duropg-pg-{}-{n}", std::process::id()));
        let cluster = Self {
            layout: Layout {
                dir,
                port: free_port(),
                bindir: bindir(),
            },
        };
        let layout = cluster.layout.clone();
        tokio::task::spawn_blocking(move || layout.init(&options))
            .await
            .expect("cluster setup thread");
        cluster.ctl(&["start", "-w", "-t", "60"]).await;
        cluster
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
        let n = CLUSTER_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("duropg-pg-{}-{n}", std::process::id()));
        let standby = Self {
            layout: Layout {
                dir,
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
        let data = self.layout.dir.join("data");
        let log = self.layout.dir.join("server.log");
        let mut full: Vec<String> = vec!["-D".into(), path_str(&data), "-l".into(), path_str(&log)];
        full.extend(args.iter().map(|s| s.to_string()));
        let mut cmd = as_server_user(&self.layout.bindir.join("pg_ctl"), &full);
        // The server inherits pg_ctl's working directory; the test's may not
        // be readable by the server user.
        cmd.current_dir(&self.layout.dir);
        // pg_ctl waits for the server: keep that off the async runtime's threads.
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("pg_ctl thread")
            .unwrap_or_else(|e| panic!("cannot run pg_ctl: {e}"));
        if !out.status.success() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!(
                "pg_ctl {args:?} failed ({}): {}\nserver log:\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Layout {
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
        let data = self.layout.dir.join("data");
        let args = [
            "-D".to_string(),
            path_str(&data),
            "-m".into(),
            "immediate".into(),
            "-w".into(),
            "stop".into(),
        ];
        let _ = as_server_user(&self.layout.bindir.join("pg_ctl"), &args)
            .current_dir(&self.layout.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.layout.dir);
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Where the PostgreSQL server binaries are.
fn bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DUROPG_PG_BINDIR") {
        return PathBuf::from(dir);
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
        return bin;
    }
    let on_path = Command::new("initdb").arg("--version").output().is_ok();
    assert!(
        on_path,
        "the PostgreSQL server binaries (initdb, pg_ctl) are needed for throwaway-cluster tests and were not found \
         in /usr/lib/postgresql/*/bin or on PATH; install them (apt-get install postgresql) or set DUROPG_PG_BINDIR"
    );
    PathBuf::new()
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
pub(crate) fn as_server_user<S: AsRef<std::ffi::OsStr>>(program: &Path, args: &[S]) -> Command {
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

pub(crate) fn give_to_server_user(path: &Path) {
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

/// Test certificates made with the `openssl` CLI at test time (no key is
/// committed): a CA, a server certificate it signed for `localhost` only,
/// and a second CA that signed nothing of the server's.
#[derive(Debug)]
pub struct TestCerts {
    dir: PathBuf,
}

impl TestCerts {
    /// Generate everything in a fresh temp dir (deleted on drop).
    pub fn generate() -> Self {
        let n = CLUSTER_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("duropg-certs-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create certs dir");
        let certs = Self { dir };
        certs.make_ca("ca");
        certs.make_ca("other_ca");
        certs.make_server();
        certs
    }

    fn openssl(&self, args: &[&str]) {
        run_checked(Command::new("openssl").current_dir(&self.dir).args(args), "openssl");
    }

    fn make_ca(&self, name: &str) {
        let (key, crt, subj) = (
            format!("{name}.key"),
            format!("{name}.crt"),
            format!("/CN=duropg test {name}"),
        );
        self.openssl(&[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &crt, "-days", "2", "-subj",
            &subj,
        ]);
    }

    fn make_server(&self) {
        let ext = "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n";
        std::fs::write(self.dir.join("server.ext"), ext).expect("write ext");
        self.openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
    }

    /// The server certificate (SAN `DNS:localhost`, signed by [`TestCerts::ca`]).
    pub fn server(&self) -> ServerCert {
        ServerCert {
            cert: self.dir.join("server.crt"),
            key: self.dir.join("server.key"),
        }
    }

    /// The CA that signed the server certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A CA that did not sign the server certificate.
    pub fn other_ca(&self) -> PathBuf {
        self.dir.join("other_ca.crt")
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Bounded wait for a condition checked every `every`; panics with `what` on timeout.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, every: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(every).await;
    }
}
