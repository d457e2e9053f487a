//! A lease store model: one record per lock name, `name -> { owner, fence, expires_at }`,
//! judged on the store's own clock (the engine's node clock: drift, jumps), with the semantics
//! of [`lucky_core::lease::Command`]: take if free, expired or already ours (the fence rises
//! on a takeover only), renew and release only while ours, inspect.

use std::collections::BTreeMap;

use bytes::Bytes;
use lucky_core::lease::{Command, Reply};
use lucky_core::time::nanos;
use lucky_core::Duration;

use super::replica::{Replicas, Shape};
use crate::world::MemberState;
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
    /// As a replica set (MongoDB): what a majority has, and the writes waiting for it.
    replicas: Option<Box<Replicas>>,
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

    /// A replica set shaped as `shape` whose primary releases as `on_release` says.
    pub fn replica_set(shape: Shape, on_release: OnRelease) -> LeaseStore {
        LeaseStore {
            on_release,
            replicas: Some(Box::new(Replicas::new(shape))),
            ..LeaseStore::default()
        }
    }

    /// A write on the primary of a replica set: applied, then answered at once or kept for
    /// a majority.
    fn write(&mut self, now: u64, judged: u64, command: &Command, id: u64) -> Option<Reply> {
        let new = match command {
            Command::Take { name, .. } => !self.records.contains_key(name),
            _ => false,
        };
        let reply = self.apply(judged, command);
        match (&mut self.replicas, command) {
            (Some(r), Command::Take { name, owner, .. }) if new => {
                r.created(now, name, owner);
                r.applied(now, judged, command, reply, id)
            }
            (Some(r), _) => r.applied(now, judged, command, reply, id),
            (None, _) => Some(reply),
        }
    }

    /// Upsert races the replica set produced.
    pub fn upsert_races(&self) -> u64 {
        self.replicas.as_ref().map_or(0, |r| r.races)
    }

    /// Forgets every record (the primary's, not the replication state).
    pub(super) fn wipe_records(&mut self) {
        self.records.clear();
        self.undo.clear();
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
        self.wipe_records();
        if let Some(r) = &mut self.replicas {
            r.wipe();
        }
    }

    /// A replica set keeps the answer of a write until a majority has it; it reads the
    /// majority-committed state.
    fn submit(&mut self, now: u64, command: &Command, id: u64) -> Option<Reply> {
        if self.replicas.is_none() {
            return Some(self.apply(now, command));
        }
        self.tick(now);
        // Judged on the routing mongos's clock (the primary's own, without skew); the
        // replication machinery keeps the node's time.
        let skew = self.replicas.as_ref().map_or(0, |r| r.skew(id));
        let judged = now.saturating_add_signed(skew);
        if let Command::Inspect { .. } = command {
            return self.replicas.as_mut().map(|r| r.read(judged, command));
        }
        if let Some(r) = &mut self.replicas {
            if r.lost_race(now, command, id) {
                return None;
            }
        }
        self.write(now, judged, command, id)
    }

    fn fired(&mut self, out: &mut Vec<(u64, Reply)>) {
        if let Some(r) = &mut self.replicas {
            r.fired(out);
        }
    }

    fn next_timer(&self) -> Option<u64> {
        self.replicas.as_ref().and_then(|r| r.next_timer())
    }

    fn tick(&mut self, now: u64) {
        let resent = match &mut self.replicas {
            Some(r) => r.resent_due(now),
            None => return,
        };
        // The adapter's second try of a take that lost an upsert race: the document exists
        // now, so it is an update.
        for (id, command) in resent {
            let judged = self
                .replicas
                .as_ref()
                .map_or(now, |r| now.saturating_add_signed(r.skew(id)));
            if let Some(reply) = self.write(now, judged, &command, id) {
                if let Some(r) = &mut self.replicas {
                    r.push_due(id, reply);
                }
            }
        }
        if let Some(r) = &mut self.replicas {
            r.tick(now);
        }
    }

    fn forget_kept(&mut self) {
        if let Some(r) = &mut self.replicas {
            r.forget_kept();
        }
    }

    /// Replica-set members: the primary failing over, secondaries going away and back.
    fn member(&mut self, now: u64, member: usize, state: MemberState) {
        self.tick(now);
        let Some(r) = &mut self.replicas else { return };
        if r.member(member, state) {
            let new_primary = r.fail_over(now);
            self.records = new_primary.records;
            self.undo.clear();
        }
    }

    fn heal_members(&mut self, now: u64) {
        self.tick(now);
        if let Some(r) = &mut self.replicas {
            r.heal();
        }
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

    fn shape(ack: super::super::replica::Ack) -> Shape {
        Shape {
            lag_ns: 10 * MS,
            wtimeout_ns: 30 * MS,
            ack,
            upsert_race_ns: 2 * MS,
            clock_skew_ns: 0,
        }
    }

    fn take_as(s: &mut LeaseStore, now: u64, owner: &'static [u8], id: u64) -> Option<Reply> {
        let take = Command::Take {
            name: Bytes::from_static(b"n"),
            owner: Bytes::from_static(owner),
            ttl: Duration::from_millis(100),
        };
        s.submit(now, &take, id)
    }

    fn fired_at(s: &mut LeaseStore, now: u64) -> Vec<(u64, Reply)> {
        s.tick(now);
        let mut out = Vec::new();
        s.fired(&mut out);
        out
    }

    #[test]
    fn a_majority_write_is_answered_once_committed_and_a_failover_keeps_only_that() {
        use super::super::replica::Ack;
        let mut s = LeaseStore::replica_set(shape(Ack::Majority), OnRelease::ClearOwner);
        assert_eq!(take_as(&mut s, 0, b"a", 1), None, "waits for a majority");
        // Majority reads do not see it yet.
        assert!(matches!(
            inspect_majority(&mut s, MS),
            Some(Reply::State { owner: None, .. })
        ));
        assert_eq!(s.next_timer(), Some(10 * MS));
        assert_eq!(
            fired_at(&mut s, 10 * MS),
            vec![(1, Reply::Granted { fence: 1 })]
        );
        assert!(matches!(
            s.submit(
                11 * MS,
                &Command::Inspect {
                    name: Bytes::from_static(b"n")
                },
                9
            ),
            Some(Reply::State {
                owner: Some(_),
                fence: 1,
                ..
            })
        ));
        // A release applied but not committed when the primary fails over: rolled back, and
        // its waiting answer is an unknown outcome.
        let release = Command::Release {
            name: Bytes::from_static(b"n"),
            owner: Bytes::from_static(b"a"),
        };
        assert_eq!(s.submit(20 * MS, &release, 2), None);
        s.member(24 * MS, 0, MemberState::Down);
        let out = fired_at(&mut s, 24 * MS);
        assert!(matches!(&out[..], [(2, Reply::Unknown(_))]), "{out:?}");
        assert_eq!(
            take_as(&mut s, 26 * MS, b"b", 3),
            Some(Reply::Held {
                left: Duration::from_millis(74)
            })
        );
    }

    #[test]
    fn w1_acknowledges_at_once_and_a_failover_loses_the_acknowledged_take() {
        use super::super::replica::Ack;
        let mut s = LeaseStore::replica_set(shape(Ack::Primary), OnRelease::ClearOwner);
        assert_eq!(
            take_as(&mut s, 20 * MS, b"a", 1),
            Some(Reply::Granted { fence: 1 })
        );
        // The winning secondary has writes older than half the lag only.
        s.member(22 * MS, 0, MemberState::Down);
        // Another process now takes the same name with the same fence: two holders.
        assert_eq!(
            take_as(&mut s, 23 * MS, b"b", 2),
            Some(Reply::Granted { fence: 1 })
        );
    }

    #[test]
    fn a_write_past_wtimeout_is_unknown_and_still_commits_when_secondaries_return() {
        use super::super::replica::Ack;
        let mut s = LeaseStore::replica_set(shape(Ack::Majority), OnRelease::ClearOwner);
        s.member(0, 1, MemberState::Silent);
        s.member(0, 2, MemberState::Silent);
        assert_eq!(take_as(&mut s, 0, b"a", 1), None);
        let out = fired_at(&mut s, 30 * MS);
        assert!(matches!(&out[..], [(1, Reply::Unknown(_))]), "{out:?}");
        assert!(matches!(
            inspect_majority(&mut s, 31 * MS),
            Some(Reply::State { owner: None, .. })
        ));
        s.member(40 * MS, 1, MemberState::Up);
        assert!(fired_at(&mut s, 41 * MS).is_empty(), "answered already");
        assert!(matches!(
            inspect_majority(&mut s, 42 * MS),
            Some(Reply::State {
                owner: Some(_),
                fence: 1,
                ..
            })
        ));
    }

    fn inspect_majority(s: &mut LeaseStore, now: u64) -> Option<Reply> {
        s.submit(
            now,
            &Command::Inspect {
                name: Bytes::from_static(b"n"),
            },
            99,
        )
    }

    #[test]
    fn the_loser_of_an_upsert_race_is_resent_and_finds_the_holder() {
        use super::super::replica::Ack;
        let mut s = LeaseStore::replica_set(shape(Ack::Majority), OnRelease::ClearOwner);
        assert_eq!(take_as(&mut s, 0, b"a", 1), None);
        assert_eq!(take_as(&mut s, MS, b"b", 2), None, "lost the race: resent");
        assert_eq!(s.upsert_races(), 1);
        // Resent at 3 ms: held. That answer changed nothing, but under w: majority it waits
        // for the majority to reach the take before it (committed at 10 ms) and itself.
        assert!(fired_at(&mut s, 3 * MS).is_empty());
        assert_eq!(
            fired_at(&mut s, 10 * MS),
            vec![(1, Reply::Granted { fence: 1 })]
        );
        let out = fired_at(&mut s, 13 * MS);
        assert!(matches!(&out[..], [(2, Reply::Held { .. })]), "{out:?}");
    }

    #[test]
    fn an_election_keeps_the_writes_the_winner_had_and_answers_them_unknown() {
        use super::super::replica::Ack;
        let mut s = LeaseStore::replica_set(shape(Ack::Majority), OnRelease::ClearOwner);
        assert_eq!(take_as(&mut s, 0, b"a", 1), None);
        // At 8 ms the winner has writes up to 3 ms: a's take survives, unacknowledged.
        s.member(8 * MS, 0, MemberState::Down);
        let out = fired_at(&mut s, 8 * MS);
        assert!(matches!(&out[..], [(1, Reply::Unknown(_))]), "{out:?}");
        assert!(matches!(
            inspect_majority(&mut s, 9 * MS),
            Some(Reply::State {
                owner: Some(_),
                fence: 1,
                ..
            })
        ));
    }
}
