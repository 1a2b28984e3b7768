//! Where a container's records come from.

pub mod cri;
