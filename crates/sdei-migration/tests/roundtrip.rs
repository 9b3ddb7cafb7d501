//! Property tests: random dispatcher states survive save and restore, and the restored
//! dispatcher then behaves exactly as the source would have.

mod common;

use common::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use sdei_migration::{load, save, Snapshot};

fn scenario() -> impl Strategy<Value = (usize, Vec<Op>, Vec<Op>, Vec<bool>)> {
    vm_state().prop_flat_map(|(vcpus, ops)| {
        (
            Just(vcpus),
            Just(ops),
            prop::collection::vec(op(vcpus), 0..30),
            prop::collection::vec(any::<bool>(), 8),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn restored_dispatcher_finishes_handlers_like_the_source(
        (vcpus, ops, after, resume) in scenario()
    ) {
        let mut source = build(vcpus, &ops);
        let bytes = save(&source.sdei).unwrap();

        let restored = load(&bytes, config(vcpus)).unwrap();
        let mut copy = Vm { sdei: restored, regs: source.regs.clone() };

        prop_assert_eq!(copy.sdei.state(), source.sdei.state());
        // Complete every running handler on both, with identical registers.
        finish_handlers(&mut source, &resume);
        finish_handlers(&mut copy, &resume);
        prop_assert_eq!(&copy.regs, &source.regs);
        prop_assert_eq!(copy.sdei.state(), source.sdei.state());
        // And keep going: pending events, new calls, dispatches.
        for op in &after {
            source.step(op);
            copy.step(op);
        }
        prop_assert_eq!(&copy.regs, &source.regs);
        prop_assert_eq!(copy.sdei.state(), source.sdei.state());
    }

    #[test]
    fn encoding_is_deterministic_and_decodes_to_the_same_state((vcpus, ops) in vm_state()) {
        let vm = build(vcpus, &ops);
        let snapshot = Snapshot::capture(&vm.sdei);

        let bytes = snapshot.encode().unwrap();
        let decoded = Snapshot::decode(&bytes).unwrap();

        prop_assert_eq!(decoded.encode().unwrap(), bytes);
        prop_assert_eq!(decoded, snapshot);
    }
}

#[test]
fn random_states_include_nested_and_mid_handler_ones() {
    // Guards the properties against vacuity: the generator reaches the interesting states.
    let mut runner = TestRunner::deterministic();
    let strategy = vm_state();
    let (mut nested, mut running, mut pending, mut shared_running) = (0, 0, 0, 0);
    for _ in 0..300 {
        let (vcpus, ops) = strategy.new_tree(&mut runner).unwrap().current();
        let vm = build(vcpus, &ops);
        let state = vm.sdei.state();
        nested += usize::from(
            state
                .vcpus
                .iter()
                .any(|v| v.normal.is_some() && v.critical.is_some()),
        );
        running += usize::from((0..vcpus).any(|v| vm.depth(v) > 0));
        let private_pending = state
            .vcpus
            .iter()
            .flat_map(|v| &v.private_events)
            .any(|e| e.pending);
        let shared_pending = state.shared_events.iter().any(|s| s.entry.pending);
        pending += usize::from(private_pending || shared_pending);
        shared_running += usize::from(state.shared_events.iter().any(|s| s.running_on.is_some()));
    }

    println!("nested {nested}, running {running}, pending {pending}, shared {shared_running}");
    assert!(
        nested >= 60,
        "nested critical-over-normal states: {nested}/300"
    );
    assert!(
        running >= 120,
        "states with a running handler: {running}/300"
    );
    assert!(pending >= 45, "states with a pending event: {pending}/300");
    assert!(
        shared_running >= 12,
        "states running a shared handler: {shared_running}/300"
    );
}

#[test]
fn nested_handlers_complete_to_the_contexts_saved_before_migration() {
    let mut vm = build(2, &nest_on(1));
    let mut copy = Vm {
        sdei: load(&save(&vm.sdei).unwrap(), config(2)).unwrap(),
        regs: vec![Default::default(); 2],
    };
    vm.regs[1] = Default::default();

    finish_handlers(&mut copy, &[]);

    // nest_on marks the context interrupted by the normal handler with tag 0x11.
    let mut expected = Vm::with_config(config(2));
    expected.mark(1, 0x11);
    assert_eq!(copy.regs[1], expected.regs[1]);
}
