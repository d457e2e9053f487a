//! An etcd cluster model, seen by clients as one linearizable node: a KV store with global
//! revisions, leases that expire on the cluster's clock (deleting their keys), watches for
//! deletions, compaction, and leader loss (requests wait; leases are extended by a fresh ttl
//! when the new leader takes over, as etcd's lessor `Promote` does).

use std::collections::BTreeMap;

use bytes::Bytes;
use lucky_core::etcd::{Command, Reply};
use lucky_core::time::nanos;

use crate::oracle::Violation;
use crate::Server;

#[derive(Clone, Debug)]
struct Lease {
    ttl_ns: u64,
    expiry: u64,
    /// Keys attached to it (a lease without keys matters to nobody until it is touched).
    keys: usize,
}

#[derive(Clone, Debug)]
struct Kv {
    create: i64,
    lease: i64,
}

#[derive(Clone, Debug)]
struct Watch {
    id: u64,
    key: Bytes,
    prefix: bool,
}

/// The cluster's state. Time is the cluster's local clock, in nanoseconds.
#[derive(Clone, Debug, Default)]
pub struct EtcdNode {
    rev: i64,
    compact_rev: i64,
    /// Compact to the current revision after every write (the etcd-watch-compacted scenario).
    pub compact_always: bool,
    next_lease: i64,
    leases: BTreeMap<i64, Lease>,
    kv: BTreeMap<Bytes, Kv>,
    /// Deletions since the compaction point: (revision, key), for watches starting in the past.
    deletes: Vec<(i64, Bytes)>,
    /// Registered watches by watcher (the waiter's own key).
    watches: BTreeMap<Bytes, Watch>,
    fired: Vec<(u64, Reply)>,
    max_woken: usize,
}

impl EtcdNode {
    /// An empty cluster.
    pub fn new() -> EtcdNode {
        EtcdNode {
            next_lease: 0x694d_0000_0000_0001,
            ..EtcdNode::default()
        }
    }

    /// Puts `key` on a fresh lease of `ttl_ns` as another client would (for tests).
    pub fn put_leased(&mut self, now: u64, key: &[u8], ttl_ns: u64) -> i64 {
        let id = self.grant(now, ttl_ns);
        self.rev += 1;
        let create = self.rev;
        self.insert(Bytes::copy_from_slice(key), Kv { create, lease: id });
        create
    }

    /// Puts a key (absent before) on its lease.
    fn insert(&mut self, key: Bytes, kv: Kv) {
        if let Some(l) = self.leases.get_mut(&kv.lease) {
            l.keys += 1;
        }
        self.kv.insert(key, kv);
    }

    /// Forgets the watch kept under `id` (its stream broke); it never fires.
    pub fn drop_watch(&mut self, id: u64) {
        self.watches.retain(|_, w| w.id != id);
    }

    /// The most watches one deletion answered (the thundering-herd check).
    pub fn max_woken(&self) -> usize {
        self.max_woken
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.rev
    }

    fn grant(&mut self, now: u64, ttl_ns: u64) -> i64 {
        let id = self.next_lease;
        self.next_lease += 1;
        self.leases.insert(
            id,
            Lease {
                ttl_ns,
                expiry: now.saturating_add(ttl_ns),
                keys: 0,
            },
        );
        id
    }

    fn write(&mut self) -> i64 {
        self.rev += 1;
        if self.compact_always {
            // etcd keeps the compaction revision itself and drops everything older.
            self.compact_rev = self.rev;
            let keep = self.compact_rev;
            self.deletes.retain(|(r, _)| *r >= keep);
        } else if self.deletes.len() > 4096 {
            // A bounded history, as etcd's auto-compaction keeps.
            self.compact_rev = self.deletes[2048].0;
            self.deletes.drain(..2048);
        }
        self.rev
    }

