//! Rust stage-latency target: functions reached by their demangled paths (`*::tokenize`).
//! Prints `READY <pid>`, waits for a line, runs ITERATIONS x (tokenize + 3 decode_step) on two
//! threads, prints its truth as JSON, waits for a last line.

use std::io::BufRead;
use std::time::{Duration, Instant};

mod pipeline {
    use super::*;

    #[inline(never)]
    pub fn tokenize(us: u64) -> u64 {
        spin(us)
    }

    #[inline(never)]
    pub fn decode_step(us: u64) -> u64 {
        spin(us)
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
    println!("{{\"tokenize_calls\":{},\"decode_step_calls\":{}}}", 2 * iterations, 6 * iterations);
    line.clear();
    let _ = stdin.lock().read_line(&mut line);
}
