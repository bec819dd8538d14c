//! A structured fuzzer that runs on stable Rust, for every part of Gatehouse that reads input a
//! client, a provider or a user controls.
//!
//! Random bytes rarely get past a JSON parser, so most inputs are *structured*: a real body (the
//! translators' golden files, in every format) parsed, then mutated where a decoder looks: a
//! field's value replaced by one of another JSON type (the `message` that is a string, the
//! `tool_calls` that is a number), keys removed or added, arrays emptied or doubled, strings
//! swapped for the enum words the code matches on, nesting deepened, huge and negative
//! numbers; then written back, and sometimes damaged as bytes (cut, a byte changed, an escape
//! inserted). Streams are cut into random chunks. Each execution runs under `catch_unwind`: a
//! panic is a finding, kept with the input that caused it.
//!
//! `cargo run --release -p gatehouse-fuzz -- --execs 2000000` is the long campaign (outside
//! CI); `cargo test -p gatehouse-fuzz` runs every target for a few thousand executions.

pub mod mutate;
pub mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

/// xorshift64*: fast, deterministic for a seed, good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len()))
    }
}

/// A panic found: the target, the seed of its run, and the input.
#[derive(Debug, Clone)]
pub struct Finding {
    pub target: &'static str,
    pub exec: u64,
    pub message: String,
    pub input: Vec<u8>,
}

/// What running one target came to.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: &'static str,
    pub execs: u64,
    pub elapsed: Duration,
    pub findings: Vec<Finding>,
}

/// Runs `target` for `execs` executions from `seed`, keeping at most `keep` findings.
pub fn run(target: &targets::Target, execs: u64, seed: u64, keep: usize) -> Report {
    let mut rng = Rng::new(seed ^ fnv(target.name));
    let started = Instant::now();
    let mut findings = Vec::new();
    for exec in 0..execs {
        let input = (target.generate)(&mut rng);
        let mut run_rng = Rng::new(rng.next_u64());
        let result = catch_unwind(AssertUnwindSafe(|| (target.run)(&input, &mut run_rng)));
        if let Err(panic) = result
            && findings.len() < keep
        {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            findings.push(Finding {
                target: target.name,
                exec,
                message,
                input,
            });
        }
    }
    Report {
        target: target.name,
        execs,
        elapsed: started.elapsed(),
        findings,
    }
}

/// FNV-1a of a target's name, so each target draws its own sequence from one seed.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}
