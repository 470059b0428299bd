//! Verdict lines of the suites that run as one long test with named steps: each step prints
//! `<SUITE>: <step>: ok (<note>)` or `<SUITE>: <step>: FAIL <why>`. The suite's script
//! prints the final `<SUITE>: PASS` or `FAIL`.

/// Prints the verdict of `step` of `suite` (e.g. `KERNEL-FLEET-E2E`).
pub fn print_verdict(suite: &str, step: &str, result: &Result<String, String>) {
    match result {
        Ok(note) if note.is_empty() => println!("{suite}: {step}: ok"),
        Ok(note) => println!("{suite}: {step}: ok ({note})"),
        Err(why) => println!("{suite}: {step}: FAIL {why}"),
    }
}
