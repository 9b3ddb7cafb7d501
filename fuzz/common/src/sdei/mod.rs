//! Target `sdei_sequences`: SDEI call sequences across several vCPUs, mixed with VMM raises,
//! dispatches, resets and migrations, with the dispatcher's invariants checked after every
//! step (see [`model`]).

pub mod harness;
pub mod input;
pub mod model;

pub use input::{decode_ops, encode_ops, Arg, Op};
pub use model::Model;

/// Decodes `data` into a sequence of [`Op`]s and runs it on a fresh [`Model`], checking the
/// invariants after every op.
///
/// # Panics
///
/// If the dispatcher breaks an invariant.
pub fn run_sdei_sequences(data: &[u8]) {
    let mut model = Model::new();
    for op in decode_ops(data) {
        model.step(op);
        model.check_invariants();
    }
}
