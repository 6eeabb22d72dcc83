//! Prints the `RemediationRequest` CustomResourceDefinition as YAML, the
//! source of `deploy/crd/remediationrequest.yaml`:
//!
//! ```text
//! cargo run -p gateway --example remediationrequest_crd > deploy/crd/remediationrequest.yaml
//! ```
//!
//! `tests/crd_yaml.rs` fails when the checked-in file differs.

use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let yaml = gateway::crd_yaml()?;
    std::io::stdout().lock().write_all(yaml.as_bytes())?;
    Ok(())
}
