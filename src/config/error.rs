//! What a config file did wrong, and where: one [`Problem`] per mistake
//! with its line, column and key, gathered into a [`ConfigError`], and the
//! [`Location`] of a value whose mistake is only found later (a host name
//! that does not resolve).
//!
//! Must not: decide what is a mistake; validation and resolution do.

use std::path::{Path, PathBuf};

/// One mistake in a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Dotted key path such as `listeners[1].bind`.
    pub key: String,
    /// What is wrong, one line.
    pub message: String,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{path}: cannot read config: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read, and has one or more problems.
    #[error("{}", render_problems(path, problems))]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems found, empty for a read error.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

/// Problems as `wsgate check` prints them, one `file:line:column: key: message` a line.
pub fn render_problems(path: &Path, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| {
            format!(
                "{}:{}:{}: {}: {}",
                path.display(),
                p.line,
                p.column,
                p.key,
                p.message
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where a value was written, kept past validation for the mistakes only
/// found later (a host name that does not resolve).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Dotted key path such as `upstreams.chat.servers[0]`.
    pub key: String,
}

impl Location {
    /// A problem with the value written here.
    pub fn problem(&self, message: impl Into<String>) -> Problem {
        Problem {
            line: self.line,
            column: self.column,
            key: self.key.clone(),
            message: message.into(),
        }
    }
}
