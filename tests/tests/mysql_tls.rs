//! The MySQL backend over TLS, against a MariaDB server this test makes and starts itself
//! (mariadb-install-db, mariadbd as the `mysql` user on 127.0.0.1:53306, its data in a temporary
//! folder, `require_secure_transport=ON`), serving a certificate from a CA made by the test
//! (`test_certs`, openssl). Trusted CA: locks work, from the library and from `lucky exec` (a
//! plain connection is refused, so they went over TLS; the pool's connections are on TCP, not
//! the server's Unix socket); another CA, the system's roots, or a name the certificate does
//! not carry: a clear error. Skips when root, mariadbd or openssl are missing, unless
//! `LUCKY_REQUIRE_SERVERS=1`.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests unwrap, wait for the server

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lucky::mysql::Mysql;
use lucky::ErrorKind;
use lucky_tests::servers::{required, test_certs};

const PORT: u16 = 53306;

fn run(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The server binary of the installed MariaDB (MySQL's name as a fallback).
fn mariadbd() -> Option<&'static str> {
    ["/usr/sbin/mariadbd", "/usr/sbin/mysqld"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// A TLS-only MariaDB server, killed and its folder removed when dropped.
struct Server {
    dir: PathBuf,
    child: Child,
}

impl Server {
    fn start() -> Option<Server> {
        let certs = test_certs("lucky-mytls-certs")?;
        let dir = std::env::temp_dir().join(format!("lucky-mytls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        for f in ["ca.pem", "other.pem", "server.pem", "server.key"] {
            std::fs::copy(certs.join(f), dir.join("certs").join(f)).unwrap();
        }
        let _ = std::fs::remove_dir_all(&certs);
        // The server runs as `mysql` and writes its data, socket and log under the folder.
        let small = "--innodb-log-file-size=8M";
        let ok = mariadbd().is_some()
            && run(Command::new("chown").args(["-R", "mysql"]).arg(&dir))
            && run(Command::new("chmod")
                .arg("600")
                .arg(dir.join("certs/server.key")))
            && run(Command::new("mariadb-install-db")
                .arg("--no-defaults")
                .arg(format!("--datadir={}", dir.join("data").display()))
                .args([
                    "--user=mysql",
                    "--auth-root-authentication-method=normal",
                    small,
                ]));
        if !ok {
            assert!(
                !required(),
                "cannot make a TLS MariaDB server (root, mariadbd and mariadb-install-db needed)"
            );
            eprintln!("skipping: cannot make a TLS MariaDB server");
            let _ = std::fs::remove_dir_all(&dir);
            return None;
        }
        let d = |f: &str| dir.join(f).display().to_string();
        let child = Command::new(mariadbd().unwrap())
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d("data")))
            .arg(format!("--socket={}", d("mysqld.sock")))
            .arg(format!("--pid-file={}", d("mysqld.pid")))
            .arg(format!("--log-error={}", d("error.log")))
            .arg(format!("--ssl-cert={}", d("certs/server.pem")))
            .arg(format!("--ssl-key={}", d("certs/server.key")))
            .arg(format!("--ssl-ca={}", d("certs/ca.pem")))
            .args(["--user=mysql", "--bind-address=127.0.0.1"])
            .arg(format!("--port={PORT}"))
            .args(["--require-secure-transport=ON", "--skip-log-bin", small])
            .args(["--innodb-buffer-pool-size=16M", "--performance-schema=OFF"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut server = Server { dir, child };
        // Ready when it accepts connections; a server that exited (the port taken?) is a
        // failure, with its log.
        for _ in 0..300 {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "mariadbd exited ({status}): {}",
                    std::fs::read_to_string(server.dir.join("error.log")).unwrap_or_default()
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", PORT)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("mariadbd did not listen on {PORT} within 30 s");
    }

    fn cert(&self, name: &str) -> PathBuf {
        self.dir.join("certs").join(name)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Forwards connections on an address of its own (127.0.0.2, which the server's certificate
/// does not name) to the server; returns that address.
async fn forwarder() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind(("127.0.0.2", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", PORT)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

/// How the server sees its other clients' connections (`127.0.0.1:port` over TCP, which it
/// takes with TLS only; `localhost` over its Unix socket), asked over a TLS connection of the
/// test's own.
async fn client_hosts(url: &str, ca: &Path) -> Vec<String> {
    use mysql_async::prelude::Queryable;
    let ssl = mysql_async::SslOpts::default().with_root_certs(vec![ca.to_path_buf().into()]);
    let opts = mysql_async::OptsBuilder::from_opts(mysql_async::Opts::from_url(url).unwrap())
        .prefer_socket(false)
        .ssl_opts(ssl);
    let mut c = mysql_async::Conn::new(opts).await.unwrap();
    let hosts = c
        .query(
            "SELECT HOST FROM information_schema.PROCESSLIST \
             WHERE ID <> CONNECTION_ID() AND USER = 'root'",
        )
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    hosts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_over_tls_verified_against_the_ca() {
    let Some(server) = Server::start() else {
        return;
    };
    let url = format!("mysql://root@127.0.0.1:{PORT}/test");
    let ca = server.cert("ca.pem");
    // The server takes TLS only: a lock taken at all went over TLS.
    let my = Mysql::builder(&url).ca_file(&ca).connect().await.unwrap();
    let g = my.lock("job").ttl(Duration::from_secs(5)).await.unwrap();
    assert!(my.lock("job").no_wait().await.unwrap_err().is_taken());
    // Its pooled connections are on TCP, so on TLS (not the server's Unix socket, where the
    // server would not ask for it).
    let hosts = client_hosts(&url, &ca).await;
    assert!(
        !hosts.is_empty() && hosts.iter().all(|h| h.contains(':')),
        "{hosts:?}"
    );
    g.release().await.unwrap();
    let g = my.lock("job").no_wait().await.unwrap();
    g.release().await.unwrap();
    // Plain text is refused by the server; another CA is refused by us.
    let e = Mysql::connect(&url).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    let e = Mysql::builder(&url)
        .ca_file(server.cert("other.pem"))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    // The system's roots do not know the test CA either.
    let e = Mysql::connect(&format!("{url}?require_ssl=true"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    // The right CA, but a name the server's certificate does not carry.
    let other_name = forwarder().await;
    let e = Mysql::builder(&format!("mysql://root@{other_name}/test"))
        .ca_file(&ca)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    assert!(e.to_string().contains("not valid for name"), "{e}");
    // A missing CA file, or asking not to verify, is the caller's mistake; the password
    // stays out of the message.
    let e = Mysql::builder(&format!("mysql://root:s3cret@127.0.0.1:{PORT}/test"))
        .ca_file("/nonexistent/ca.pem")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage, "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    let e = Mysql::connect(&format!("{url}?require_ssl=true&verify_ca=false"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage, "{e}");
    // A wrong password over TLS: refused by the server, and not repeated.
    let e = Mysql::builder(&format!("mysql://root:s3cret@127.0.0.1:{PORT}/test"))
        .ca_file(&ca)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    // The command line: `?cacert=` in the backend URL.
    let lucky = env!("CARGO_BIN_EXE_lucky-under-test");
    let exec = |cacert: &Path| {
        Command::new(lucky)
            .args(["exec", "--backend"])
            .arg(format!("{url}?cacert={}", cacert.display()))
            .args(["--name", "cli-job", "--no-wait", "--", "true"])
            .output()
            .unwrap()
    };
    let out = exec(&ca);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = exec(&server.cert("other.pem"));
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    drop(server);
}
