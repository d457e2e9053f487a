//! An in-memory lock table (feature `memory`): locks between the tasks and threads of one
//! process, with the same [`Guard`] as every other backend (fence, deadline, `lost()`,
//! `extend()`, `release()`). It runs the lease-record machine of lucky-core against a
//! process-local [`Table`], so it behaves as the database backends do, without a server.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lucky::Error> {
//! use std::time::Duration;
//! let locks = lucky::memory::Memory::new();
//! let guard = locks.lock("jobs/nightly").ttl(Duration::from_secs(10)).await?;
//! let fence = guard.fence(); // rises with every new holder of any name in this table
//! assert!(locks.lock("jobs/nightly").no_wait().await.unwrap_err().is_taken());
//! guard.release().await?;
//! # let _ = fence;
//! # Ok(()) }
//! ```
//!
//! Leases expire on tokio's clock: under `tokio::time::pause()` a test moves them with
//! `tokio::time::advance`. Waiters are woken in arrival order by releases (no polling, no
//! stampede); a waiter also retries when the holder's lease would run out. Clones of a
//! [`Memory`] share its table; [`Memory::with_table`] shares one with code that drives the
//! machine itself (a blocking program: see the `memory_blocking` example).

mod table;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lucky_core::lease::{Command, LeaseLock, Reply};

use crate::client::{self, sealed, LockFuture, Options};
use crate::clock::Clock;
use crate::driver::{self, BoxFuture, Subscription, Tasks, Transport};
use crate::lease_family::{self, LeaseExtra};
pub use crate::{Error, Guard};
pub use table::{Table, Wake};

/// Configures a [`Memory`] client.
pub type MemoryBuilder = crate::Builder<Memory>;
/// One lock request of a [`Memory`] client; `.await` it to acquire.
pub type LockRequest<'a> = crate::LockRequest<'a, Memory>;

/// A handle on an in-memory lock table. Cheap to clone; clones share the table.
#[derive(Clone, Debug)]
pub struct Memory {
    shared: Arc<Shared>,
    clock: Clock,
    defaults: Options<LeaseExtra>,
}

#[derive(Debug)]
struct Shared {
    table: Arc<Table>,
    tasks: Arc<Tasks>,
    /// Tokens are this handle's random prefix and a counter: unique within the process
    /// (the only place this table is seen) without a system call per lock.
    prefix: [u8; 8],
    issued: AtomicU64,
}

impl Default for Memory {
    fn default() -> Self {
        Memory::new()
    }
}

impl Memory {
    /// A new, empty table with the default settings (ttl 30 s, wait 10 s, renewal every
    /// ttl/3).
    pub fn new() -> Memory {
        Memory::with_table(Arc::default())
    }

    /// A handle on `table`, shared with whoever else holds it.
    pub fn with_table(table: Arc<Table>) -> Memory {
        // Without OS randomness the prefix is the handle's address: still unique per live
        // handle in this process, which is all a process-local token needs.
        let mut prefix = [0u8; 8];
        if getrandom::fill(&mut prefix).is_err() {
            prefix = (Arc::as_ptr(&table) as usize as u64).to_le_bytes();
        }
        Memory {
            shared: Arc::new(Shared {
                table,
                tasks: Arc::default(),
                prefix,
                issued: AtomicU64::new(0),
            }),
            clock: Clock::new(),
            defaults: Options {
                lease: lucky_core::Lease::default(),
                extra: <Memory as sealed::Client>::default_extra(),
            },
        }
    }

    /// Starts configuring a client with its own new table.
    pub fn builder() -> MemoryBuilder {
        MemoryBuilder::new(Vec::<String>::new())
    }

