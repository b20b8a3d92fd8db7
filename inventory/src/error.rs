//! Inventory errors: each problem found is a [`Diagnostic`] with its line and
//! column; loading reports all of them at once, as `file:line:column: message`.

use std::path::{Path, PathBuf};

use crate::yaml::Pos;

/// One problem in the inventory, where it is and what was expected.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub pos: Pos,
    pub message: String,
}

impl Diagnostic {
    pub fn new(pos: Pos, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            pos,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.pos, self.message)
    }
}

/// Every problem of one inventory file, in the order of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostics {
    pub file: PathBuf,
    pub items: Vec<Diagnostic>,
}

impl std::fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (idx, d) in self.items.iter().enumerate() {
            if idx > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}: {}", self.file.display(), d.pos, d.message)?;
        }
        Ok(())
    }
}

/// The problems found so far while loading one file: loading goes on past
/// each one, so that all of them are reported at once.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    items: Vec<Diagnostic>,
}

impl Problems {
    pub(crate) fn push(&mut self, diagnostic: Diagnostic) {
        self.items.push(diagnostic);
    }

    pub(crate) fn report(&mut self, pos: Pos, message: impl Into<String>) {
        self.push(Diagnostic::new(pos, message));
    }

    /// `value` when nothing was found, else the error listing every problem.
    pub(crate) fn finish<T>(self, file: &Path, value: T) -> Result<T, InventoryError> {
        if self.items.is_empty() {
            Ok(value)
        } else {
            Err(self.into_error(file))
        }
    }

    /// Every problem found in `file`, in the order of the file, each once.
    pub(crate) fn into_error(self, file: &Path) -> InventoryError {
        let mut items = self.items;
        items.sort_by_key(|d| (d.pos.line, d.pos.column));
        items.dedup();
        InventoryError::Invalid {
            diagnostics: Diagnostics {
                file: file.to_path_buf(),
                items,
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("failed to read the inventory {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid inventory ({} problem{}):\n{diagnostics}", diagnostics.items.len(), if diagnostics.items.len() == 1 { "" } else { "s" })]
    Invalid { diagnostics: Diagnostics },
    #[error("--limit {pattern:?} matches no host, group or label")]
    LimitMatchesNothing { pattern: String },
}
