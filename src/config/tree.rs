//! The merged TOML tree the configuration is read from: layering a file
//! and environment values over the defaults, deserialising while reporting
//! every value that does not fit (not just the first), and saying where
//! each problem's value came from.

use serde::de::DeserializeOwned;

use super::problems::Problems;

/// Lays `over` on `base`, table by table.
pub(super) fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(over)) => merge(base, over),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The value at dotted `key` of `table`.
pub(super) fn get<'t>(table: &'t toml::Table, key: &str) -> Option<&'t toml::Value> {
    let (parents, last) = key.rsplit_once('.').unwrap_or(("", key));
    let mut t = table;
    for part in parents.split('.').filter(|p| !p.is_empty()) {
        t = t.get(part)?.as_table()?;
    }
    t.get(last)
}

/// Sets (`Some`) or removes (`None`) dotted `key`; whether that changed
/// anything.
fn set(table: &mut toml::Table, key: &str, value: Option<toml::Value>) -> bool {
    let (parents, last) = key.rsplit_once('.').unwrap_or(("", key));
    let mut t = table;
    for part in parents.split('.').filter(|p| !p.is_empty()) {
        let entry = t.entry(part).or_insert_with(|| toml::Table::new().into());
        let Some(inner) = entry.as_table_mut() else {
            return false;
        };
        t = inner;
    }
    match value {
        Some(v) => t.insert(last.to_owned(), v.clone()) != Some(v),
        None => t.remove(last).is_some(),
    }
}

/// Sets `key` from an environment variable's text: an integer where the
/// default is one and the text reads as one, else the text (a mistyped
/// value is then reported under the key's name).
pub(super) fn set_text(table: &mut toml::Table, defaults: &toml::Table, key: &str, text: String) {
    let value = match (get(defaults, key), text.trim().parse::<i64>()) {
        (Some(toml::Value::Integer(_)), Ok(n)) => toml::Value::Integer(n),
        _ => toml::Value::String(text),
    };
    set(table, key, Some(value));
}

/// Deserialises `table`; each value that does not deserialise is reported
/// under its key and put back to its default (an unknown key is removed),
/// and the rest is tried again, so every such problem is found at once.
/// `None` only when a value could not be mended.
pub(super) fn deserialize<T: DeserializeOwned>(
    mut table: toml::Table,
    defaults: &toml::Table,
    problems: &mut Problems,
) -> Option<T> {
    loop {
        let error = match serde_path_to_error::deserialize(toml::Value::Table(table.clone())) {
            Ok(value) => return Some(value),
            Err(error) => error,
        };
        let key = error.path().to_string();
        let message = in_operators_words(error.into_inner().message().trim_end());
        // Each round mends one key, so the loop ends.
        let mended = key != "." && set(&mut table, &key, get(defaults, &key).cloned());
        problems.push(if key == "." {
            message
        } else {
            format!("{key}: {message}")
        });
        if !mended {
            return None;
        }
    }
}

/// serde's message with the Rust integer type it expected (`expected
/// u32`) said as the range an operator may write.
fn in_operators_words(message: &str) -> String {
    const RANGES: [(&str, &str); 5] = [
        ("u8", "a whole number from 0 to 255"),
        ("u32", "a whole number from 0 to 4294967295"),
        ("u64", "a whole number, 0 or more"),
        ("usize", "a whole number, 0 or more"),
        ("i64", "a whole number"),
    ];
    if let Some((head, ty)) = message.rsplit_once("expected ")
        && let Some((_, range)) = RANGES.iter().find(|(t, _)| *t == ty)
    {
        return format!("{head}expected {range}");
    }
    message.to_owned()
}

/// Says where each problem's setting was given: `key (from VARIABLE): …`
/// for one an environment variable set, `key (line N): …` for one in the
/// file `text`.
pub(super) fn locate(problems: &mut Problems, text: Option<&str>, env_set: &[(&str, &str)]) {
    let file = text.and_then(|t| toml::de::DeTable::parse(t).ok().map(|table| (t, table)));
    for problem in &mut problems.0 {
        let Some((key, rest)) = problem.split_once(": ") else {
            continue;
        };
        if key.contains(' ') {
            continue;
        }
        let place = if let Some((name, _)) = env_set.iter().find(|(_, k)| *k == key) {
            format!("from {name}")
        } else if let Some(line) = file
            .as_ref()
            .and_then(|(text, table)| line_of(text, table.get_ref(), key))
        {
            format!("line {line}")
        } else {
            continue;
        };
        *problem = format!("{key} ({place}): {rest}");
    }
}

/// The line of `text` where dotted `key` is written, if it is.
fn line_of(text: &str, table: &toml::de::DeTable<'_>, key: &str) -> Option<usize> {
    let (parents, last) = key.rsplit_once('.').unwrap_or(("", key));
    let mut table = table;
    for part in parents.split('.').filter(|p| !p.is_empty()) {
        let (_, value) = table.iter().find(|(k, _)| k.get_ref() == part)?;
        match value.get_ref() {
            toml::de::DeValue::Table(inner) => table = inner,
            _ => return None,
        }
    }
    let (name, _) = table.iter().find(|(k, _)| k.get_ref() == last)?;
    Some(text.get(..name.span().start)?.matches('\n').count() + 1)
}
