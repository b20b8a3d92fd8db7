//! `kobo-fuzz <target>|all --seconds N`: mutates seed inputs for N seconds per target.
use kobo_fuzz::{TARGETS, Target};
use std::path::Path;
use std::time::{Duration, Instant};

/// xorshift64: reproducible and dependency-free; quality is not the point.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "null",
    "true",
    "-1",
    "1e999",
    "18446744073709551616",
    "-9223372036854775809",
    "\"\\u0000\"",
    "\"\u{10ffff}\"",
    "\"\\ud800\"",
    "[[[[[[[[",
    "\n",
    "- ",
    ": ",
    "&a",
    "*a",
    "!!",
    "\t",
];

fn mutate(rng: &mut Rng, pool: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(6) {
            0 => input.truncate(at),
            1 if !input.is_empty() => {
                let i = at.min(input.len() - 1);
                input[i] ^= 1 << rng.below(8);
            }
            2 => input
                .splice(at..at, TOKENS[rng.below(TOKENS.len())].bytes())
                .for_each(drop),
            3 => {
                let other = &pool[rng.below(pool.len())];
                let from = rng.below(other.len() + 1);
                input
                    .splice(at..at, other[from..].iter().copied())
                    .for_each(drop);
            }
            4 if at < input.len() => {
                let end = at + rng.below(input.len() - at);
                let copy = input[at..end].to_vec();
                input.splice(at..at, copy).for_each(drop);
            }
            _ => input.insert(at, rng.next() as u8),
        }
    }
    input.truncate(64 * 1024);
}

fn fuzz(target: &Target, seconds: u64) {
    let mut pool: Vec<Vec<u8>> = target.seeds.iter().map(|s| s.as_bytes().to_vec()).collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(target.name);
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        pool.push(std::fs::read(entry.path()).unwrap_or_default());
    }
    if pool.is_empty() {
        pool.push(b"{}".to_vec());
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seconds);
    let (start, budget) = (Instant::now(), Duration::from_secs(seconds));
    let mut runs = 0u64;
    while start.elapsed() < budget {
        let mut input = pool[rng.below(pool.len())].clone();
        mutate(&mut rng, &pool, &mut input);
        std::fs::write("/tmp/kobo-fuzz-current", &input).ok();
        (target.run)(&input);
        runs += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:<11} {runs:>10} runs  {:>8.0} exec/s  no crash",
        target.name,
        runs as f64 / secs
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map(String::as_str).unwrap_or("all");
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(600);
    for t in TARGETS.iter().filter(|t| which == "all" || t.name == which) {
        fuzz(t, seconds);
    }
}
