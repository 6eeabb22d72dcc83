//! The checked-in CRD is the one the Rust type generates.

use std::path::Path;

#[test]
fn the_checked_in_crd_is_what_the_coderun_type_generates() -> Result<(), Box<dyn std::error::Error>>
{
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crd/coderun.yaml");
    let checked_in =
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let generated = cancel_coordinator::crd_yaml()?;
    assert!(
        checked_in == generated,
        "{} is not what CodeRun::crd() generates; regenerate it with \
         `cargo run -p cancel-coordinator --example coderun_crd > deploy/crd/coderun.yaml`",
        path.display()
    );
    Ok(())
}
