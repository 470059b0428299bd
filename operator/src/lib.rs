//! The kpersist operator.
