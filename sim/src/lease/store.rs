//! A lease store model: one record per lock name, `name -> { owner, fence, expires_at }`,
//! judged on the store's own clock (the engine's node clock: drift, jumps), with the semantics
//! of [`lucky_core::lease::Command`]: take if free, expired or already ours (the fence rises
//! on a takeover only), renew and release only while ours, inspect.

use std::collections::BTreeMap;

use bytes::Bytes;
use lucky_core::lease::{Command, Reply};
use lucky_core::time::nanos;
use lucky_core::Duration;

use crate::Server;

/// One record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// The owner, if any (it may have expired).
    pub owner: Option<Bytes>,
    /// Raised on every takeover; never reset while the record exists.
    pub fence: u64,
    /// The owner's expiry on the store's clock (ns).
    pub expires_at: u64,
}

impl Record {
    /// The owner, if it is still live at `now`.
    pub fn live_owner(&self, now: u64) -> Option<&Bytes> {
        self.owner.as_ref().filter(|_| self.expires_at > now)
    }
}

/// What the store does on a release: Lucky's (clear the owner, keep the record and its fence),
/// or the wrong one the simulator injects (it exists only here; the wire command is the same).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnRelease {
    /// Clear the owner; the record and its fence stay.
    #[default]
    ClearOwner,
    /// Delete the record, so the fence restarts (bug `lease-delete-on-release`).
    Delete,
}

/// The store's records. Time is the store's local clock, in nanoseconds.
#[derive(Clone, Debug, Default)]
pub struct LeaseStore {
    records: BTreeMap<Bytes, Record>,
    on_release: OnRelease,
    /// Recent writes, oldest first: (local time, name, the record before), for a rollback.
    undo: std::collections::VecDeque<(u64, Bytes, Option<Record>)>,
}

/// Writes remembered for a rollback.
const UNDO: usize = 4096;

impl LeaseStore {
    /// An empty store.
    pub fn new() -> LeaseStore {
        LeaseStore::default()
    }

    /// An empty store that releases as `on_release` says.
    pub fn with_release(on_release: OnRelease) -> LeaseStore {
        LeaseStore {
            on_release,
            ..LeaseStore::default()
        }
    }

    /// The record of `name`, if there is one.
    pub fn record(&self, name: &[u8]) -> Option<&Record> {
        self.records.get(name)
    }
}

fn until(now: u64, ttl: Duration) -> u64 {
    now.saturating_add(nanos(ttl))
}

fn left(rec: &Record, now: u64) -> Duration {
    Duration::from_nanos(rec.expires_at.saturating_sub(now))
}

impl Server for LeaseStore {
    type Command = Command;
    type Reply = Reply;

    fn apply(&mut self, now: u64, command: &Command) -> Reply {
        if let Command::Take { name, .. }
        | Command::Renew { name, .. }
        | Command::Release { name, .. } = command
        {
            if self.undo.len() == UNDO {
                self.undo.pop_front();
            }
            let before = self.records.get(name).cloned();
            self.undo.push_back((now, name.clone(), before));
        }
        match command {
            Command::Take { name, owner, ttl } => {
                let rec = self.records.entry(name.clone()).or_default();
                match rec.live_owner(now) {
                    Some(o) if o != owner => Reply::Held {
                        left: left(rec, now),
                    },
                    _ => {
                        // Free, expired, or ours. The fence rises on a takeover: when the
                        // record's owner (live or expired) was someone else, or nobody.
                        if rec.owner.as_ref() != Some(owner) {
                            rec.fence += 1;
                            rec.owner = Some(owner.clone());
                        }
                        rec.expires_at = until(now, *ttl);
                        Reply::Granted { fence: rec.fence }
                    }
                }
            }
            Command::Renew { name, owner, ttl } => match self.records.get_mut(name) {
                Some(rec) if rec.live_owner(now) == Some(owner) => {
                    rec.expires_at = until(now, *ttl);
                    Reply::Renewed
                }
                _ => Reply::NotOwner,
            },
            Command::Release { name, owner } => match self.records.get_mut(name) {
                // Ours, live or expired (clearing an expired owner of ours changes nothing
                // for anyone else).
                Some(rec) if rec.owner.as_ref() == Some(owner) => {
                    match self.on_release {
                        OnRelease::ClearOwner => {
                            rec.owner = None;
                            rec.expires_at = 0;
                        }
                        OnRelease::Delete => {
                            self.records.remove(name);
                        }
                    }
                    Reply::Released
                }
                _ => Reply::NotOwner,
            },
            Command::Inspect { name } => match self.records.get(name) {
                Some(rec) => {
                    let owner = rec.live_owner(now).cloned();
                    Reply::State {
                        left: if owner.is_some() {
                            left(rec, now)
                        } else {
                            Duration::ZERO
                        },
                        owner,
                        fence: rec.fence,
                    }
                }
                None => Reply::State {
                    owner: None,
                    fence: 0,
                    left: Duration::ZERO,
                },
            },
        }
    }

    fn wipe(&mut self) {
        self.records.clear();
        self.undo.clear();
    }

