//! The MySQL backend over TLS, against a MariaDB server this test makes and starts itself
//! (`lucky_tests::servers::MariaDb`: mariadb-install-db, mariadbd as the `mysql` user on
//! 127.0.0.1:24306, its data in a temporary folder, `require_secure_transport=ON`), serving a
//! certificate from a CA made by the test (`test_certs`, openssl). Trusted CA: locks work,
//! from the library and from `lucky exec` (a plain connection is refused, so they went over
//! TLS; the pool's connections are on TCP, not the server's Unix socket); another CA, the
//! system's roots, or a name the certificate does not carry: a clear error. Skips when root,
//! mariadbd or openssl are missing, unless `LUCKY_REQUIRE_SERVERS=1`.
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the report

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lucky::mysql::Mysql;
use lucky::ErrorKind;
use lucky_tests::servers::{test_certs, MariaDb};

const PORT: u16 = 24306;

/// A TLS-only MariaDB server (`require_secure_transport=ON`), killed and its folder removed
/// when dropped.
fn server() -> Option<MariaDb> {
    let certs = test_certs("lucky-mytls-certs")?;
    let server = MariaDb::start(PORT, Some(&certs));
    let _ = std::fs::remove_dir_all(&certs);
    server
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
    let Some(server) = server() else {
        return;
    };
    let url = server.url();
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
