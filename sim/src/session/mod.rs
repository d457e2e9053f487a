//! The session-lock backend (PostgreSQL advisory locks, MySQL `GET_LOCK`): the
//! [`SessionServer`] model ([`server`]), the glue that builds the real session-lock machine
//! from a scenario's setup ([`protocol`]), and its scenarios. [`BACKEND`] registers them and
//! the machine's bugs.

use crate::scenario::{Backend, Scenario};

pub mod protocol;
mod scenarios;
pub mod server;

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
    Scenario { name: "sql-session-restart", about: "SQL session locks: the server restarts under holders; locks end with their sessions, holders learn at their next probe: overlap within a ttl expected, fences still rise", draw: scenarios::restart },
    Scenario { name: "sql-session-reconnected", about: "SQL session locks: the server restarts and drivers reconnect silently (JDBC autoReconnect, a pooler handing out another backend): the changed session is noticed at the next answer", draw: scenarios::reconnected },
    Scenario { name: "sql-session-partitioned", about: "SQL session locks: holders cut off from the server: it ends their idle sessions after the ttl, after they stopped trusting them: no overlap", draw: scenarios::partitioned },
    Scenario { name: "my-get-lock-server-stopped", about: "MySQL GET_LOCK (and advisory) mode: the server stopped past the ttl: unanswered probes end the holders' trust, the resumed server frees dropped sessions' locks: no overlap", draw: scenarios::server_stopped },
    Scenario { name: "sql-session-chaos", about: "SQL session locks: cuts, restarts, client pauses past the ttl and slow answers at once", draw: scenarios::chaos },
];
