//! The shape every end-to-end test file shares: one [`Batch`] of checks per test binary, run
//! once by whichever test asks first, and each test reading its own check's result after a
//! gate check (the batch's setup) passed.
//!
//! ```ignore
//! static RESULTS: E2e = E2e::new("setup");
//! fn check(name: &str) -> Option<&'static CheckResult> {
//!     RESULTS.check(name, || Some(e2e::batch("e2e-x")?.check("setup", "...").check(...)))
//! }
//! ```

use std::sync::OnceLock;
use std::time::Duration;

use super::artifacts;
use super::nested::{Batch, BatchResults, CheckResult};

/// A batch's results, shared by the tests of one binary.
pub struct E2e {
    gate: &'static str,
    results: OnceLock<Option<BatchResults>>,
}

impl E2e {
    /// Results whose check `gate` must have succeeded before any other is looked at.
    pub const fn new(gate: &'static str) -> E2e {
        E2e {
            gate,
            results: OnceLock::new(),
        }
    }

    /// The result of check `name`, running the batch `build` makes on first use; `None` (test
    /// skipped, the reason printed) when `build` gives no batch.
    pub fn check(
        &'static self,
        name: &str,
        build: impl FnOnce() -> Option<Batch>,
    ) -> Option<&'static CheckResult> {
        let results = self
            .results
            .get_or_init(|| build().map(Batch::run))
            .as_ref()?;
        results.get(self.gate).expect_success(self.gate);
        Some(results.get(name))
    }
}

/// The usual E2E batch: the podvm artifacts in the payload, a 3 GiB L1, 25 minutes in all and
/// 4 minutes per check; `None` (reason printed) when the artifacts are missing.
pub fn batch(name: &str) -> Option<Batch> {
    let artifacts = artifacts::require()?;
    Some(
        artifacts
            .add_to(Batch::new(name))
            .memory_mib(3072)
            .timeout(Duration::from_secs(1500))
            .default_check_timeout(Duration::from_secs(240)),
    )
}
