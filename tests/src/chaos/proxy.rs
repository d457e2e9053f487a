//! The harness's own fault-injecting TCP proxy (`chaos proxy`), run inside a server's
//! namespace in front of it: every chunk read from either side is delivered after the
//! current delay plus a random jitter, in order, and not at all while the link is stalled
//! (the bytes wait, as in a stalled TCP stream, then flow). The settings come from a control
//! file, `<delay_ms> <jitter_ms> <stalled 0|1>`, read every 20 ms, so the harness changes
//! them while connections stay up.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The link's settings, as the control file last said.
#[derive(Debug, Default)]
struct Link {
    delay_ms: AtomicU64,
    jitter_ms: AtomicU64,
    stalled: AtomicBool,
}

/// Parses the control file's text: `None` when it is not three numbers.
pub fn parse(text: &str) -> Option<(u64, u64, bool)> {
    let mut it = text.split_whitespace().map(|s| s.parse::<u64>().ok());
    let (d, j, s) = (it.next()??, it.next()??, it.next()??);
    Some((d, j, s != 0))
}

/// Writes the control file whole (then renames it): the proxy never reads half of it.
pub fn set(control: &std::path::Path, delay_ms: u64, jitter_ms: u64, stalled: bool) {
    let tmp = control.with_extension("tmp");
    let _ = std::fs::write(&tmp, format!("{delay_ms} {jitter_ms} {}\n", stalled as u8));
    let _ = std::fs::rename(&tmp, control);
}

/// Proxies `listen` to `to` until the process is killed.
pub async fn run(listen: &str, to: &str, control: PathBuf, seed: u64) -> std::io::Result<()> {
    let link = Arc::new(Link::default());
    let watcher = link.clone();
    tokio::spawn(async move {
        loop {
            if let Some((d, j, s)) = std::fs::read_to_string(&control)
                .ok()
                .and_then(|t| parse(&t))
            {
                watcher.delay_ms.store(d, Ordering::Relaxed);
                watcher.jitter_ms.store(j, Ordering::Relaxed);
                watcher.stalled.store(s, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let listener = TcpListener::bind(listen).await?;
    let mut n = 0u64;
    loop {
        let (client, _) = listener.accept().await?;
        let to = to.to_owned();
        let link = link.clone();
        n += 1;
        let seed = seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&to).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::join!(
                pump(cr, sw, link.clone(), seed),
                pump(sr, cw, link, seed.rotate_left(17))
            );
        });
    }
}

/// One direction: read, stamp a delivery time, deliver in order.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: Arc<Link>,
    seed: u64,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let delay_link = link.clone();
    let reader = async move {
        let mut rng = lucky_sim::rng::Rng::new(seed);
        let mut last = tokio::time::Instant::now();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let d = delay_link.delay_ms.load(Ordering::Relaxed);
            let j = delay_link.jitter_ms.load(Ordering::Relaxed);
            let at = tokio::time::Instant::now() + Duration::from_millis(d + rng.range(0, j));
            // In order: never before the chunk read earlier.
            last = last.max(at);
            if tx.send((last, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            while link.stalled.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_files_parse() {
        assert_eq!(parse("100 20 0\n"), Some((100, 20, false)));
        assert_eq!(parse("0 0 1"), Some((0, 0, true)));
        assert_eq!(parse("100 x 0"), None);
        assert_eq!(parse(""), None);
    }

    #[tokio::test]
    #[allow(clippy::disallowed_methods)] // measures the delay it injects
    async fn delays_and_stalls_what_it_forwards() {
        let dir = std::env::temp_dir().join(format!("lucky-proxy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let control = dir.join("link");
        set(&control, 150, 0, false);
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 64];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        // A free port for the proxy.
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = probe.local_addr().unwrap().to_string();
        drop(probe);
        let l = listen.clone();
        let c = control.clone();
        tokio::spawn(async move { run(&l, &echo_addr, c, 1).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut s = TcpStream::connect(&listen).await.unwrap();
        let t = std::time::Instant::now();
        s.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        // Both ways delayed 150 ms.
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(&b, b"ping");
        set(&control, 0, 0, true);
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(b"pong").await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut b)).await;
        assert!(r.is_err(), "nothing passes a stalled link");
        set(&control, 0, 0, false);
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut b))
            .await
            .expect("the stalled bytes flow once the stall ends")
            .unwrap();
        assert_eq!(&b, b"pong");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
