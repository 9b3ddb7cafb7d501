//! `refvmm`: the reference VMM for arm64 KVM guests.
//!
//! Placeholder until the guest-boot issue lands: it only reports what it is.

fn main() {
    eprintln!("refvmm: not yet able to boot a guest");
    std::process::exit(1);
}
