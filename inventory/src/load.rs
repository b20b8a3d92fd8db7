//! Reading an inventory, the entry points: a file or a text is parsed into
//! the positioned YAML tree ([`yaml`]), walked once by the schema layer
//! (every key checked against what may stand there, every value against its
//! rules), then each host's settings are resolved (defaults, its groups' vars
//! outermost first, its own) and the fleet checked as a whole (unique node
//! ids, one install per place). All problems are collected, each with its
//! line and column.
//!
//! ```yaml
//! defaults:            # or `vars`
//!   user: root
//!   coordinator: https://coord.example:7443
//! groups:              # or `children`
//!   japan:
//!     vars: {llm: {type: ollama}}
//!     hosts:
//!       tokyo-01: {host: 203.0.113.10, location: ap-northeast-1, capabilities: [code_generation]}
//! hosts:
//!   london-01: {host: 198.51.100.7, location: eu-west-2, capabilities: [data_analysis]}
//! ```

use std::path::Path;

use crate::error::{InventoryError, Problems};
use crate::model::Inventory;
use crate::yaml::{self, Pos};
use crate::{resolve, schema};

/// Largest inventory file read (a fleet of thousands of hosts fits).
const MAX_FILE_BYTES: u64 = 16 << 20;

/// Reads and checks the inventory at `path`.
pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
    let read = |source| InventoryError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(read(std::io::Error::other(format!(
            "larger than {MAX_FILE_BYTES} bytes"
        ))));
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    parse(path, &text)
}

/// Checks the inventory `text`; `file` names it in messages.
pub fn parse(file: &Path, text: &str) -> Result<Inventory, InventoryError> {
    let mut problems = Problems::default();
    let root = match yaml::parse(text) {
        Ok(Some(root)) => root,
        Ok(None) => {
            problems.report(
                Pos { line: 1, column: 1 },
                "the inventory is empty; expected a mapping with `hosts:` (and optionally `defaults:`, `groups:`)",
            );
            return Err(problems.into_error(file));
        }
        Err(diagnostic) => {
            problems.push(diagnostic);
            return Err(problems.into_error(file));
        }
    };
    let raw = schema::read(&root, &mut problems);
    let inventory = resolve::resolve(raw, file, &mut problems);
    problems.finish(file, inventory)
}
