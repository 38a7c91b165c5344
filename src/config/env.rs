//! `AUTOBALANCER_<SECTION>_<KEY>` environment overrides, applied to the parsed TOML table
//! before it is read into the config structs.

use super::ConfigError;

/// Sections an environment override may name.
const SECTIONS: &[&str] = &["cluster", "schedule", "balance", "execution", "topology", "traffic", "etcd", "api", "log"];

/// Applies `AUTOBALANCER_<SECTION>_<KEY>=value`: the key's underscores become dashes; the
/// value is read as a TOML value (number, bool, array) or else as a string.
pub(super) fn apply(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut errs = Vec::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("AUTOBALANCER_") else {
            continue;
        };
        let lower = rest.to_ascii_lowercase();
        let Some((section, key)) = lower.split_once('_') else {
            errs.push(format!("environment {name}: expected AUTOBALANCER_<SECTION>_<KEY>"));
            continue;
        };
        if !SECTIONS.contains(&section) {
            errs.push(format!("environment {name}: unknown section {section:?} (one of {})", SECTIONS.join(", ")));
            continue;
        }
        let key = key.replace('_', "-");
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let entry = table.entry(section.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key, parsed);
            }
            _ => errs.push(format!("environment {name}: {section} is not a table in the file")),
        }
    }
    if errs.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(errs)) }
}
