//! Kernel livepatch modules as artifacts: modinfo, the signed patch repository format, and
//! the Linux livepatch kernel interface. No Kubernetes here.

pub mod buildid;
pub mod kernel;
pub mod modinfo;
pub mod repository;
pub mod signing;

#[cfg(test)]
mod test_elf;
