//! Seeds of `virtio_pmem`: queues as Linux's virtio-pmem driver fills them (a request buffer
//! and an answer buffer per flush), and the ways a driver can get them wrong.

use super::Seed;
use crate::virtio_pmem::{ctrl, flags, InputBuilder as B, RAM_BASE, RAM_SIZE};
use refvmm::devices::virtio::pmem::REQ_TYPE_FLUSH;

const DATA: u64 = B::DATA as u64;

fn seed(name: &str, input: &B) -> Seed {
    Seed::new("virtio_pmem", name, input.build())
}

/// Every `virtio_pmem` seed.
pub fn virtio_pmem_seeds() -> Vec<Seed> {
    let mut seeds = vec![
        // Bare request bytes: only the parser sees these.
        Seed::new(
            "virtio_pmem",
            "parser-flush",
            REQ_TYPE_FLUSH.to_le_bytes().to_vec(),
        ),
        Seed::new(
            "virtio_pmem",
            "parser-unknown-type",
            1u32.to_le_bytes().to_vec(),
        ),
        Seed::new("virtio_pmem", "parser-short", vec![0, 0]),
        Seed::new("virtio_pmem", "parser-empty", Vec::new()),
    ];

    seeds.push(seed(
        "flush-one",
        B::standard(16, 0).request(0, REQ_TYPE_FLUSH),
    ));
    seeds.push(seed(
        "flush-three-one-notification",
        B::standard(16, 0)
            .request(0, REQ_TYPE_FLUSH)
            .request(1, REQ_TYPE_FLUSH)
            .request(2, REQ_TYPE_FLUSH),
    ));
    seeds.push(seed(
        "flush-full-queue-of-256",
        &(0..128).fold(B::standard(256, 0), |mut b, i| {
            b.request(i, REQ_TYPE_FLUSH);
            b
        }),
    ));
    seeds.push(seed(
        "flush-fails",
        B::standard(16, ctrl::FLUSH_FAILS).request(0, REQ_TYPE_FLUSH),
    ));
    seeds.push(seed(
        "flush-reset-and-again",
        B::standard(16, ctrl::RESET_AGAIN | 2).request(0, REQ_TYPE_FLUSH),
    ));
    seeds.push(seed(
        "notify-before-driver-ok",
        B::standard(16, ctrl::EARLY_NOTIFY | 1).request(0, REQ_TYPE_FLUSH),
    ));
    seeds.push(seed(
        "no-version-1",
        B::standard(16, ctrl::NO_VERSION_1).request(0, REQ_TYPE_FLUSH),
    ));
    seeds.push(seed(
        "unknown-type-and-flush",
        B::standard(16, 0)
            .request(0, 0x8000_0001)
            .request(1, REQ_TYPE_FLUSH),
    ));
    seeds.push(seed(
        "request-split-in-two",
        B::standard(16, 0)
            .put(DATA, &[0, 0])
            .put(DATA + 0x10, &[0, 0])
            .desc(0, DATA, 2, flags::NEXT, 1)
            .desc(1, DATA + 0x10, 2, flags::NEXT, 2)
            .desc(2, DATA + 0x20, 8, flags::WRITE, 0)
            .avail(0),
    ));
    seeds.push(seed(
        "request-too-short",
        B::standard(16, 0)
            .desc(0, DATA, 2, flags::NEXT, 1)
            .desc(1, DATA + 8, 4, flags::WRITE, 0)
            .avail(0),
    ));
    seeds.push(seed(
        "no-answer-buffer",
        B::standard(16, 0).desc(0, DATA, 4, 0, 0).avail(0),
    ));
    seeds.push(seed(
        "answer-buffer-too-small",
        B::standard(16, 0)
            .desc(0, DATA, 4, flags::NEXT, 1)
            .desc(1, DATA + 8, 3, flags::WRITE, 0)
            .avail(0),
    ));
    seeds.push(seed(
        "readable-after-writable",
        B::standard(16, 0)
            .desc(0, DATA, 4, flags::NEXT, 1)
            .desc(1, DATA + 8, 4, flags::WRITE | flags::NEXT, 2)
            .desc(2, DATA + 16, 4, 0, 0)
            .avail(0),
    ));
    seeds.push(seed(
        "request-outside-ram",
        B::standard(16, 0)
            .raw_desc(0, RAM_BASE + RAM_SIZE - 2, 4, flags::NEXT, 1)
            .desc(1, DATA + 8, 4, flags::WRITE, 0)
            .avail(0),
    ));
    seeds.push(seed(
        "answer-outside-ram",
        B::standard(16, 0)
            .desc(0, DATA, 4, flags::NEXT, 1)
            .raw_desc(1, 0x10_0000_0000, 4, flags::WRITE, 0)
            .avail(0),
    ));
    seeds.push(seed(
        "answers-at-the-top-of-the-address-space",
        B::standard(16, 0)
            .desc(0, DATA, 4, flags::NEXT, 1)
            .raw_desc(1, u64::MAX - 1, 4, flags::WRITE, 0)
            .desc(2, DATA, 4, flags::NEXT, 3)
            .raw_desc(3, u64::MAX - 3, 4, flags::WRITE, 0)
            .avail(0)
            .avail(2),
    ));
    seeds.push(seed(
        "descriptor-loop",
        B::standard(16, 0)
            .desc(0, DATA, 4, flags::NEXT, 1)
            .desc(1, DATA + 8, 4, flags::NEXT, 0)
            .avail(0),
    ));
    seeds.push(seed(
        "next-beyond-the-table",
        B::standard(16, 0)
            .desc(0, DATA, 4, flags::NEXT, 500)
            .avail(0),
    ));
    seeds.push(seed(
        "lengths-past-4-gib",
        B::standard(16, 0)
            .desc(0, DATA, u32::MAX, flags::NEXT, 1)
            .desc(1, DATA + 8, 4, flags::WRITE, 0)
            .avail(0),
    ));
    seeds.push(seed(
        "head-outside-the-queue",
        B::standard(8, 0).request(0, REQ_TYPE_FLUSH).avail(9),
    ));
    seeds.push(seed(
        "avail-index-far-ahead",
        B::standard(8, 0)
            .request(0, REQ_TYPE_FLUSH)
            .set_avail_idx(40),
    ));
    seeds.push(seed(
        "answer-on-the-used-ring",
        B::standard(16, 0)
            .desc(0, DATA, 4, flags::NEXT, 1)
            .desc(1, u64::from(B::USED) + 4, 4, flags::WRITE, 0)
            .avail(0),
    ));
    seeds.push(seed(
        "stale-used-index-nothing-available",
        B::standard(16, 0).put(u64::from(B::USED) + 2, &64u16.to_le_bytes()),
    ));
    let table = DATA + 0x400;
    seeds.push(seed(
        "indirect-table",
        B::standard(16, 0)
            .put(
                table,
                &indirect(&[(DATA, 4, flags::NEXT, 1), (DATA + 8, 4, flags::WRITE, 0)]),
            )
            .desc(0, table, 32, flags::INDIRECT, 0)
            .avail(0),
    ));
    seeds.push(seed(
        "indirect-inside-indirect",
        B::standard(16, 0)
            .put(table, &indirect(&[(table, 16, flags::INDIRECT, 0)]))
            .desc(0, table, 16, flags::INDIRECT, 0)
            .avail(0),
    ));
    seeds.push(seed(
        "queue-size-not-a-power-of-two",
        B::standard(12, 0).request(0, REQ_TYPE_FLUSH),
    ));
    seeds.push(seed(
        "queue-size-above-max",
        B::standard(512, 0).request(0, REQ_TYPE_FLUSH),
    ));
    seeds.push(seed("queue-size-zero", &B::standard(0, 0)));
    seeds.push(seed(
        "rings-misaligned",
        B::at(16, 0, 0x0008, 0x1001, 0x2002).request(0, REQ_TYPE_FLUSH),
    ));
    seeds.push(seed(
        "used-ring-past-ram",
        B::at(16, 0, 0x0000, 0x1000, 0xfff0).request(0, REQ_TYPE_FLUSH),
    ));
    seeds
}

