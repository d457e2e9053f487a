//! Every simulator scenario as a test: seeds pass (no unexpected violation; scenarios that
//! break an assumption find the violation it allows), runs replay bit for bit, and every
//! injectable bug is caught. CI additionally sweeps 2000 seeds per scenario with the binary.
//!
//! Seeds per scenario here: `LUCKY_SIM_SEEDS` (default 40; a costly scenario runs its share).

use lucky_core::etcd::bugs::EtcdBug;
use lucky_core::lease::bugs::LeaseBug;
use lucky_core::redlock::bugs::RedLockBug;
use lucky_core::session::bugs::SessionBug;
use lucky_core::zookeeper::bugs::ZkBug;
use lucky_sim::registry;
use lucky_sim::scenario::Injected;

fn seeds() -> u64 {
    std::env::var("LUCKY_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40)
}

fn check(name: &str) {
    let sc = registry::scenario(name).expect("scenario exists");
    // A costly scenario runs its share of the seeds, as in a sweep.
    let seeds = sc.sweep_seeds(seeds());
    let mut expected = 0;
    for seed in 0..seeds {
        let out = sc.run(seed, None);
        assert!(
            out.passed(),
            "{name} seed {seed} failed: {:?} (replay: lucky-sim run --scenario {name} --seed {seed})",
            out.report.violations
        );
        assert!(out.report.events > 100, "{name} seed {seed} barely ran");
        expected += u64::from(out.expected_found());
    }
    let breaks = (0..seeds).any(|s| sc.setup(s).must_violate);
    assert_eq!(
        breaks,
        expected > 0,
        "{name}: expected violations found in {expected} runs"
    );
}

macro_rules! scenario_tests {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(#[test] fn $test() { check($name) })*

        #[test]
        fn every_scenario_has_a_test() {
            let tested = [$($name),*];
            for s in registry::scenarios() {
                assert!(tested.contains(&s.name), "scenario {} has no test", s.name);
            }
            assert_eq!(tested.len(), registry::scenarios().count());
        }
    };
}

scenario_tests! {
    split_vote => "split-vote",
    no_wait_exit => "no-wait-exit",
    overtaken_release_fenced => "overtaken-release-fenced",
    etcd_no_wait_exit => "etcd-no-wait-exit",
    blackhole_node => "blackhole-node",
    slow_links => "slow-links",
    pause_after_reply => "pause-after-reply",
    holder_pause => "holder-pause",
    clock_jump_node => "clock-jump-node",
    client_drift_sweep => "client-drift-sweep",
    restart_without_persistence => "restart-without-persistence",
    rolling_restarts_with_extend => "rolling-restarts-with-extend",
    extend_after_expiry => "extend-after-expiry",
    partial_extend => "partial-extend",
    starved_renewal => "starved-renewal",
    unlock_races_renewal => "unlock-races-renewal",
    cancel_mid_acquire => "cancel-mid-acquire",
    release_with_node_down => "release-with-node-down",
    late_duplicate_replies => "late-duplicate-replies",
    holder_partitioned => "holder-partitioned",
    minority_alive => "minority-alive",
    fence_sequence => "fence-sequence",
    holder_pause_fenced => "holder-pause-fenced",
    clock_jump_fenced => "clock-jump-fenced",
    restart_without_persistence_fenced => "restart-without-persistence-fenced",
    restart_delayed_fenced => "restart-delayed-fenced",
    client_drift_fenced => "client-drift-fenced",
    random_chaos => "random-chaos",
    etcd_holder_partitioned => "etcd-holder-partitioned",
    etcd_keepalive_stall => "etcd-keepalive-stall",
    etcd_watch_compacted => "etcd-watch-compacted",
    etcd_predecessor_crash => "etcd-predecessor-crash",
    etcd_holder_pause_fenced => "etcd-holder-pause-fenced",
    etcd_clock_jump => "etcd-clock-jump",
    etcd_client_drift => "etcd-client-drift",
    etcd_data_loss => "etcd-data-loss",
    etcd_random_chaos => "etcd-random-chaos",
    etcd_member_down => "etcd-member-down",
    etcd_leader_change_keepalive => "etcd-leader-change-keepalive",
    etcd_pinned_partitioned_member => "etcd-pinned-partitioned-member",
    lease_holder_pause_fenced => "lease-holder-pause-fenced",
    lease_late_release => "lease-late-release",
    lease_cancel_in_flight => "lease-cancel-in-flight",
    lease_unknown_outcome => "lease-unknown-outcome",
    lease_slow_grant => "lease-slow-grant",
    lease_clock_step => "lease-clock-step",
    lease_data_loss => "lease-data-loss",
    lease_random_chaos => "lease-random-chaos",
    sql_killed_connection => "sql-killed-connection",
    pg_backend_paused => "pg-backend-paused",
    sql_replica_promoted => "sql-replica-promoted",
    my_server_stopped => "my-server-stopped",
    mongo_failover_rollback => "mongo-failover-rollback",
    etcd_session_holder_partitioned => "etcd-session-holder-partitioned",
    etcd_session_keepalive_stall => "etcd-session-keepalive-stall",
    etcd_session_predecessor_crash => "etcd-session-predecessor-crash",
    etcd_session_no_wait_exit => "etcd-session-no-wait-exit",
    etcd_session_random_chaos => "etcd-session-random-chaos",
    etcd_session_many_names => "etcd-session-many-names",
    mongo_wtimeout => "mongo-wtimeout",
    mongo_upsert_race => "mongo-upsert-race",
    mongo_primary_clock_step => "mongo-primary-clock-step",
    mongo_mongos_clocks => "mongo-mongos-clocks",
    my_get_lock_server_stopped => "my-get-lock-server-stopped",
    file_handoff => "file-handoff",
    file_path_replaced => "file-path-replaced",
    file_host_crash => "file-host-crash",
    file_network_mount => "file-network-mount",
    sql_session_restart => "sql-session-restart",
    sql_session_reconnected => "sql-session-reconnected",
    sql_session_partitioned => "sql-session-partitioned",
    sql_session_chaos => "sql-session-chaos",
    zk_holder_partitioned => "zk-holder-partitioned",
    zk_follower_cut => "zk-follower-cut",
    zk_create_lost => "zk-create-lost",
    zk_sequence_wrap => "zk-sequence-wrap",
    zk_contention => "zk-contention",
    zk_reply_stall => "zk-reply-stall",
    zk_predecessor_crash => "zk-predecessor-crash",
    zk_stale_ephemeral => "zk-stale-ephemeral",
    zk_release_lost => "zk-release-lost",
    zk_random_chaos => "zk-random-chaos",
}

#[test]
fn a_seed_replays_bit_for_bit() {
    for sc in registry::scenarios() {
        let a = sc.run(7, None).report;
        let b = sc.run(7, None).report;
        assert_eq!(a.trace_hash, b.trace_hash, "{}", sc.name);
        assert_eq!(
            (a.events, a.acquired, a.end),
            (b.events, b.acquired, b.end),
            "{}",
            sc.name
        );
        let c = sc.run(8, None).report;
        assert_ne!(
            a.trace_hash, c.trace_hash,
            "{}: seeds 7 and 8 ran the same trace",
            sc.name
        );
    }
}

/// Each bug, and a scenario where the oracle must catch it within a few seeds.
#[test]
fn every_injected_bug_is_caught() {
    let m = |name: &'static str| Injected::Machine(name);
    let cases = [
        (m(RedLockBug::IgnoreDrift.name()), "client-drift-sweep", 300),
        (m(RedLockBug::CountStaleReplies.name()), "split-vote", 10),
        (m(RedLockBug::NoReleaseOnFailure.name()), "split-vote", 5),
        (
            m(RedLockBug::ExtendAfterExpiry.name()),
            "extend-after-expiry",
            5,
        ),
        (m(RedLockBug::FenceMaxOfIncr.name()), "fence-sequence", 5),
        (
            m(RedLockBug::FenceCounterOnly.name()),
            "restart-delayed-fenced",
            10,
        ),
        (
            m(RedLockBug::LateGrantOkOnly.name()),
            "overtaken-release-fenced",
            20,
        ),
        (m(RedLockBug::FailBeforeCleanup.name()), "no-wait-exit", 20),
        (
            m(EtcdBug::FailBeforeCleanup.name()),
            "etcd-no-wait-exit",
            20,
        ),
        (Injected::FenceUnchecked, "holder-pause-fenced", 5),
        (
            m(EtcdBug::LostFromReceiveTime.name()),
            "etcd-keepalive-stall",
            20,
        ),
        (m(EtcdBug::WatchAll.name()), "etcd-predecessor-crash", 5),
        (m(EtcdBug::SkipRecheck.name()), "etcd-predecessor-crash", 10),
        (m(EtcdBug::NoFailover.name()), "etcd-member-down", 10),
        (m(LeaseBug::DeleteOnRelease.name()), "lease-late-release", 5),
        (
            m(LeaseBug::ValidityFromReceive.name()),
            "lease-slow-grant",
            20,
        ),
        (
            m(LeaseBug::UnknownAsGranted.name()),
            "lease-unknown-outcome",
            10,
        ),
        (m(LeaseBug::MongoW1.name()), "mongo-failover-rollback", 10),
        (
            m(EtcdBug::SessionNoGuard.name()),
            "etcd-session-random-chaos",
            60,
        ),
        (
            m(SessionBug::NoSessionCheck.name()),
            "sql-session-reconnected",
            20,
        ),
        (
            m(SessionBug::ClaimUnconfirmed.name()),
            "sql-session-chaos",
            30,
        ),
        (m(SessionBug::FileUnlinkOnRelease.name()), "file-handoff", 5),
        (
            m(SessionBug::FileFenceNotDurable.name()),
            "file-host-crash",
            5,
        ),
        (m(ZkBug::AckProvesLeader.name()), "zk-follower-cut", 100),
        (m(ZkBug::NoProtectedFind.name()), "zk-create-lost", 10),
        (m(ZkBug::TextOrder.name()), "zk-sequence-wrap", 5),
        (m(ZkBug::SkipRelist.name()), "zk-contention", 5),
        (m(ZkBug::WatchAll.name()), "zk-contention", 5),
        (m(ZkBug::ValidityFromRead.name()), "zk-reply-stall", 10),
    ];
    assert_eq!(
        cases.len(),
        registry::bugs().count(),
        "every bug has a case"
    );
    for (bug, name, seeds) in cases {
        let sc = registry::scenario(name).expect("scenario exists");
        let caught = (0..seeds)
            .filter(|&s| !sc.run(s, Some(bug)).passed())
            .count();
        assert!(
            caught > 0,
            "{} not caught by {name} in {seeds} seeds",
            bug.name()
        );
        // And the same seeds pass without it: the bug, not the scenario, fails them.
        assert!(
            (0..seeds).all(|s| sc.run(s, None).passed()),
            "{name} fails without a bug"
        );
    }
}

/// The many-names scenario is the size it says: hundreds of processes, each holding several
/// names at once on its one session, and every name changing hands among its contenders.
#[test]
fn many_names_runs_at_scale() {
    let sc = registry::scenario("etcd-session-many-names").expect("scenario exists");
    let setup = sc.setup(1);
    let per = setup.work.per_process;
    assert!(
        setup.work.clients / per >= 100 && per >= 4,
        "{:?}",
        setup.work
    );
    let r = sc.run(1, None).report;
    let mut holders: std::collections::BTreeMap<usize, std::collections::BTreeSet<usize>> =
        Default::default();
    for c in &r.claims {
        holders.entry(c.name).or_default().insert(c.client / per);
    }
    assert!(
        holders.len() > setup.work.names * 9 / 10,
        "{} of {} names held",
        holders.len(),
        setup.work.names
    );
    let shared = holders.values().filter(|p| p.len() >= 2).count();
    assert!(shared > holders.len() / 2, "{shared} names changed hands");
    // Two locks of one process held at the same time: the session carries several.
    let mut claims = r.claims.clone();
    claims.sort_by_key(|c| (c.client / per, c.start));
    let together = claims.windows(2).any(|w| {
        w[0].client / per == w[1].client / per && w[0].name != w[1].name && w[1].start < w[0].end
    });
    assert!(together, "no process held two names at once");
}
