//! Deterministic simulation support: the cluster simulation and the linearizability checker.

pub mod linearizability;
