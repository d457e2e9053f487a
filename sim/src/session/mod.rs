//! The session-lock family: PostgreSQL advisory locks and MySQL `GET_LOCK` against the
//! [`SessionServer`] model ([`server`], glue in [`protocol`]), and lock files against the
//! [`FileHost`] model of one host ([`file_host`], glue in [`file_protocol`]); both run the real
//! session-lock machine. [`BACKEND`] registers their scenarios and the machine's bugs (and the
//! file store's).

use crate::scenario::{Backend, Scenario};

pub mod file_host;
pub mod file_protocol;
mod file_scenarios;
pub mod protocol;
mod scenarios;
pub mod server;

pub use file_host::FileHost;
pub use file_protocol::{FileRunner, FileSim};
pub use protocol::{SessionRunner, SessionSim};
pub use server::SessionServer;

/// The session-lock scenarios and the bugs of its machine.
pub const BACKEND: Backend = Backend {
    name: "session",
    scenarios: SCENARIOS,
    bugs: BUGS,
};

/// The deliberate bugs of the session-lock machine (none without the `bugs` feature).
#[cfg(feature = "bugs")]
const BUGS: &[&str] = lucky_core::session::bugs::SessionBug::NAMES;
#[cfg(not(feature = "bugs"))]
const BUGS: &[&str] = &[];

const SCENARIOS: &[Scenario] = &[
    Scenario { name: "sql-session-restart", about: "SQL session locks: the server restarts under holders; locks end with their sessions, holders learn at their next probe: overlap within a ttl expected, fences still rise", draw: scenarios::restart, cost: 1 },
    Scenario { name: "sql-session-reconnected", about: "SQL session locks: the server restarts and drivers reconnect silently (JDBC autoReconnect, a pooler handing out another backend): the changed session is noticed at the next answer", draw: scenarios::reconnected, cost: 1 },
    Scenario { name: "sql-session-partitioned", about: "SQL session locks: holders cut off from the server: it ends their idle sessions after the ttl, after they stopped trusting them: no overlap", draw: scenarios::partitioned, cost: 1 },
    Scenario { name: "my-get-lock-server-stopped", about: "MySQL GET_LOCK (and advisory) mode: the server stopped past the ttl: unanswered probes end the holders' trust, the resumed server frees dropped sessions' locks: no overlap", draw: scenarios::server_stopped, cost: 1 },
    Scenario { name: "file-handoff", about: "file: contention with short holds and processes paused past the ttl (the OS keeps their flock); after faults, the lock changes hands within half a ttl", draw: file_scenarios::handoff, cost: 1 },
    Scenario { name: "file-path-replaced", about: "file: the lock file deleted or replaced under holders and waiters: the old holder is told at its next probe, the new file's holder waits out its heartbeat: never two holders", draw: file_scenarios::path_replaced, cost: 1 },
    Scenario { name: "file-host-crash", about: "file: the host crashes at any point, fence writes included: open files close, fences never repeat; holders learn at their next probe (overlap within a ttl expected)", draw: file_scenarios::host_crash, cost: 1 },
    Scenario { name: "file-network-mount", about: "file: the lock directory on a network mount whose locks are local to each host: two holders at once (expected: why network file systems are refused)", draw: file_scenarios::network_mount, cost: 1 },
    Scenario { name: "sql-session-chaos", about: "SQL session locks: cuts, restarts, client pauses past the ttl and slow answers at once", draw: scenarios::chaos, cost: 1 },
];
