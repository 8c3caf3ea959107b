//! irec-shared: everything the edge agent, the server and fleet-sim have in common.
//!
//! Data flows catalog → simulated world → policies → metrics:
//! - [`catalog`]: items with set-valued attributes (UT-Zappos50K schema), the generator and the
//!   `meta-data.csv` loader, visual features.
//! - [`sim`]: the simulated user, the template bank, the reward, episodes.
//! - [`retrieval`]: from a multi-discrete action to the item shown (bitset index).
//! - [`policy`]: the policy interface, the session loop, and the non-learned baselines.
//! - [`experience`]: the anonymized sessions devices upload.
//! - [`metrics`]: SR@K, NI, NV with standard errors; the Markdown table.
//! - [`rng`]: seeded, order-independent randomness.
//! - [`storage_lock`]: the process-wide guard around sled transactions and iterations.

pub mod algo;
pub mod bench;
pub mod catalog;
pub mod experience;
pub mod experiment;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod protocol;
pub mod retrieval;
pub mod rng;
pub mod sim;
pub mod storage_lock;