    /// Asks for the lock `name`; configure it, then `.await` it.
    pub fn lock(&self, name: impl Into<String>) -> LockRequest<'_> {
        LockRequest::new(self, name.into())
    }

    /// Waits, at most `timeout`, until every background task of this handle has finished
    /// (releases of dropped guards, renewals of held locks).
    pub async fn close(&self, timeout: Duration) -> bool {
        client::close(self, timeout).await
    }

    /// How many locks of the table are held now.
    pub fn held(&self) -> usize {
        self.shared.table.held(self.clock.now())
    }

    /// The table.
    pub fn table(&self) -> &Arc<Table> {
        &self.shared.table
    }
}

impl sealed::Client for Memory {
    type Extra = LeaseExtra;
    type Setup = ();

    fn default_extra() -> LeaseExtra {
        LeaseExtra::default()
    }

    async fn connect(b: MemoryBuilder) -> Result<Memory, Error> {
        lease_family::config(&b.defaults)?;
        let mut m = Memory::new();
        m.defaults = b.defaults;
        Ok(m)
    }

    fn defaults(&self) -> &Options<LeaseExtra> {
        &self.defaults
    }

    fn start(
        &self,
        name: String,
        options: &Options<LeaseExtra>,
    ) -> Result<LockFuture<'static>, Error> {
        let cfg = lease_family::config(options)?;
        let n = self.shared.issued.fetch_add(1, Ordering::Relaxed);
        let mut token = [0u8; 16];
        token[..8].copy_from_slice(&self.shared.prefix);
        token[8..].copy_from_slice(&n.to_le_bytes());
        let seed = u64::from_le_bytes(self.shared.prefix) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let machine = LeaseLock::new(&cfg, name.as_bytes(), &token, seed)?;
        let transport = Arc::new(Local {
            shared: self.shared.clone(),
            clock: self.clock,
            waiter: AtomicU64::new(0),
        });
        Ok(Box::pin(driver::acquire(
            machine,
            transport,
            self.clock,
            name,
            None,
            options.lease.wait,
        )))
    }

    fn tasks(&self) -> &Arc<Tasks> {
        &self.shared.tasks
    }
}

/// The transport of one acquisition: each command runs on the table at once, at the
/// driver's clock, as this acquisition's waiter once it stands in line.
struct Local {
    shared: Arc<Shared>,
    clock: Clock,
    /// Its id in the line of waiters (0: not in line).
    waiter: AtomicU64,
}

impl Transport for Local {
    type Command = Command;
    type Reply = Reply;

    fn send(
        self: &Arc<Self>,
        node: usize,
        command: Command,
    ) -> impl std::future::Future<Output = Reply> + Send + 'static {
        std::future::ready(self.run(node, &command))
    }

    fn send_now(&self, node: usize, command: Command) -> Result<Reply, Command> {
        Ok(self.run(node, &command))
    }

    fn tasks(&self) -> &Arc<Tasks> {
        &self.shared.tasks
    }

    fn subscribe(self: &Arc<Self>, channel: Vec<u8>) -> BoxFuture<Option<Subscription>> {
        let notify = Arc::new(tokio::sync::Notify::new());
        let name = Bytes::from(channel);
        let id = self.shared.table.wait(name.clone(), notify.clone());
        self.waiter.store(id, Ordering::Release);
        let keep = Unwait {
            table: self.shared.table.clone(),
            name,
            id,
        };
        Box::pin(std::future::ready(Some(Subscription {
            notify,
            _keep: Box::new(keep),
        })))
    }
}

impl Local {
    fn run(&self, _node: usize, command: &Command) -> Reply {
        let waiter = match self.waiter.load(Ordering::Acquire) {
            0 => None,
            id => Some(id),
        };
        self.shared
            .table
            .execute_as(self.clock.now(), command, waiter)
    }
}

/// Leaves the line of waiters when dropped (the acquisition ended).
struct Unwait {
    table: Arc<Table>,
    name: Bytes,
    id: u64,
}

impl Drop for Unwait {
    fn drop(&mut self) {
        self.table.unwait(&self.name, self.id);
    }
}
