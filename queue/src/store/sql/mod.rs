//! The store's SQL boundary: one small trait, [`Db`], that store functions
//! take instead of a driver's connection, implemented for SQLite (rusqlite)
//! and PostgreSQL (the synchronous `postgres` crate).
//!
//! SQL is written once, in SQLite's spelling with `?1` placeholders, where the
//! dialects agree; the PostgreSQL side rewrites the placeholders to `$1`
//! ([`placeholders`]). Where they differ a function passes both spellings to
//! [`Db::pick`] (or branches on [`Db::dialect`]). Values cross the boundary as
//! [`Value`]: integers are `BIGINT` on PostgreSQL and booleans are stored as
//! SQLite stores them, `0`/`1` integers.
//!
//! Both drivers are blocking: a [`Db`] is used on the writer thread or in
//! `spawn_blocking`, never on the async runtime.

mod postgres;
mod sqlite;

pub use postgres::{PG_MIGRATIONS_APPLIED, PgConn, PgTx, migrate_postgres};

use super::StoreError;

/// Which SQL a [`Db`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A parameter value, borrowed from the caller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// Something that binds as a statement parameter on both drivers.
pub trait Param {
    fn value(&self) -> Value<'_>;
}

macro_rules! int_param {
    ($($t:ty),*) => {$(
        impl Param for $t {
            fn value(&self) -> Value<'_> {
                Value::Int(i64::from(*self))
            }
        }
    )*};
}
int_param!(i64, i32, u32, u16, u8, bool);

impl Param for f64 {
    fn value(&self) -> Value<'_> {
        Value::Real(*self)
    }
}

impl Param for f32 {
    fn value(&self) -> Value<'_> {
        Value::Real(f64::from(*self))
    }
}

impl Param for str {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl Param for String {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl Param for [u8] {
    fn value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl Param for Vec<u8> {
    fn value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl<T: Param + ?Sized> Param for &T {
    fn value(&self) -> Value<'_> {
        (**self).value()
    }
}

impl<T: Param> Param for Option<T> {
    fn value(&self) -> Value<'_> {
        self.as_ref().map_or(Value::Null, Param::value)
    }
}

/// The parameters of one statement: `args![a, b, c]`.
#[macro_export]
macro_rules! args {
    ($($x:expr),* $(,)?) => {
        &[$(&$x as &dyn $crate::store::sql::Param),*] as &[&dyn $crate::store::sql::Param]
    };
}
pub use crate::args;

/// One result row, whichever driver produced it.
pub enum Row<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Postgres(&'a ::postgres::Row),
}

impl Row<'_> {
    /// The value of column `idx` (from 0).
    pub fn get<T: Column>(&self, idx: usize) -> Result<T, StoreError> {
        match self {
            Row::Sqlite(row) => Ok(row.get(idx)?),
            Row::Postgres(row) => T::from_pg(row, idx),
        }
    }
}

/// A Rust type a column reads into. On SQLite it is rusqlite's own
/// conversion (unchanged); on PostgreSQL it accepts what the schema's types
/// give (`BIGINT` and the `integer` of an expression, `boolean` of a
/// comparison for a `bool`).
pub trait Column: rusqlite::types::FromSql + Sized {
    fn from_pg(row: &::postgres::Row, idx: usize) -> Result<Self, StoreError>;
}

/// A statement runner over one connection or transaction.
///
/// The object-safe core is [`Db::execute`], [`Db::insert_id`] and
/// [`Db::for_each`]; the typed helpers (`one`, `optional`, `many`) are on
/// `dyn Db`.
pub trait Db {
    fn dialect(&self) -> Dialect;

    /// Runs a statement; the number of rows it changed.
    fn execute(&self, sql: &str, args: &[&dyn Param]) -> Result<usize, StoreError>;

    /// Runs an `INSERT` into a table with an `id` key and returns the new
    /// row's id, or `None` when the insert inserted nothing (PostgreSQL's
    /// `ON CONFLICT DO NOTHING`). SQLite reads `last_insert_rowid()`
    /// (`RETURNING` builds a temporary table on every run there);
    /// PostgreSQL appends `RETURNING id`.
    fn insert_id(&self, sql: &str, args: &[&dyn Param]) -> Result<Option<i64>, StoreError>;

    /// Calls `each` with every row in order until it returns `false`.
    fn for_each(
        &self,
        sql: &str,
        args: &[&dyn Param],
        each: &mut dyn FnMut(&Row<'_>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError>;

    /// `sqlite` on SQLite, `postgres` on PostgreSQL: for the statements the
    /// dialects spell differently.
    fn pick<'s>(&self, sqlite: &'s str, postgres: &'s str) -> &'s str {
        match self.dialect() {
            Dialect::Sqlite => sqlite,
            Dialect::Postgres => postgres,
        }
    }
}

impl dyn Db + '_ {
    /// The first row, if any.
    pub fn optional<T>(
        &self,
        sql: &str,
        args: &[&dyn Param],
        map: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let mut map = Some(map);
        let mut found = None;
        self.for_each(sql, args, &mut |row| {
            if let Some(map) = map.take() {
                found = Some(map(row)?);
            }
            Ok(false)
        })?;
        Ok(found)
    }

    /// The first row; a query that returns none is a bug, as rusqlite's
    /// `query_row` treats it.
    pub fn one<T>(
        &self,
        sql: &str,
        args: &[&dyn Param],
        map: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.optional(sql, args, map)?
            .ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
    }

    /// Every row.
    pub fn many<T>(
        &self,
        sql: &str,
        args: &[&dyn Param],
        mut map: impl FnMut(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut all = Vec::new();
        self.for_each(sql, args, &mut |row| {
            all.push(map(row)?);
            Ok(true)
        })?;
        Ok(all)
    }
}

/// Rewrites SQLite's `?N` placeholders to PostgreSQL's `$N`, leaving string
/// literals, quoted identifiers and comments alone.
pub fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                // A doubled quote inside is an escaped quote: the loop sees
                // it as the end and a new start, which copies it unchanged.
                for inner in chars.by_ref() {
                    out.push(inner);
                    if inner == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                out.push(c);
                for inner in chars.by_ref() {
                    out.push(inner);
                    if inner == '\n' {
                        break;
                    }
                }
            }
            '?' if chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_outside_literals() {
        assert_eq!(
            placeholders(
                "SELECT a FROM t WHERE b = ?1 AND c = '?2' AND \"?3\" = ?12 -- ?4\n AND d = ?4"
            ),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND \"?3\" = $12 -- ?4\n AND d = $4"
        );
        assert_eq!(
            placeholders("SELECT 'it''s ?1', ?2"),
            "SELECT 'it''s ?1', $2"
        );
        assert_eq!(placeholders("SELECT json ? 'k'"), "SELECT json ? 'k'");
    }
}
