//! The kpersist operator.
pub mod engine;
pub mod validate;
