//! Files the learners leave behind (learner states, caches), written so a reader never sees half.

use std::path::Path;

/// Writes via a temporary file (named by this process, so runs sharing a folder never write the
/// same one) and a rename: a crash leaves the old file or the new one, a reader one or the other.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}
