//! Errors the control plane reports (and counts) without ever dropping the live table.

use std::path::PathBuf;

/// A Kubernetes object that cannot be used as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    #[error("metadata.name is missing")]
    MissingName,
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl ObjectError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ObjectError::Invalid { field: field.into(), reason: reason.into() }
    }
}

/// One problem found while loading manifests: which file, which document (counted from 1),
/// what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: cannot read: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: document {document}: not valid YAML: {reason}")]
    Yaml { path: PathBuf, document: usize, reason: String },
    #[error("{path}: document {document} ({kind} {name}): {reason}")]
    Object { path: PathBuf, document: usize, kind: String, name: String, reason: String },
    /// Larger than `ManifestLimits::max_file_bytes`: not read at all.
    #[error("{path}: {size} bytes, more than the limit of {limit}; not read")]
    TooLarge { path: PathBuf, size: u64, limit: u64 },
    /// Nested deeper than `ManifestLimits::max_depth`: refused before parsing, whose cost grows
    /// with the square of the depth.
    #[error("{path}: document {document}, line {line}: nested more than {limit} deep; not parsed")]
    TooDeep { path: PathBuf, document: usize, line: usize, limit: usize },
    /// More documents than `ManifestLimits::max_documents`: refused before parsing.
    #[error("{path}: more than {limit} YAML documents; not parsed")]
    TooManyDocuments { path: PathBuf, limit: usize },
}

/// Two Services claiming the same frontend; the first in namespace/name order keeps it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("frontend {frontend} of {loser} is already served by {winner}; ignoring it for {loser}")]
pub struct FrontendConflict {
    pub frontend: String,
    pub winner: String,
    pub loser: String,
}
