//! The PostgreSQL backend over TLS, against a PostgreSQL cluster this test makes and starts
//! itself (`lucky_tests::servers::PgCluster`: initdb as the `postgres` user, port 25432, only
//! `hostssl` connections accepted), serving a certificate from a CA made by the test
//! (`test_certs`, openssl). Trusted CA: locks work (a plain connection would be refused, so
//! they went over TLS); another CA: a clear error.
//! Skips when root, initdb or openssl are missing, unless `LUCKY_REQUIRE_SERVERS=1`.
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the report

use std::time::Duration;

use lucky::postgres::Postgres;
use lucky::ErrorKind;
use lucky_tests::servers::{test_certs, PgCluster};

const PORT: u16 = 25432;

/// A TLS-only cluster (`hostssl` only), stopped and removed when dropped.
fn cluster() -> Option<PgCluster> {
    let certs = test_certs("lucky-pgtls-certs")?;
    let cluster = PgCluster::start(PORT, Some(&certs));
    let _ = std::fs::remove_dir_all(&certs);
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_over_tls_verified_against_the_ca() {
    let Some(cluster) = cluster() else {
        return;
    };
    let url = cluster.url();
    let ca = cluster.cert("ca.pem");
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
        .ca_file(cluster.cert("other.pem"))
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
