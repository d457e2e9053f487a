//! proptest front-end to the simulator: fault schedules are generated values, so a schedule
//! that breaks a property shrinks to a minimal one.
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the report

use lucky_sim::net::{Cut, NetParams};
use lucky_sim::rng::Rng;
use lucky_sim::scenario::Setup;
use lucky_sim::world::Fault;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};

const MS: u64 = 1_000_000;

/// Faults that keep RedLock's assumptions: partitions, crashes that keep their data, short
/// pauses, lossy or slow links.
fn fault() -> impl Strategy<Value = Fault> {
    let client = proptest::option::of(0usize..3);
    let cut = prop_oneof![Just(Cut::Both), Just(Cut::ToNode), Just(Cut::FromNode)];
    prop_oneof![
        (client.clone(), 0usize..5, cut).prop_map(|(client, node, cut)| Fault::Partition {
            client,
            node,
            cut
        }),
        (client, 0usize..5).prop_map(|(client, node)| Fault::Heal { client, node }),
        (0usize..5).prop_map(|node| Fault::Crash {
            node,
            lose_state: false
        }),
        (0usize..5).prop_map(|node| Fault::Restart { node }),
        (0usize..3, 0u64..100).prop_map(|(client, ms)| Fault::Pause {
            client,
            for_ns: ms * MS
        }),
        (1u64..20, 0u32..200_000).prop_map(|(ms, drop_ppm)| Fault::Net(NetParams {
            delay_ns: (100_000, ms * MS),
            drop_ppm,
            dup_ppm: 0,
            reorder: false,
        })),
    ]
}

fn schedule(f: impl Strategy<Value = Fault>) -> impl Strategy<Value = Vec<(u64, Fault)>> {
    // Faults happen before the base setup goes quiet at 1 s.
    proptest::collection::vec(((0u64..950).prop_map(|ms| ms * MS), f), 0..24)
}

fn setup_with(faults: Vec<(u64, Fault)>) -> Setup {
    let mut s = lucky_sim::redis::base(&mut Rng::new(0));
    s.faults = faults;
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn redlock_is_safe_under_any_assumption_keeping_schedule(
        faults in schedule(fault()),
        seed in any::<u64>(),
    ) {
        let out = setup_with(faults).run(seed, None);
        let bad: Vec<String> = out.report.unexpected().map(|v| v.to_string()).collect();
        prop_assert!(bad.is_empty(), "{bad:?}");
    }
}

/// Node clock jumps break RedLock. Asking proptest for a schedule under which no violation at
/// all occurs, it must find a counterexample and shrink it to the jumps that matter.
#[test]
fn a_failing_schedule_shrinks_to_its_cause() {
    let jump = (0usize..5).prop_map(|node| Fault::ClockJump {
        node,
        by_ns: 400 * MS as i64,
    });
    let any = prop_oneof![3 => fault(), 2 => jump];
    // A fixed generator: the example is the same on every run.
    let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let config = Config {
        cases: 256,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(config, rng);
    let result = runner.run(&schedule(any), |faults| {
        let out = setup_with(faults).run(1, None);
        prop_assert!(
            out.report.violations.is_empty(),
            "{:?}",
            out.report.violations
        );
        Ok(())
    });
    let Err(TestError::Fail(_, minimal)) = result else {
        panic!("no failing schedule found: {result:?}")
    };
    let jumps = minimal
        .iter()
        .filter(|(_, f)| matches!(f, Fault::ClockJump { .. }))
        .count();
    eprintln!("minimal failing schedule: {minimal:?}");
    // Shrunk to its cause: it still fails, and leaving out any one fault makes it pass.
    let fails = |faults: &[(u64, Fault)]| {
        !setup_with(faults.to_vec())
            .run(1, None)
            .report
            .violations
            .is_empty()
    };
    assert!(fails(&minimal), "the shrunk schedule fails");
    for i in 0..minimal.len() {
        let mut without = minimal.clone();
        without.remove(i);
        assert!(
            !fails(&without),
            "not shrunk: it fails without {:?} too: {minimal:?}",
            minimal[i]
        );
    }
    assert!(minimal.len() <= 6, "not shrunk: {minimal:?}");
    assert!(
        jumps >= 1,
        "the minimal schedule must keep a clock jump: {minimal:?}"
    );
}
