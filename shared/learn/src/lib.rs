//! irec-learn: everything that trains. The server links it to run rounds, fleet-sim to run
//! studies; the edge agent never does (it only acts, through irec-model).
//!
//! - [`algo`]: the learning algorithms (pretraining, BC, SAC, CQL(H)+SAC, PPO, FQE), the
//!   objective they optimise and the session dataset they read.
//! - [`experiment`]: the lab (world + pretrained perception), behaviour policies, the paper's
//!   Table 2 and offline-learner ablations.
//! - [`round`]: the round trainer the server is handed, and the typed metrics of a round.
//! - [`files`]: whole-or-nothing file writes for learner states and caches.
//! - [`curves`]: training curves in d3rlpy's file layout (`d3rlpy plot` reads them).
//! - [`bench`]: the training-step benchmark against the PyTorch reference workload.
//! - [`host`]: how a training process sets up its threads and allocator.

pub mod algo;
pub mod bench;
pub mod curves;
pub mod experiment;
pub mod files;
pub mod host;
pub mod round;