    /// Deletes `keys` in one revision and answers the watches on them.
    fn delete_keys(&mut self, keys: Vec<Bytes>) {
        if keys.is_empty() {
            return;
        }
        let rev = self.write();
        for key in keys {
            // Counted per key: a revoked session lease deletes the keys of several locks at
            // one revision, each waking its own successor, which is no herd.
            let mut woken = 0;
            if let Some(kv) = self.kv.remove(&key) {
                if let Some(l) = self.leases.get_mut(&kv.lease) {
                    l.keys -= 1;
                }
            }
            // The waiter whose own key this was gave up: its watch goes with it.
            self.watches.remove(&key);
            let hit: Vec<Bytes> = self
                .watches
                .iter()
                .filter(|(_, w)| matches(w, &key))
                .map(|(k, _)| k.clone())
                .collect();
            for watcher in hit {
                if let Some(w) = self.watches.remove(&watcher) {
                    self.fired.push((w.id, Reply::Deleted));
                    // A watch left by a waiter whose key is already gone (it arrived late)
                    // is not a queued waiter: it does not count towards the herd.
                    woken += usize::from(self.kv.contains_key(&watcher));
                }
            }
            self.deletes.push((rev, key));
            self.max_woken = self.max_woken.max(woken);
        }
    }

    fn revoke(&mut self, id: i64) {
        self.leases.remove(&id);
        let keys: Vec<Bytes> = self
            .kv
            .iter()
            .filter(|(_, v)| v.lease == id)
            .map(|(k, _)| k.clone())
            .collect();
        self.delete_keys(keys);
    }

    fn live_lease(&mut self, now: u64, id: i64) -> bool {
        self.tick(now);
        self.leases.contains_key(&id)
    }

    fn under<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = (&'a Bytes, &'a Kv)> + 'a {
        self.kv
            .range::<[u8], _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(k, _)| k.starts_with(prefix))
    }
}

fn matches(w: &Watch, key: &[u8]) -> bool {
    if w.prefix {
        key.starts_with(&w.key)
    } else {
        key == &w.key[..]
    }
}

impl Server for EtcdNode {
    type Command = Command;
    type Reply = Reply;

    /// Answers at once; a watch cannot be answered at once, so it needs
    /// [`submit`](Server::submit).
    fn apply(&mut self, now: u64, command: &Command) -> Reply {
        if matches!(command, Command::WaitDelete { .. }) {
            return Reply::Error("a watch is answered later: use submit".into());
        }
        self.submit(now, command, 0)
            .unwrap_or_else(|| Reply::Error("a watch is answered later: use submit".into()))
    }

