//! The daemon's `--config` file: TOML with the options' own names (dashes
//! as underscores), read whole and bounded, every key known or refused
//! with its line; and the command line laid over it, group by group.

use std::{collections::BTreeSet, fs::File, io::Read as _, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Serialize, de::DeserializeOwned};

/// A configuration file is a page or two; more is not one.
const MAX_CONFIG: u64 = 1 << 20;

/// Keys of the file that no option group declares: tables of their own.
const TABLES: [&str; 3] = ["labels", "pyroscope", "parca"];

/// A configuration file, parsed.
#[derive(Debug, Default)]
pub struct ConfigFile {
    pub table: toml::Table,
    /// Its text, to say on which line a key is.
    text: String,
    /// How errors name it.
    shown: String,
}

/// Reads at most `max` bytes of the regular file `path` as text.
pub fn read_bounded(path: &Path, max: u64, what: &str) -> Result<String> {
    let file =
        File::open(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    let md = file.metadata()?;
    if !md.is_file() {
        bail!("{what} {} is not a regular file", path.display());
    }
    if md.len() > max {
        bail!("{what} {} is larger than {max} bytes", path.display());
    }
    let mut text = String::new();
    file.take(max)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {what} {} as UTF-8 text", path.display()))?;
    Ok(text)
}

impl ConfigFile {
    /// Reads `path`; `known` are the keys the option groups declare.
    pub fn read(path: &Path, known: &BTreeSet<&'static str>) -> Result<Self> {
        let text = read_bounded(path, MAX_CONFIG, "the configuration file")?;
        let shown = path.display().to_string();
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            let message = e.message().lines().next().unwrap_or("invalid").to_owned();
            match e.span() {
                Some(s) => {
                    let line = text[..s.start.min(text.len())].lines().count().max(1);
                    anyhow!("{shown}:{line}: {message}")
                }
                None => anyhow!("{shown}: {message}"),
            }
        })?;
        let file = Self { table, text, shown };
        if let Some(key) = file
            .table
            .keys()
            .find(|k| !known.contains(k.as_str()) && !TABLES.contains(&k.as_str()))
        {
            bail!(
                "{}: unknown key `{key}` (the keys are the options' names, dashes as underscores: see `tracer daemon --help`)",
                file.at(key)
            );
        }
        Ok(file)
    }

    /// "FILE:LINE" of `key`'s first line in the file, or "FILE".
    pub fn at(&self, key: &str) -> String {
        let line = self.text.lines().position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
                || l.strip_prefix('[')
                    .and_then(|l| l.strip_prefix(key))
                    .is_some_and(|rest| rest.trim_start().starts_with(']'))
        });
        match line {
            Some(i) => format!("{}:{}", self.shown, i + 1),
            None => self.shown.clone(),
        }
    }

    /// The option group `cli` laid over the file's values of its keys:
    /// what the command line gives wins.
    pub fn under<T: Serialize + DeserializeOwned>(&self, cli: &T) -> Result<T> {
        let given =
            toml::Table::try_from(cli).map_err(|e| anyhow!("the command line's options: {e}"))?;
        let mut merged = self.table.clone();
        merged.extend(given);
        merged.try_into::<T>().map_err(|e| {
            let message = e.message().lines().next().unwrap_or("invalid").to_owned();
            // The message names the type expected, not the key: the key is
            // the one of the group's that does not read on its own.
            let bad = keys_of::<T>().into_iter().find(|k| {
                self.table.get(*k).is_some_and(|v| {
                    let mut one = toml::Table::new();
                    one.insert((*k).to_owned(), v.clone());
                    one.try_into::<T>().is_err()
                })
            });
            match bad {
                Some(k) => anyhow!("{}: {k}: {message}", self.at(k)),
                None => anyhow!("{}: {message}", self.shown),
            }
        })
    }
}

/// The config keys (field names) serde gives an option group.
pub fn keys_of<T: DeserializeOwned>() -> Vec<&'static str> {
    let mut fields = Vec::new();
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

/// A deserializer that only learns the names of a struct's fields (serde
/// hands them to `deserialize_struct`), then stops.
struct FieldNames<'a>(&'a mut Vec<&'static str>);

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field names only")
    }
}

impl std::error::Error for Stop {}

impl serde::de::Error for Stop {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        Stop
    }
}

impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
    type Error = Stop;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        self.0.extend_from_slice(fields);
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// A credential file holds one token or password.
const MAX_SECRET: u64 = 64 << 10;

/// The secret in `path`, trimmed.
pub fn read_secret(path: &Path, what: &str) -> Result<String> {
    Ok(read_bounded(path, MAX_SECRET, what)?.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::recording::{BoundsArgs, TargetArgs};

    #[test]
    fn a_groups_keys_are_its_field_names() {
        assert_eq!(keys_of::<TargetArgs>(), ["pid", "all", "match"]);
        assert_eq!(
            keys_of::<BoundsArgs>(),
            ["duration", "ring_mb", "max_tracked"]
        );
    }
}
