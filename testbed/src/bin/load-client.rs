//! `load-client --addr 127.0.0.1:PORT --requests N --concurrency C [--keepalive]
//!  [--query "tokens=20&interval_ms=7"] [--id-prefix r]`
//!
//! Prints `DONE requests=N errors=E` and exits non-zero if any request failed.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Drive an SSE test server with concurrent streaming requests")]
struct Args {
    /// Server address, e.g. 127.0.0.1:8080.
    #[arg(long)]
    addr: String,
    /// Total number of requests.
    #[arg(long, default_value_t = 1)]
    requests: usize,
    /// Worker threads (simultaneous connections).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Reuse each worker's connection across requests.
    #[arg(long)]
    keepalive: bool,
    /// Query string appended to every request (without the `?`).
    #[arg(long, default_value = "")]
    query: String,
    /// Request ids are `<id-prefix><n>`, n counting from 0.
    #[arg(long, default_value = "r")]
    id_prefix: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let summary =
        testbed::run_load(&args.addr, args.requests, args.concurrency, args.keepalive, &args.query, &args.id_prefix)?;
    for r in summary.results.iter().filter(|r| r.error.is_some()).take(10) {
        eprintln!("request {} failed: {}", r.id, r.error.as_deref().unwrap_or_default());
    }
    println!("DONE requests={} errors={}", summary.requests, summary.errors);
    if summary.errors > 0 {
        std::process::exit(1);
    }
    Ok(())
}