/// An indirect descriptor table: (RAM offset, length, flags, next) per entry.
fn indirect(entries: &[(u64, u32, u16, u16)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(off, len, f, next) in entries {
        out.extend_from_slice(&(RAM_BASE + off).to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&f.to_le_bytes());
        out.extend_from_slice(&next.to_le_bytes());
    }
    out
}

fn rng_seed(name: &str, input: &B) -> Seed {
    Seed::new("virtio_rng", name, input.build())
}

/// Every `virtio_rng` seed: buffers as Linux's virtio-rng driver offers them (one writable
/// buffer per request), and the ways a driver can get them wrong.
pub fn virtio_rng_seeds() -> Vec<Seed> {
    vec![
        rng_seed(
            "one-buffer",
            B::standard(16, 0)
                .desc(0, DATA, 64, flags::WRITE, 0)
                .avail(0),
        ),
        rng_seed(
            "readable-then-two-writable",
            B::standard(16, 0)
                .desc(0, DATA, 16, flags::NEXT, 1)
                .desc(1, DATA + 0x100, 32, flags::NEXT | flags::WRITE, 2)
                .desc(2, DATA + 0x200, 32, flags::WRITE, 0)
                .avail(0),
        ),
        rng_seed(
            "two-requests-three-notifications",
            B::standard(16, 3)
                .desc(0, DATA, 16, flags::WRITE, 0)
                .desc(1, DATA + 0x100, 4096, flags::WRITE, 0)
                .avail(0)
                .avail(1),
        ),
        rng_seed(
            "huge-length",
            B::standard(16, 0)
                .desc(0, DATA, u32::MAX, flags::WRITE, 0)
                .avail(0),
        ),
        rng_seed(
            "buffer-outside-ram",
            B::standard(16, 0)
                .raw_desc(0, RAM_BASE + RAM_SIZE - 8, 64, flags::WRITE, 0)
                .avail(0),
        ),
        rng_seed(
            "source-fails",
            B::standard(16, ctrl::FLUSH_FAILS)
                .desc(0, DATA, 64, flags::WRITE, 0)
                .avail(0),
        ),
        rng_seed(
            "no-writable-buffer",
            B::standard(16, 0).desc(0, DATA, 64, 0, 0).avail(0),
        ),
        rng_seed("head-beyond-queue", B::standard(16, 0).avail(40)),
        rng_seed(
            "indirect-table",
            B::standard(16, 0)
                .put(
                    DATA + 0x800,
                    &indirect(&[
                        (DATA, 16, flags::NEXT | flags::WRITE, 1),
                        (DATA + 0x100, 16, flags::WRITE, 0),
                    ]),
                )
                .desc(0, DATA + 0x800, 32, flags::INDIRECT, 0)
                .avail(0),
        ),
        rng_seed(
            "full-queue",
            &(0..16).fold(B::standard(16, 0), |mut b, i| {
                b.desc(i, DATA + 0x100 * u64::from(i), 256, flags::WRITE, 0)
                    .avail(i);
                b
            }),
        ),
        rng_seed(
            "driver-wants-no-interrupt",
            B::standard(16, 0)
                .desc(0, DATA, 64, flags::WRITE, 0)
                .avail(0)
                .put(u64::from(B::AVAIL), &1u16.to_le_bytes()),
        ),
    ]
}

fn blk_seed(name: &str, input: &B) -> Seed {
    Seed::new("virtio_blk", name, input.build())
}

/// A block request as Linux's virtio_blk driver builds it: header, data, status, each in its
/// own descriptor from `first`, with the header and the status in `DATA + 0x100 * first`.
fn blk_request(b: &mut B, first: u16, kind: u32, sector: u64, len: u32, write: bool) -> &mut B {
    use refvmm::devices::virtio::block::HEADER_LEN as H;
    let at = DATA + 0x100 * u64::from(first);
    let mut header = kind.to_le_bytes().to_vec();
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&sector.to_le_bytes());
    let data_flags = flags::NEXT | if write { flags::WRITE } else { 0 };
    b.put(at, &header)
        .desc(first, at, H as u32, flags::NEXT, first + 1)
        .desc(first + 1, DATA + 0x2000, len, data_flags, first + 2)
        .desc(first + 2, at + 0x80, 1, flags::WRITE, 0)
        .avail(first)
}

