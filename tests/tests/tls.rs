//! TLS: `rediss://` for the Redis adapter and `https://` (`etcds://` in the CLI) for etcd,
//! against real servers with certificates for 127.0.0.1. The Redis adapter over TLS against a real `redis-server --tls-port`, with a CA
//! made for the test (openssl). The server's certificate is verified: against an unknown CA the
//! connection fails with a clear error; trusted through `SSL_CERT_FILE`, locks work.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests unwrap and run processes

use std::process::Command;
use std::time::Duration;

use lucky::redis::Redis;
use lucky_tests::servers::{test_certs, RedisProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_verifies_the_server_and_locks_over_tls() {
    let Some(dir) = test_certs("lucky-tls") else {
        return;
    };
    let file = |n: &str| dir.join(n).display().to_string();
    let port = 7_161;
    let (cert, key, ca) = (file("server.pem"), file("server.key"), file("ca.pem"));
    let args = [
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ];
    let Some(_server) = RedisProcess::start_with(port, &args) else {
        return;
    };
    let url = format!("rediss://127.0.0.1:{port}");
    // Trusting only another CA: refused, and said so.
    std::env::set_var("SSL_CERT_FILE", file("other.pem"));
    let e = Redis::builder([&url])
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    // Trusted: locks work, fenced.
    std::env::set_var("SSL_CERT_FILE", &ca);
    let locks = Redis::connect([&url]).await.unwrap();
    let g = locks.lock("tls-lock").await.unwrap();
    assert!(g.fence().is_some());
    let other = locks.lock("tls-lock").no_wait().await.unwrap_err();
    assert!(other.is_taken(), "{other}");
    g.release().await.unwrap();
    std::env::remove_var("SSL_CERT_FILE");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_verifies_the_server_and_locks() {
    let Some(dir) = test_certs("lucky-etcd-tls") else {
        return;
    };
    let file = |n: &str| dir.join(n).display().to_string();
    let tls = [file("server.pem"), file("server.key"), file("ca.pem")];
    let Some(server) = lucky_tests::servers::EtcdProcess::start_tls(23_796, Some(tls)) else {
        return;
    };
    let pem = |n: &str| lucky::etcd::Certificate::from_pem(std::fs::read(file(n)).unwrap());
    let tls = |ca: &str| lucky::etcd::TlsOptions::new().ca_certificate(pem(ca));
    // Trusting another CA: refused with a clear error.
    let e = lucky::etcd::Etcd::builder([server.endpoint()])
        .tls(tls("other.pem"))
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    // Trusting the right CA: locks work.
    let etcd = lucky::etcd::Etcd::builder([server.endpoint()])
        .tls(tls("ca.pem"))
        .connect()
        .await
        .unwrap();
    let g = etcd.lock("tls-lock").await.unwrap();
    assert!(g.fence().is_some());
    assert!(etcd
        .lock("tls-lock")
        .no_wait()
        .await
        .unwrap_err()
        .is_taken());
    g.release().await.unwrap();
    // And the command line: etcds:// with the CA.
    {
        let lucky = std::path::PathBuf::from(env!("CARGO_BIN_EXE_lucky-under-test"));
        let backend = format!(
            "etcds://127.0.0.1:{}?cacert={}",
            server.port,
            file("ca.pem")
        );
        let out = Command::new(lucky)
            .args([
                "exec",
                "--backend",
                &backend,
                "--name",
                "tls-cli",
                "--",
                "true",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
