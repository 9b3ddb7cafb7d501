//! Seeds of the text parsers: refvmm command lines and API requests.

use super::Seed;

/// Accepted and refused refvmm (and `refvmm ctl`) command lines, one argument per line.
pub fn cli_seeds() -> Vec<Seed> {
    let lines: [(&str, &str); 24] = [
        ("minimal", "--kernel\n@kernel"),
        ("everything", "--kernel\n@kernel\n--initrd\n@empty\n--cmdline\nconsole=ttyS0 earlycon\n--cpus\n4\n--memory\n1G\n--mte\n--sdei\n--pmu\n--sve\n--pauth\n--its\n--seccomp\nlog\n--api-socket\n/run/refvmm.sock"),
        ("equals-forms", "--kernel=@kernel\n--memory=64m\n--cpus=123\n--seccomp=off"),
        ("memory-bytes", "--kernel\n@kernel\n--memory\n134217728"),
        ("memory-too-small", "--kernel\n@kernel\n--memory\n32M"),
        ("memory-too-large", "--kernel\n@kernel\n--memory\n257G"),
        ("memory-not-2m-multiple", "--kernel\n@kernel\n--memory\n65537K"),
        ("memory-bad-suffix", "--kernel\n@kernel\n--memory\n12X"),
        ("memory-overflow", "--kernel\n@kernel\n--memory\n99999999999999G"),
        ("cpus-zero", "--kernel\n@kernel\n--cpus\n0"),
        ("cpus-too-many", "--kernel\n@kernel\n--cpus\n124"),
        ("cpus-not-a-number", "--kernel\n@kernel\n--cpus\nfour"),
        ("kernel-missing", "--kernel\n@missing"),
        ("kernel-empty", "--kernel\n@empty"),
        ("kernel-directory", "--kernel\n@dir"),
        ("initrd-missing", "--kernel\n@kernel\n--initrd\n@missing"),
        ("cmdline-nul", "--kernel\n@kernel\n--cmdline\nroot=/dev/vda\0"),
        ("unknown-flag", "--kernel\n@kernel\n--frobnicate"),
        ("no-kernel", "--cpus\n2"),
        ("help", "--help"),
        ("restore-not-a-snapshot", "--restore\n@dir\n--seccomp\noff"),
        ("restore-missing", "--restore=@missing"),
        ("ctl-status", "ctl\n--api-socket\n/run/refvmm.sock\nstatus"),
        ("ctl-sdei-signal", "ctl\n--api-socket\n/run/refvmm.sock\nsdei-signal\n0x1000000\n1"),
    ];
    let pmem: [(&str, &str); 9] = [
        (
            "pmem-memfd-and-file",
            "--kernel\n@kernel\n--pmem\nmemfd,size=4M\n--pmem\nfile=@pmem,readonly=on",
        ),
        (
            "pmem-file-with-size",
            "--kernel\n@kernel\n--pmem=size=2M,file=@pmem",
        ),
        (
            "pmem-file-too-small",
            "--kernel\n@kernel\n--pmem\nfile=@pmem,size=4M",
        ),
        (
            "pmem-file-not-whole-granules",
            "--kernel\n@kernel\n--pmem\nfile=@kernel",
        ),
        ("pmem-empty-file", "--kernel\n@kernel\n--pmem\nfile=@empty"),
        (
            "pmem-missing-file",
            "--kernel\n@kernel\n--pmem\nfile=@missing,size=2M",
        ),
        ("pmem-directory", "--kernel\n@kernel\n--pmem\nfile=@dir"),
        (
            "pmem-unaligned-size",
            "--kernel\n@kernel\n--pmem\nmemfd,size=3M",
        ),
        (
            "pmem-bad-syntax",
            "--kernel\n@kernel\n--pmem\nmemfd,size=2M,discard=on,,",
        ),
    ];
    let mut seeds: Vec<Seed> = lines
        .into_iter()
        .chain(pmem)
        .map(|(name, text)| Seed::new("refvmm_cli", name, text))
        .collect();
    let long = format!("--kernel\n@kernel\n--cmdline\n{}", "a".repeat(2048));
    seeds.push(Seed::new("refvmm_cli", "cmdline-too-long", long));
    seeds
}

/// Accepted and refused API request lines.
pub fn api_seeds() -> Vec<Seed> {
    let lines: [(&str, &str); 17] = [
        ("status", "status\n"),
        ("pause", "pause"),
        ("resume", "resume\r\n"),
        ("quit", " quit "),
        ("snapshot", "snapshot /var/lib/refvmm/snap-1"),
        ("snapshot-no-dir", "snapshot"),
        ("signal-hex", "sdei-signal 0x1000000"),
        ("signal-decimal-vcpu", "sdei-signal 16777216 2"),
        ("signal-upper-hex", "sdei-signal 0X2010000 0x1"),
        ("signal-out-of-range", "sdei-signal 0x100000000"),
        ("signal-not-a-number", "sdei-signal event"),
        ("signal-too-many-words", "sdei-signal 1 2 3"),
        ("signal-missing-event", "sdei-signal"),
        ("empty", ""),
        ("whitespace", " \t \r\n"),
        ("unknown", "reboot now"),
        ("negative", "sdei-signal -1 -1"),
    ];
    lines
        .into_iter()
        .map(|(name, text)| Seed::new("refvmm_api", name, text))
        .collect()
}

/// Byte streams a client may send on the API socket: whole request lines, several lines at
/// once, no newline, a line over the size limit, bytes that are not UTF-8.
pub fn api_framing_seeds() -> Vec<Seed> {
    let mut streams: Vec<(&str, Vec<u8>)> = vec![
        ("status", b"status\n".to_vec()),
        ("snapshot", b"snapshot /var/lib/refvmm/snap-1\n".to_vec()),
        ("signal", b"sdei-signal 0x1000000 1\n".to_vec()),
        ("two-lines", b"pause\nquit\n".to_vec()),
        ("no-newline", b"resume".to_vec()),
        ("crlf", b"status\r\n".to_vec()),
        ("empty", Vec::new()),
        ("only-newline", b"\n".to_vec()),
        ("not-utf8", b"status \xff\xfe\n".to_vec()),
        ("nul", b"stat\0us\n".to_vec()),
    ];
    let mut long = vec![b'x'; refvmm::api::MAX_REQUEST + 10];
    long.push(b'\n');
    streams.push(("over-the-limit", long));
    let mut edge = b"snapshot /".to_vec();
    edge.resize(refvmm::api::MAX_REQUEST - 1, b'a');
    edge.push(b'\n');
    streams.push(("exactly-the-limit", edge));
    streams
        .into_iter()
        .map(|(name, data)| Seed::new("refvmm_api_framing", name, data))
        .collect()
}
