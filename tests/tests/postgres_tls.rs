//! The PostgreSQL backend over TLS, against a PostgreSQL cluster this test makes and starts
//! itself (initdb as the `postgres` user, port 55432, only `hostssl` connections accepted),
//! serving a certificate from a CA made by the test (`test_certs`, openssl). Trusted CA: locks work (a
//! plain connection would be refused, so they went over TLS); another CA: a clear error.
//! Skips when root, initdb or openssl are missing, unless `LUCKY_REQUIRE_SERVERS=1`.
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the report

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use lucky::postgres::Postgres;
use lucky::ErrorKind;
use lucky_tests::servers::{required, test_certs};

const BIN: &str = "/usr/lib/postgresql/15/bin";
const PORT: u16 = 55432;

fn run(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A TLS-only cluster, stopped and removed when dropped.
struct Cluster {
    dir: PathBuf,
}

impl Cluster {
    fn start() -> Option<Cluster> {
        let certs = test_certs("lucky-pgtls-certs")?;
        let dir = std::env::temp_dir().join(format!("lucky-pgtls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        for f in ["ca.pem", "other.pem", "server.pem", "server.key"] {
            std::fs::copy(certs.join(f), dir.join("certs").join(f)).unwrap();
        }
        let _ = std::fs::remove_dir_all(&certs);
        // The server reads its key as `postgres`, and only from a file no one else can read.
        let ok = Path::new(BIN).join("initdb").exists()
            && run(Command::new("chown").args(["-R", "postgres"]).arg(&dir))
            && run(Command::new("chmod")
                .arg("600")
                .arg(dir.join("certs/server.key")))
            && run(Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(Path::new(BIN).join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "-D"])
                .arg(dir.join("data")));
        if !ok {
            assert!(
                !required(),
                "cannot make a TLS PostgreSQL cluster (root and initdb needed)"
            );
            eprintln!("skipping: cannot make a TLS PostgreSQL cluster");
            let _ = std::fs::remove_dir_all(&dir);
            return None;
        }
        let d = dir.display();
        let conf = format!(
            "ssl=on\nssl_cert_file='{d}/certs/server.pem'\nssl_key_file='{d}/certs/server.key'\n\
             port={PORT}\nlisten_addresses='127.0.0.1'\nunix_socket_directories='{d}'\n"
        );
        let mut pc = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("data/postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut pc, conf.as_bytes()).unwrap();
        std::fs::write(
            dir.join("data/pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        let started = run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(Path::new(BIN).join("pg_ctl"))
            .args(["-w", "-l"])
            .arg(dir.join("log"))
            .arg("-D")
            .arg(dir.join("data"))
            .arg("start"));
        assert!(started, "the TLS cluster did not start (see {d}/log)");
        Some(Cluster { dir })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(Path::new(BIN).join("pg_ctl"))
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop"));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_over_tls_verified_against_the_ca() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let url = format!("postgres://postgres@127.0.0.1:{PORT}/postgres");
    let ca = cluster.dir.join("certs/ca.pem");
    // The server takes TLS only: a lock taken at all went over TLS.
    let pg = Postgres::builder(&url)
        .ca_file(&ca)
        .connect()
        .await
        .unwrap();
    let g = pg.lock("job").ttl(Duration::from_secs(5)).await.unwrap();
    assert!(pg.lock("job").no_wait().await.unwrap_err().is_taken());
    g.release().await.unwrap();
    // Plain text is refused by the server; another CA is refused by us.
    let e = Postgres::connect(&url).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    let e = Postgres::builder(&url)
        .ca_file(cluster.dir.join("certs/other.pem"))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    // The system's roots do not know the test CA either.
    let e = Postgres::connect(&format!("{url}?sslmode=require"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    // A missing CA file is the caller's mistake.
    let e = Postgres::builder(&url)
        .ca_file("/nonexistent/ca.pem")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage, "{e}");
    drop(cluster);
}
