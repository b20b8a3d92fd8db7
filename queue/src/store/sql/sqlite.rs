//! [`Db`] for rusqlite: every statement through the connection's statement
//! cache, parameters bound as borrowed values (no copies), rows read with
//! rusqlite's own conversions: the SQLite path costs what it did before the
//! boundary.

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, Transaction};

use super::{Db, Dialect, Param, Row, Value};
use crate::store::StoreError;

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(v),
            Value::Real(v) => ValueRef::Real(v),
            Value::Text(v) => ValueRef::Text(v.as_bytes()),
            Value::Blob(v) => ValueRef::Blob(v),
        }))
    }
}

fn bind<'a>(args: &'a [&'a dyn Param]) -> impl rusqlite::Params + 'a {
    rusqlite::params_from_iter(args.iter().map(|p| p.value()))
}

impl Db for Connection {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&self, sql: &str, args: &[&dyn Param]) -> Result<usize, StoreError> {
        Ok(self.prepare_cached(sql)?.execute(bind(args))?)
    }

    fn insert_id(&self, sql: &str, args: &[&dyn Param]) -> Result<Option<i64>, StoreError> {
        let n = self.prepare_cached(sql)?.execute(bind(args))?;
        Ok((n > 0).then(|| self.last_insert_rowid()))
    }

    fn for_each(
        &self,
        sql: &str,
        args: &[&dyn Param],
        each: &mut dyn FnMut(&Row<'_>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.prepare_cached(sql)?;
        let mut rows = stmt.query(bind(args))?;
        while let Some(row) = rows.next()? {
            if !each(&Row::Sqlite(row))? {
                break;
            }
        }
        Ok(())
    }
}

impl Db for Transaction<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&self, sql: &str, args: &[&dyn Param]) -> Result<usize, StoreError> {
        Db::execute(&**self, sql, args)
    }

    fn insert_id(&self, sql: &str, args: &[&dyn Param]) -> Result<Option<i64>, StoreError> {
        Db::insert_id(&**self, sql, args)
    }

    fn for_each(
        &self,
        sql: &str,
        args: &[&dyn Param],
        each: &mut dyn FnMut(&Row<'_>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        Db::for_each(&**self, sql, args, each)
    }
}