    fn submit(&mut self, now: u64, command: &Command, id: u64) -> Option<Reply> {
        self.tick(now);
        Some(match command {
            Command::LeaseGrant { ttl_secs } => {
                // What etcd grants: whole seconds (this model's etcd runs with an election
                // timeout short enough that its minimum lease is at most 1 s).
                let secs = u64::try_from((*ttl_secs).max(1)).unwrap_or(1);
                let ttl = std::time::Duration::from_secs(secs);
                let id = self.grant(now, nanos(ttl));
                Reply::Lease { id, ttl }
            }
            Command::KeepAlive { lease } => match self.leases.get_mut(lease) {
                Some(l) => {
                    l.expiry = now.saturating_add(l.ttl_ns);
                    Reply::KeepAlive {
                        ttl: std::time::Duration::from_nanos(l.ttl_ns),
                    }
                }
                None => Reply::KeepAlive {
                    ttl: std::time::Duration::ZERO,
                },
            },
            Command::Revoke { lease } => {
                if self.live_lease(now, *lease) {
                    self.revoke(*lease);
                    Reply::Done
                } else {
                    Reply::LeaseNotFound
                }
            }
            Command::Take {
                key,
                prefix,
                lease,
                guard,
            } => {
                let create = match self.kv.get(key) {
                    Some(kv) => kv.create,
                    None if guard.as_ref().is_some_and(|g| self.kv.contains_key(g)) => {
                        // Abandoned: the put's guard fails; the key stays absent.
                        0
                    }
                    None => {
                        if !self.live_lease(now, *lease) {
                            return Some(Reply::LeaseNotFound);
                        }
                        let create = self.write();
                        self.insert(
                            key.clone(),
                            Kv {
                                create,
                                lease: *lease,
                            },
                        );
                        create
                    }
                };
                let owner = self.under(prefix).map(|(_, v)| v.create).min();
                Reply::Taken {
                    create_revision: create,
                    owner_revision: owner.unwrap_or(create),
                    revision: self.rev,
                }
            }
            Command::Queue { key, prefix, below } => {
                let mine = self.kv.get(key).map(|v| v.create);
                let predecessor = self
                    .under(prefix)
                    .filter(|(_, v)| v.create < *below)
                    .max_by_key(|(_, v)| v.create)
                    .map(|(k, _)| k.clone());
                Reply::Queue {
                    mine,
                    predecessor,
                    revision: self.rev,
                }
            }
            Command::WaitDelete {
                key,
                prefix,
                from,
                watcher,
            } => {
                if *from < self.compact_rev {
                    return Some(Reply::Compacted);
                }
                let w = Watch {
                    id,
                    key: key.clone(),
                    prefix: *prefix,
                };
                if self
                    .deletes
                    .iter()
                    .any(|(r, k)| *r >= *from && matches(&w, k))
                {
                    return Some(Reply::Deleted);
                }
                self.watches.insert(watcher.clone(), w);
                return None;
            }
            Command::Delete { key, revision } => {
                if self.kv.get(key).is_some_and(|v| v.create == *revision) {
                    self.delete_keys(vec![key.clone()]);
                }
                Reply::Done
            }
            Command::Abandon { key, guard, lease } => {
                if !self.live_lease(now, *lease) {
                    return Some(Reply::LeaseNotFound);
                }
                if !self.kv.contains_key(guard) {
                    let create = self.write();
                    self.insert(
                        guard.clone(),
                        Kv {
                            create,
                            lease: *lease,
                        },
                    );
                }
                if self.kv.contains_key(key) {
                    self.delete_keys(vec![key.clone()]);
                }
                Reply::Done
            }
        })
    }

    fn fired(&mut self, out: &mut Vec<(u64, Reply)>) {
        out.append(&mut self.fired);
    }

    fn next_timer(&self) -> Option<u64> {
        // Only leases that carry keys matter to anyone before they are next touched.
        self.leases
            .values()
            .filter(|l| l.keys > 0)
            .map(|l| l.expiry)
            .min()
    }

    fn tick(&mut self, now: u64) {
        let expired: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expiry <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.revoke(id);
        }
    }

    fn forget_kept(&mut self) {
        self.watches.clear();
    }

    fn recovered(&mut self, now: u64) {
        for l in self.leases.values_mut() {
            l.expiry = l.expiry.max(now.saturating_add(l.ttl_ns));
        }
    }

    /// Waiters must watch only their predecessor: one deletion waking several is a herd.
    fn check_at_end(&self, node: usize, found: &mut Vec<Violation>) {
        if self.max_woken > 1 {
            found.push(Violation::Herd {
                node,
                woken: self.max_woken,
            });
        }
    }

    fn wipe(&mut self) {
        let next_lease = self.next_lease;
        let compact_always = self.compact_always;
        *self = EtcdNode {
            next_lease,
            compact_always,
            ..EtcdNode::default()
        };
    }

    /// Keys on live leases, but for a shared session's guards of abandoned attempts: they
    /// are outside every lock's prefix and block nobody (they go with the session's lease).
    fn live_keys(&self, now: u64) -> usize {
        self.kv
            .iter()
            .filter(|(k, _)| !k.starts_with(b"\0lucky/abandoned/"))
            .filter(|(_, v)| self.leases.get(&v.lease).is_some_and(|l| l.expiry > now))
            .count()
    }

    fn unavailable() -> Reply {
        Reply::Unavailable("connection refused".into())
    }
}
