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
