//! irec-world: the simulated world every other crate stands on. No candle, no sled, no network.
//!
//! Data flows catalog → simulated world → policies → metrics:
//! - [`catalog`]: items with set-valued attributes (UT-Zappos50K schema), the generator and the
//!   `meta-data.csv` loader, visual features.
//! - [`retrieval`]: from a multi-discrete action to the item shown (bitset index).
//! - [`sim`]: the simulated user, the template bank, the reward, episodes.
//! - [`policy`]: the policy interface, the session loop, and the non-learned baselines.
//! - [`metrics`]: SR@K, NI, NV with standard errors; the Markdown table.
//! - [`misses`]: why sessions were not done by turn K (memory, guesses, retrieval).
//! - [`rng`]: seeded, order-independent randomness.
//! - [`world_file`], [`mapped`]: the world built once into a file that agent processes map.

pub mod catalog;
pub mod mapped;
pub mod metrics;
pub mod misses;
pub mod policy;
pub mod retrieval;
pub mod rng;
pub mod sim;
pub mod world_file;