/// Every `virtio_blk` seed: requests as Linux's virtio_blk driver queues them (reads, writes,
/// flushes, `GET_ID`, discard and write-zeroes), and the ways a driver can get them wrong.
pub fn virtio_blk_seeds() -> Vec<Seed> {
    use crate::virtio_blk::READ_ONLY;
    use refvmm::devices::virtio::block::req;
    let one = |kind, sector, len, write| {
        let mut b = B::standard(16, 0);
        blk_request(&mut b, 0, kind, sector, len, write);
        b
    };
    let mut segs = Vec::new();
    for (sector, n, f) in [(4u64, 8u32, 0u32), (64, 2, 1)] {
        segs.extend_from_slice(&sector.to_le_bytes());
        segs.extend_from_slice(&n.to_le_bytes());
        segs.extend_from_slice(&f.to_le_bytes());
    }
    let mut zeroes = one(req::WRITE_ZEROES, 0, 32, false);
    zeroes.put(DATA + 0x2000, &segs);
    let mut discard = one(req::DISCARD, 0, 16, false);
    discard.put(DATA + 0x2000, &segs[..16]);
    let mut read_only = B::standard(16, READ_ONLY);
    blk_request(&mut read_only, 0, req::OUT, 0, 512, false);
    blk_request(&mut read_only, 3, req::IN, 0, 512, true);
    let mut three = B::standard(16, 2);
    blk_request(&mut three, 0, req::IN, 0, 4096, true);
    blk_request(&mut three, 3, req::OUT, 8, 1024, false);
    blk_request(&mut three, 6, req::FLUSH, 0, 0, false);
    let mut failing = B::standard(16, ctrl::FLUSH_FAILS);
    blk_request(&mut failing, 0, req::IN, 0, 512, true);
    vec![
        blk_seed("read-4k", &one(req::IN, 0, 4096, true)),
        blk_seed("write-1k", &one(req::OUT, 2, 1024, false)),
        blk_seed("flush", &one(req::FLUSH, 0, 0, false)),
        blk_seed("get-id", &one(req::GET_ID, 0, 20, true)),
        blk_seed("write-zeroes-two-segments", &zeroes),
        blk_seed("discard", &discard),
        blk_seed("read-only-write-then-read", &read_only),
        blk_seed("three-requests-three-notifications", &three),
        blk_seed("disk-fails", &failing),
        blk_seed("read-past-the-end", &one(req::IN, 127, 1024, true)),
        blk_seed("partial-sector", &one(req::OUT, 0, 100, false)),
        blk_seed("unknown-type", &one(0x55, 0, 512, true)),
        blk_seed(
            "no-status-byte",
            B::standard(16, 0).desc(0, DATA, 16, 0, 0).avail(0),
        ),
    ]
}
