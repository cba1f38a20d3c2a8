//! Rust stage-latency target: functions reached by their demangled paths (`*::tokenize`).
//! Prints `READY <pid>`, waits for a line, runs ITERATIONS x (tokenize + 3 decode_step) on two
//! threads, prints its truth as JSON, waits for a last line.

use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Truth: time spent inside `tokenize`, measured by itself.
static TOKENIZE_NS: AtomicU64 = AtomicU64::new(0);

mod pipeline {
    use super::*;

    #[inline(never)]
    pub fn tokenize(us: u64) -> u64 {
        let t0 = Instant::now();
        let r = spin(us);
        TOKENIZE_NS.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }

    #[inline(never)]
    pub fn decode_step(us: u64) -> u64 {
        spin(us)
    }

    /// Pure arithmetic for the CPU-profile test (its samples land in this function itself).
    #[inline(never)]
    pub fn burn_rust(seconds: f64) -> u64 {
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        let mut x = 7u64;
        while Instant::now() < end {
            for _ in 0..20_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(3));
            }
        }
        x
    }

    fn spin(us: u64) -> u64 {
        let end = Instant::now() + Duration::from_micros(us);
        let mut n = 0u64;
        while Instant::now() < end {
            n = std::hint::black_box(n + 1);
        }
        n
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("burn") {
        let secs: f64 = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(3.0);
        println!("READY {}", std::process::id());
        std::hint::black_box(pipeline::burn_rust(secs));
        return;
    }
    let iterations: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    println!("READY {}", std::process::id());
    let stdin = std::io::stdin();
    let mut line = String::new();
    let _ = stdin.lock().read_line(&mut line);
    let workers: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..iterations {
                    std::hint::black_box(pipeline::tokenize(100));
                    for _ in 0..3 {
                        std::hint::black_box(pipeline::decode_step(50));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    println!(
        "{{\"tokenize_calls\":{},\"decode_step_calls\":{},\"tokenize_mean_ns\":{}}}",
        2 * iterations,
        6 * iterations,
        TOKENIZE_NS.load(Ordering::Relaxed) / (2 * iterations).max(1)
    );
    line.clear();
    let _ = stdin.lock().read_line(&mut line);
}
