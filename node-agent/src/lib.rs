//! The kpersist node agent.