    fn roll_back(&mut self, since: u64) {
        while let Some((at, name, before)) = self.undo.pop_back() {
            if at < since {
                self.undo.push_back((at, name, before));
                break;
            }
            match before {
                Some(r) => self.records.insert(name, r),
                None => self.records.remove(&name),
            };
        }
    }

    /// Records with a live owner: a record without one (released, expired) blocks nobody.
    fn live_keys(&self, now: u64) -> usize {
        self.records
            .values()
            .filter(|r| r.live_owner(now).is_some())
            .count()
    }

    fn unavailable() -> Reply {
        Reply::Unavailable("connection refused".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn take(s: &mut LeaseStore, now: u64, owner: &'static [u8]) -> Reply {
        s.apply(
            now,
            &Command::Take {
                name: Bytes::from_static(b"n"),
                owner: Bytes::from_static(owner),
                ttl: Duration::from_millis(100),
            },
        )
    }

    fn release(s: &mut LeaseStore, now: u64, owner: &'static [u8]) -> Reply {
        s.apply(
            now,
            &Command::Release {
                name: Bytes::from_static(b"n"),
                owner: Bytes::from_static(owner),
            },
        )
    }

    fn renew(s: &mut LeaseStore, now: u64, owner: &'static [u8]) -> Reply {
        s.apply(
            now,
            &Command::Renew {
                name: Bytes::from_static(b"n"),
                owner: Bytes::from_static(owner),
                ttl: Duration::from_millis(100),
            },
        )
    }

    fn inspect(s: &mut LeaseStore, now: u64) -> Reply {
        s.apply(
            now,
            &Command::Inspect {
                name: Bytes::from_static(b"n"),
            },
        )
    }

    #[test]
    fn take_renew_release_inspect() {
        let mut s = LeaseStore::new();
        assert_eq!(
            inspect(&mut s, 0),
            Reply::State {
                owner: None,
                fence: 0,
                left: Duration::ZERO
            }
        );
        assert_eq!(take(&mut s, 0, b"a"), Reply::Granted { fence: 1 });
        // A retake by the live owner keeps the fence and renews the expiry.
        assert_eq!(take(&mut s, 10 * MS, b"a"), Reply::Granted { fence: 1 });
        assert_eq!(
            take(&mut s, 20 * MS, b"b"),
            Reply::Held {
                left: Duration::from_millis(90)
            }
        );
        assert_eq!(renew(&mut s, 50 * MS, b"a"), Reply::Renewed);
        assert_eq!(renew(&mut s, 50 * MS, b"b"), Reply::NotOwner);
        assert_eq!(
            inspect(&mut s, 60 * MS),
            Reply::State {
                owner: Some(Bytes::from_static(b"a")),
                fence: 1,
                left: Duration::from_millis(90)
            }
        );
        // Expired: renew refused, takeover raises the fence.
        assert_eq!(renew(&mut s, 150 * MS, b"a"), Reply::NotOwner);
        assert_eq!(take(&mut s, 150 * MS, b"b"), Reply::Granted { fence: 2 });
        assert_eq!(release(&mut s, 160 * MS, b"a"), Reply::NotOwner);
        assert_eq!(release(&mut s, 160 * MS, b"b"), Reply::Released);
        assert_eq!(s.live_keys(160 * MS), 0);
        assert_eq!(
            inspect(&mut s, 160 * MS),
            Reply::State {
                owner: None,
                fence: 2,
                left: Duration::ZERO
            }
        );
        // Free after a release: the same owner's late retake is a takeover too.
        assert_eq!(take(&mut s, 170 * MS, b"b"), Reply::Granted { fence: 3 });
        assert_eq!(s.live_keys(170 * MS), 1);
    }

    #[test]
    fn a_rollback_loses_the_writes_since_and_keeps_the_ones_before() {
        let mut s = LeaseStore::new();
        assert_eq!(take(&mut s, 0, b"a"), Reply::Granted { fence: 1 });
        assert_eq!(release(&mut s, 10 * MS, b"a"), Reply::Released);
        assert_eq!(take(&mut s, 20 * MS, b"b"), Reply::Granted { fence: 2 });
        // The standby has everything before 15 ms: b's take is gone, a's release is not.
        s.roll_back(15 * MS);
        assert_eq!(
            inspect(&mut s, 21 * MS),
            Reply::State {
                owner: None,
                fence: 1,
                left: Duration::ZERO
            }
        );
        // The next take reuses fence 2: what makes this fault break fences.
        assert_eq!(take(&mut s, 22 * MS, b"c"), Reply::Granted { fence: 2 });
    }

    #[test]
    fn delete_on_release_restarts_the_fence() {
        let mut s = LeaseStore::with_release(OnRelease::Delete);
        assert_eq!(take(&mut s, 0, b"a"), Reply::Granted { fence: 1 });
        assert_eq!(release(&mut s, MS, b"a"), Reply::Released);
        assert_eq!(take(&mut s, 2 * MS, b"b"), Reply::Granted { fence: 1 });
    }
}
