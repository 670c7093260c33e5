//! The same seed gives a byte-identical report and trace hash in every
//! process that runs it (which would catch anything seeded by the process,
//! such as hash-map order or addresses).
//!
//! Runs inside one process are not compared: the production driver names
//! prepared statements from a process-wide counter (tokio-postgres's
//! `s0`, `s1`, …), so a later run in the same process sends messages of
//! other lengths and can interleave differently. The reproduce line runs a
//! seed in a fresh process, which is what this test checks.

use duropg_sim::{run, SimConfig};
use std::process::Command;

/// Different seeds make different worlds (the hash is not a constant).
#[test]
fn different_seeds_give_different_traces() {
    let mut hashes: Vec<String> = [0, 7, 42, 1234]
        .iter()
        .map(|s| run(&SimConfig::new(*s)).trace_hash)
        .collect();
    hashes.sort();
    hashes.dedup();
    assert_eq!(hashes.len(), 4, "different seeds must give different traces");
}

#[test]
fn a_seed_run_by_two_processes_prints_the_same_bytes() {
    for seed in ["42", "1234"] {
        same_bytes_twice(seed);
    }
}

fn same_bytes_twice(seed: &str) {
    let once = || {
        let out = Command::new(env!("CARGO_BIN_EXE_duropg-sim"))
            .args(["--seed", seed])
            .output()
            .expect("run duropg-sim");
        // Exit 0 or 1 (a violation) both print a report; 2 would be bad usage.
        assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
        out.stdout
    };
    let (a, b) = (once(), once());
    assert!(!a.is_empty());
    assert_eq!(String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
}

/// A run the machine stalls — a loaded CI box, a descheduled process —
/// prints the same bytes as one that ran straight through: nothing in the
/// run may read the machine's clock. (bb8's connect retries once stopped by
/// it, so a run stopped for 700 ms mid-way took other turns.) The run is
/// frozen with SIGSTOP for 700 ms every 40 ms until it exits.
#[test]
fn a_run_stalled_by_the_machine_prints_the_same_bytes() {
    let seed = "1234";
    let straight = Command::new(env!("CARGO_BIN_EXE_duropg-sim"))
        .args(["--seed", seed])
        .output()
        .expect("run duropg-sim");
    let mut child = Command::new(env!("CARGO_BIN_EXE_duropg-sim"))
        .args(["--seed", seed])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run duropg-sim");
    let pid = child.id().to_string();
    let signal = |name: &str| {
        let _ = Command::new("kill").args([name, &pid]).status();
    };
    let mut stalls = 0;
    let stdout = std::thread::spawn({
        let mut out = child.stdout.take().expect("piped stdout");
        move || {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut out, &mut bytes).expect("read the report");
            bytes
        }
    });
    while child.try_wait().expect("poll duropg-sim").is_none() {
        std::thread::sleep(std::time::Duration::from_millis(40));
        signal("-STOP");
        std::thread::sleep(std::time::Duration::from_millis(700));
        signal("-CONT");
        stalls += 1;
    }
    let stalled = stdout.join().expect("reader");
    assert!(stalls > 0, "the run ended before it could be stalled");
    assert!(!stalled.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&straight.stdout),
        String::from_utf8_lossy(&stalled),
        "stalled {stalls} times"
    );
}
