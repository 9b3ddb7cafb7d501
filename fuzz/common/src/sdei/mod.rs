//! Target `sdei_sequences`: SDEI call sequences across several vCPUs, mixed with VMM raises,
//! dispatches, resets and migrations, with the dispatcher's invariants checked after every
//! step (by `sdei_dispatch::testing::Model`, re-exported here as [`Model`]).

pub mod harness;
pub mod input;

pub use input::{decode_ops, encode_ops, Arg, Op};
pub use sdei_dispatch::testing::Model;

/// Decodes `data` into a sequence of [`Op`]s and runs it on a fresh [`Model`] of the
/// [`harness`] VM, checking the invariants after every op.
///
/// # Panics
///
/// If the dispatcher breaks an invariant.
pub fn run_sdei_sequences(data: &[u8]) {
    let mut model = Model::new(harness::config());
    for op in decode_ops(data) {
        model.step(op.into());
        model.check_invariants();
    }
}
