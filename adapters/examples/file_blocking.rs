//! Lock files from plain threads: four threads take turns on one lock file, each blocking in
//! its own call (a single-threaded runtime per thread runs the acquisition; no shared async
//! runtime). Under the lock each checks that its fence is above every fence written before
//! (what a fenced store would check) and counts its turns.
//!
//! Run: `cargo run -p lucky --features file --example file_blocking`
#![allow(clippy::disallowed_methods)] // a driver owns the clock

use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

fn main() -> Result<(), lucky::Error> {
    let dir = std::env::temp_dir().join(format!("lucky-file-example-{}", std::process::id()));
    let highest = Arc::new(Mutex::new(0u64));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (dir, highest) = (dir.clone(), highest.clone());
            thread::spawn(move || -> Result<u32, lucky::Error> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .map_err(|e| lucky::Error::Random(e.to_string()))?;
                let files = rt.block_on(lucky::file::Files::open(&dir))?;
                let mut turns = 0;
                for _ in 0..5 {
                    let guard = rt.block_on(
                        files
                            .lock("report")
                            .wait(Duration::from_secs(10))
                            .into_future(),
                    )?;
                    let fence = guard.fence().map_or(0, |f| f.get());
                    {
                        let mut h = highest.lock().expect("not poisoned");
                        assert!(fence > *h, "thread {t}: fence {fence} not above {}", *h);
                        *h = fence;
                    }
                    thread::sleep(Duration::from_millis(5));
                    rt.block_on(guard.release())?;
                    turns += 1;
                }
                Ok(turns)
            })
        })
        .collect();
    for (t, h) in threads.into_iter().enumerate() {
        let turns = h.join().expect("thread panicked")?;
        println!("thread {t}: {turns} turns");
    }
    println!(
        "highest fence {}, lock files in {}",
        highest.lock().expect("not poisoned"),
        dir.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
