//! Workspace-level tests, in tests/tests/:
//! - `foundation.rs`: the simulated world (catalog, retrieval, users, reward, metrics, baselines).
//! - `learning.rs`: networks, losses against hand computation, learners, checkpoints.
//! - `fleet.rs`: system test, edge agents and a server in one process on loopback.
