//! The world a device runs in: built in this process from `[world]`, or mapped from a world file
//! built once for the fleet (`world_file`), whose big tables then live once in the page cache for
//! every agent on the machine. Either way the world carries its fingerprint, which the agent's
//! hello names so that a server of another world refuses it.

use crate::config::AgentConfig;
use crate::AgentError;
use irec_model::perception::PROBABILITIES_SECTION;
use irec_world::mapped::Table;
use irec_world::sim::World;
use irec_world::world_file::{WorldFile, WorldFileError, WorldFingerprint};
use std::sync::Arc;

/// The world of one agent process.
#[derive(Clone, Debug)]
pub struct DeviceWorld {
    pub world: Arc<World>,
    /// A world file's AttrNet probabilities, for the policy loader to share.
    pub probabilities: Option<Table<f32>>,
}

/// Builds or maps the world `config` names (see the module docs).
pub fn load(config: &AgentConfig) -> Result<DeviceWorld, AgentError> {
    let Some(path) = &config.world_file else {
        let world = World::build(&config.world).map_err(|e| AgentError::World(e.to_string()))?;
        return Ok(DeviceWorld { world: Arc::new(world), probabilities: None });
    };
    let file = WorldFile::open(path)?;
    file.check(WorldFingerprint::of(&config.world).map_err(|e| AgentError::World(format!("reading the world's files: {e}")))?)?;
    let probabilities = match file.table::<f32>(PROBABILITIES_SECTION) {
        Ok(t) => Some(t),
        Err(WorldFileError::Missing { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    Ok(DeviceWorld { world: Arc::new(file.world()?), probabilities })
}
