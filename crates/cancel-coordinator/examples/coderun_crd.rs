//! Prints the `CodeRun` CustomResourceDefinition as YAML, the source of
//! `deploy/crd/coderun.yaml`:
//!
//! ```text
//! cargo run -p cancel-coordinator --example coderun_crd > deploy/crd/coderun.yaml
//! ```
//!
//! `tests/crd_yaml.rs` fails when the checked-in file differs.

use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let yaml = cancel_coordinator::crd_yaml()?;
    std::io::stdout().lock().write_all(yaml.as_bytes())?;
    Ok(())
}
