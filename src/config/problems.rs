//! Problems found in a configuration, each naming its key: every section
//! adds its own, and they are reported together.

/// Problems found so far, each `key: what is wrong`.
#[derive(Debug, Default)]
pub(super) struct Problems(pub(super) Vec<String>);

impl Problems {
    pub(super) fn push(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    pub(super) fn at_least(&mut self, key: &str, value: usize, min: usize) {
        if value < min {
            self.push(format!("{key}: must be at least {min}"));
        }
    }

    pub(super) fn nonzero_duration(&mut self, key: &str, value: std::time::Duration) {
        if value.is_zero() {
            self.push(format!("{key}: must be at least 1"));
        }
    }
}
