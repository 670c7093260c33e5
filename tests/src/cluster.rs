//! Throwaway clusters (duropg's own, [`duropg::testing::cluster`]) and what
//! only these tests need beside them: TLS certificates and bounded waits.

pub use duropg::testing::cluster::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

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
        let dir = fresh_dir("certs");
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
