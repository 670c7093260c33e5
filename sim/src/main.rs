//! The `duropg-sim` command line: run one seed and print its report, or
//! sweep a range of seeds with a progress line.
//!
//! ```text
//! cargo run -p duropg-sim -- --seed 42 [--hosts 3] [--instances 12] [--faults deadlock=0.05,pool-timeout=0.02,...]
//! cargo run -p duropg-sim -- --seeds 0..200 [same options]
//! ```
//!
//! Exit code 0 when every invariant held, 1 on any violation, 2 on bad usage.
#![forbid(unsafe_code)]

use duropg_sim::{run, FaultPlan, SimConfig};
use std::io::Write;
use std::process::ExitCode;

const USAGE: &str = "usage: duropg-sim (--seed N | --seeds A..B) [--hosts H] [--instances K] \
[--faults kind=p,...|none|all] [--safety-ms MS] [--liveness-ms MS] [--dump]
fault kinds: deadlock serialization lock-not-available read-only cached-plan unique-violation \
admin-shutdown pool-timeout cut-before-request cut-after-parse cut-before-commit cut-after-commit \
fatal-after-commit idle-kill half-open slow-reply restart notify-delayed notify-lost listener-drop \
cancel-fetch stall; skew=MS";

/// What the command line asked for.
struct Args {
    seeds: std::ops::Range<u64>,
    sweep: bool,
    config: SimConfig,
    dump: bool,
}

fn value<'a>(it: &mut impl Iterator<Item = &'a String>, flag: &str) -> Result<&'a String, String> {
    it.next().ok_or_else(|| format!("{flag} needs a value"))
}

fn number<T: std::str::FromStr>(text: &str, flag: &str) -> Result<T, String> {
    text.parse().map_err(|_| format!("{flag}: {text:?} is not a number"))
}

fn parse(argv: &[String]) -> Result<Args, String> {
    let mut args = Args {
        seeds: 0..1,
        sweep: false,
        config: SimConfig::new(0),
        dump: false,
    };
    let mut faults = String::new();
    let mut seen_seed = false;
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--seed" => {
                let s: u64 = number(value(&mut it, flag)?, flag)?;
                args.seeds = s..s + 1;
                seen_seed = true;
            }
            "--seeds" => {
                let text = value(&mut it, flag)?;
                let (a, b) = text.split_once("..").ok_or("--seeds wants A..B")?;
                args.seeds = number(a, flag)?..number(b, flag)?;
                args.sweep = true;
                seen_seed = true;
            }
            "--hosts" => args.config.hosts = number(value(&mut it, flag)?, flag)?,
            "--instances" => args.config.instances = number(value(&mut it, flag)?, flag)?,
            "--safety-ms" => args.config.safety_ms = number(value(&mut it, flag)?, flag)?,
            "--liveness-ms" => args.config.liveness_ms = number(value(&mut it, flag)?, flag)?,
            "--faults" => faults = value(&mut it, flag)?.clone(),
            "--dump" => args.dump = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !seen_seed {
        return Err("--seed or --seeds is required".into());
    }
    if args.config.hosts == 0 {
        return Err("--hosts must be at least 1".into());
    }
    args.config.faults = FaultPlan::all().with_overrides(&faults)?;
    Ok(args)
}

fn single(args: &Args) -> ExitCode {
    let config = SimConfig {
        seed: args.seeds.start,
        ..args.config.clone()
    };
    let report = run(&config);
    print!("{}", report.render());
    if args.dump {
        print!("{}", report.dump);
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn sweep(args: &Args) -> ExitCode {
    let total = args.seeds.end.saturating_sub(args.seeds.start);
    let started = std::time::Instant::now();
    let mut failed: Vec<SimConfig> = Vec::new();
    let mut injected = std::collections::BTreeMap::new();
    for (done, seed) in args.seeds.clone().enumerate() {
        let config = SimConfig {
            seed,
            ..args.config.clone()
        };
        let report = run(&config);
        for kind in duropg_sim::FaultKind::ALL {
            *injected.entry(kind).or_insert(0u64) += report.injected(kind);
        }
        if !report.passed() {
            failed.push(config);
        }
        progress(done as u64 + 1, total, failed.len(), started.elapsed());
    }
    eprintln!();
    println!(
        "swept seeds {}..{}: {} passed, {} failed in {:.1} s",
        args.seeds.start,
        args.seeds.end,
        total as usize - failed.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    let counts: Vec<String> = injected.iter().map(|(k, n)| format!("{k}={n}")).collect();
    println!("faults injected: {}", counts.join(" "));
    for config in &failed {
        println!("FAILED seed {}: {}", config.seed, config.command());
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A one-line progress bar on stderr.
fn progress(done: u64, total: u64, failed: usize, elapsed: std::time::Duration) {
    const WIDTH: u64 = 40;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let bar: String = (0..WIDTH).map(|i| if i < filled { '#' } else { '.' }).collect();
    eprint!(
        "\r[{bar}] {done}/{total} seeds, {failed} failed, {:.1} s",
        elapsed.as_secs_f64()
    );
    let _ = std::io::stderr().flush();
}

fn main() -> ExitCode {
    // The production provider's own log (`RUST_LOG=duropg=debug`), to stderr.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .without_time()
            .init();
    }
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("duropg-sim: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.sweep {
        sweep(&args)
    } else {
        single(&args)
    }
}
