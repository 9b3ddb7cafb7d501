//! Small helpers: a printable failure and process spawning.

use std::fmt;
use std::path::PathBuf;
use std::process::Command;

/// A failure with a message for the person running the tool.
#[derive(Debug)]
pub struct Fail(String);

impl Fail {
    /// Wraps a message.
    pub fn new(msg: impl Into<String>) -> Self {
        Fail(msg.into())
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command with inherited output; non-zero exit is a failure.
pub fn cmd_status(c: &mut Command) -> Result<(), Fail> {
    let d = describe(c);
    let st = c
        .status()
        .map_err(|e| Fail::new(format!("cannot run `{d}`: {e}")))?;
    if st.success() {
        Ok(())
    } else {
        Err(Fail::new(format!("`{d}` failed ({st})")))
    }
}

/// Runs a command and returns its standard output; non-zero exit is a failure.
pub fn cmd_output(c: &mut Command) -> Result<String, Fail> {
    let d = describe(c);
    let out = c
        .output()
        .map_err(|e| Fail::new(format!("cannot run `{d}`: {e}")))?;
    if !out.status.success() {
        return Err(Fail::new(format!(
            "`{d}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// Pass/fail counts parsed from libtest output.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Tests that passed.
    pub passed: u64,
    /// Tests that failed, plus test binaries that died without a summary.
    pub failed: u64,
}

impl Counts {
    /// Adds the numbers of a libtest `test result:` line, if `line` is one.
    pub fn add_libtest_line(&mut self, line: &str) -> bool {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return false;
        };
        let grab = |word: &str| -> u64 {
            rest.split(';')
                .find_map(|part| {
                    let part = part.trim();
                    let part = part.rsplit(". ").next().unwrap_or(part);
                    part.strip_suffix(word)
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
                .unwrap_or(0)
        };
        self.passed += grab(" passed");
        self.failed += grab(" failed");
        true
    }

    /// Sums two counts.
    pub fn plus(self, o: Counts) -> Counts {
        Counts {
            passed: self.passed + o.passed,
            failed: self.failed + o.failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_summary_lines_are_counted() {
        let mut c = Counts::default();
        assert!(c.add_libtest_line(
            "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s"
        ));
        assert!(c.add_libtest_line(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out"
        ));
        assert!(!c.add_libtest_line("running 5 tests"));
        assert_eq!(
            c,
            Counts {
                passed: 15,
                failed: 2
            }
        );
    }
}
