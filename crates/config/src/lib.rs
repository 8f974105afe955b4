//! Meerkat's configuration: a TOML file shaped like MongooseIM's `mongooseim.toml`
//! (`[general]`, `[[listen.c2s]]`, `[storage]`, `[auth]`, `[modules.mod_x]`, `[shaper.x]`).
//!
//! The schema is plain serde structs with `deny_unknown_fields`, so a misspelt key is an
//! error naming the key and its line. After parsing, [`Config::validate`] checks what
//! the types cannot (ports, host names, references between sections) and reports every
//! problem at once, each with its key and line. This crate holds no runtime state.
#![warn(missing_docs)]

mod modules;
mod schema;

pub use modules::*;
pub use schema::*;

use std::path::Path;

/// The example configuration shipped with Meerkat: every module enabled, commented.
/// `meerkat config example` prints it and the README points to it.
pub const EXAMPLE: &str = include_str!("../../../meerkat.example.toml");

/// One configuration problem, located in the source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
    /// Dotted key path the problem is about, when known (e.g. `listen.c2s[0].port`).
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "line {}, column {}: ", self.line, self.column)?;
        }
        if let Some(k) = &self.key {
            write!(f, "`{k}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// All problems found in one file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors {
    /// The file name used in messages.
    pub file: String,
    /// The problems, in file order.
    pub errors: Vec<ConfigError>,
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", self.file, e)?;
        }
        Ok(())
    }
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |p| offset - p - 1) + 1;
    (line, col)
}

impl Config {
    /// Parses and validates a configuration text. `file` names it in messages.
    pub fn parse(src: &str, file: &str) -> Result<Config, ConfigErrors> {
        let cfg: Config = toml::from_str(src).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(src, s.start)).unwrap_or((0, 0));
            ConfigErrors {
                file: file.to_string(),
                errors: vec![ConfigError { line, column, key: None, message: e.message().trim().to_string() }],
            }
        })?;
        let mut errors = Vec::new();
        cfg.validate(&mut |span: Option<std::ops::Range<usize>>, key: String, message: String| {
            let (line, column) = span.map(|s| line_col(src, s.start)).unwrap_or((0, 0));
            errors.push(ConfigError { line, column, key: Some(key), message });
        });
        if errors.is_empty() {
            Ok(cfg)
        } else {
            errors.sort_by_key(|e| (e.line, e.column));
            Err(ConfigErrors { file: file.to_string(), errors })
        }
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: file.clone(),
            errors: vec![ConfigError { line: 0, column: 0, key: None, message: format!("cannot read: {e}") }],
        })?;
        Self::parse(&src, &file)
    }
}

#[cfg(test)]
mod tests;
