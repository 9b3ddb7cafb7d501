//! Writes the seed corpora: `cargo run --manifest-path fuzz/Cargo.toml -p fuzz-common
//! --bin gen_corpus [DIR]` (default `fuzz/corpus`). Seed files are overwritten and files
//! that are no longer seeds are removed.

fn main() -> std::io::Result<()> {
    let root = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(fuzz_common::corpus::default_dir);
    let written = fuzz_common::corpus::write_all(&root)?;
    println!("wrote {written} seed files under {}", root.display());
    Ok(())
}
