//! Startup access profiles as stored: which layer ranges a workload read
//! first, in order. A JSON file (`clipctl mount --profile`, the node's
//! `profiles/<manifest>.json`) or the PROFILE section of an index (same
//! JSON, spec in `docs/format.md`). Keyed by layer digest and uncompressed
//! offset, so a profile stays valid for another index of the same image.
//! Recording and replay live in `cache`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// The profile format this build reads and writes.
pub const PROFILE_VERSION: u32 = 1;

/// Most ranges a profile holds (a recorder stops noting beyond this; a
/// larger file is refused). 64 Ki chunk runs of 256 KiB cover 16 GiB.
pub const MAX_RANGES: usize = 1 << 16;

/// Largest profile file read (bytes); real ones are a few KiB.
const MAX_FILE: u64 = 16 << 20;

/// Layer ranges read by a workload, in the order it first read them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessProfile {
    /// [`PROFILE_VERSION`].
    pub version: u32,
    /// Manifest digest of the image it was recorded on, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Digest>,
    /// Seconds after the mount started during which reads were recorded.
    pub window_secs: u64,
    /// The ranges, in first-touch order.
    pub ranges: Vec<ProfileRange>,
}

/// `[offset, offset+len)` of a layer's uncompressed stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRange {
    /// Layer blob digest.
    pub layer: Digest,
    /// Start in the layer's uncompressed stream.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Why a profile could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Reading or writing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The profile file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a profile this build understands.
    #[error("{}: not a clip access profile: {message}", path.display())]
    Invalid {
        /// The profile file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl AccessProfile {
    /// Reads and checks a profile file.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let io = |source| ProfileError::Io {
            path: path.to_path_buf(),
            source,
        };
        // Bounded read: the size in metadata says nothing for /dev/zero.
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_FILE + 1).read_to_end(&mut bytes))
            .map_err(io)?;
        if bytes.len() as u64 > MAX_FILE {
            return Err(ProfileError::Invalid {
                path: path.to_path_buf(),
                message: format!("more than {MAX_FILE} bytes"),
            });
        }
        Self::from_json(&bytes).map_err(|message| ProfileError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses and checks a profile (the file's bytes, or an index's PROFILE
    /// section); the error says what is wrong.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let p: AccessProfile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if p.version != PROFILE_VERSION {
            return Err(format!(
                "version {} (this clipctl reads {PROFILE_VERSION})",
                p.version
            ));
        }
        if p.ranges.len() > MAX_RANGES {
            return Err(format!("{} ranges (at most {MAX_RANGES})", p.ranges.len()));
        }
        Ok(p)
    }

    /// Writes the profile atomically (temp file in the same directory, then
    /// rename), creating the directory if needed.
    pub fn save(&self, path: &Path) -> Result<(), ProfileError> {
        let io = |source| ProfileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".profile-")
            .tempfile_in(dir)
            .map_err(io)?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| io(e.into()))?;
        tmp.write_all(&json).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }

    /// Bytes covered by the ranges (uncompressed).
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().fold(0, |n, r| n.saturating_add(r.len))
    }

    /// Bytes of this profile's ranges that `other`'s ranges also cover.
    pub fn overlap_bytes(&self, other: &AccessProfile) -> u64 {
        let mut theirs: HashMap<Digest, Vec<(u64, u64)>> = HashMap::new();
        for r in &other.ranges {
            let end = r.offset.saturating_add(r.len);
            theirs.entry(r.layer).or_default().push((r.offset, end));
        }
        // Sorted and merged, so each layer's list is disjoint and ascending.
        for list in theirs.values_mut() {
            list.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(list.len());
            for &(s, e) in list.iter() {
                match merged.last_mut() {
                    Some(last) if s <= last.1 => last.1 = last.1.max(e),
                    _ => merged.push((s, e)),
                }
            }
            *list = merged;
        }
        let mut n = 0u64;
        for r in &self.ranges {
            let Some(list) = theirs.get(&r.layer) else {
                continue;
            };
            let (start, end) = (r.offset, r.offset.saturating_add(r.len));
            let first = list.partition_point(|&(_, e)| e <= start);
            for &(s, e) in list[first..].iter().take_while(|&&(s, _)| s < end) {
                n = n.saturating_add(end.min(e) - start.max(s));
            }
        }
        n
    }

    /// The profile in an index's PROFILE section: `Ok(None)` for a profile
    /// version this build does not read (a newer writer's; the index stays
    /// usable), an error for bytes that are not a profile at all.
    pub(crate) fn from_section(bytes: &[u8]) -> Result<Option<Self>, String> {
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        match v.get("version").and_then(serde_json::Value::as_u64) {
            Some(n) if n == u64::from(PROFILE_VERSION) => Self::from_json(bytes).map(Some),
            Some(_) => Ok(None),
            None => Err("no version".into()),
        }
    }
}
