//! [`Db`] for PostgreSQL through the synchronous `postgres` crate (it runs
//! tokio-postgres on a runtime of its own, so it must not be called from
//! async code: the store uses it on its own threads, as it does rusqlite).
//! Statements are rewritten to `$N` placeholders and prepared once per
//! connection; parameters adapt to the type the server inferred for them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error;

use bytes::BytesMut;
use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use postgres::{Client, NoTls, Statement};

use super::{Column, Db, Dialect, Param, Row, Value, placeholders};
use crate::store::StoreError;

/// Migrations for PostgreSQL, applied in order; `schema_version` records
/// which ran. Numbered on their own: PostgreSQL's 0001 is the state SQLite's
/// 0001..0009 reach for the tables it holds.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../../sql/postgres/0001_core.sql"),
    include_str!("../../../../sql/postgres/0002_security.sql"),
    include_str!("../../../../sql/postgres/0003_observe.sql"),
    include_str!("../../../../sql/postgres/0004_leader.sql"),
];

/// The schema version a migrated PostgreSQL database has.
pub const PG_MIGRATIONS_APPLIED: i64 = MIGRATIONS.len() as i64;

/// Serialises migrations of coordinators starting at once against one
/// database (`pg_advisory_xact_lock` key; "kobo" in ASCII).
const MIGRATION_LOCK: i64 = 0x6b6f_626f;

impl ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match *self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(v)?.to_sql(ty, out),
                Type::BOOL => (v != 0).to_sql(ty, out),
                Type::FLOAT8 => (v as f64).to_sql(ty, out),
                // `'lease ' || ?2`: the server infers text for the number.
                Type::TEXT | Type::VARCHAR => v.to_string().as_str().to_sql(ty, out),
                _ => Err(format!("cannot bind an integer as {ty}").into()),
            },
            Value::Real(v) => match *ty {
                Type::FLOAT4 => (v as f32).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            Value::Text(v) => v.to_sql(ty, out),
            Value::Blob(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A connection and its prepared statements.
pub struct PgConn {
    client: RefCell<Client>,
    statements: RefCell<HashMap<String, Statement>>,
}

/// A transaction on a [`PgConn`]; rolled back unless committed.
pub struct PgTx<'a> {
    tx: RefCell<postgres::Transaction<'a>>,
    statements: &'a RefCell<HashMap<String, Statement>>,
}

impl PgConn {
    /// Connects to `url` (`postgres://user@host:port/db`, multi-host URLs
    /// and `target_session_attrs` included).
    pub fn connect(url: &str) -> Result<PgConn, StoreError> {
        let client = Client::connect(url, NoTls)?;
        Ok(PgConn {
            client: RefCell::new(client),
            statements: RefCell::new(HashMap::new()),
        })
    }

    /// Whether the connection broke (the server went away): a new one is
    /// needed.
    pub fn is_closed(&self) -> bool {
        self.client.borrow().is_closed()
    }

    /// Starts a transaction (PostgreSQL's default, READ COMMITTED: the
    /// writes that must not interleave lock their rows).
    pub fn transaction(&mut self) -> Result<PgTx<'_>, StoreError> {
        let tx = self.client.get_mut().transaction()?;
        Ok(PgTx {
            tx: RefCell::new(tx),
            statements: &self.statements,
        })
    }

    /// Prepares `sql` (SQLite's spelling) into the statement cache: a test
    /// that every query parses and names real columns.
    pub fn prepare(&self, sql: &str) -> Result<(), StoreError> {
        statement(&mut *self.client.borrow_mut(), &self.statements, sql, "").map(drop)
    }

    /// Runs statements without parameters (a migration, a setting).
    pub fn batch_execute(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.client.get_mut().batch_execute(sql)?)
    }
}

impl PgTx<'_> {
    pub fn commit(self) -> Result<(), StoreError> {
        Ok(self.tx.into_inner().commit()?)
    }

    pub fn batch_execute(&self, sql: &str) -> Result<(), StoreError> {
        Ok(self.tx.borrow_mut().batch_execute(sql)?)
    }
}

/// What both a client and a transaction can do, for one implementation.
trait Runner {
    fn prepare(&mut self, sql: &str) -> Result<Statement, postgres::Error>;
    fn run(
        &mut self,
        stmt: &Statement,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error>;
    fn rows(
        &mut self,
        stmt: &Statement,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, postgres::Error>;
}

impl Runner for Client {
    fn prepare(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        Client::prepare(self, sql)
    }
    fn run(
        &mut self,
        stmt: &Statement,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        Client::execute(self, stmt, args)
    }
    fn rows(
        &mut self,
        stmt: &Statement,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, postgres::Error> {
        Client::query(self, stmt, args)
    }
}

impl Runner for postgres::Transaction<'_> {
    fn prepare(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        postgres::Transaction::prepare(self, sql)
    }
    fn run(
        &mut self,
        stmt: &Statement,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        postgres::Transaction::execute(self, stmt, args)
    }
    fn rows(
        &mut self,
        stmt: &Statement,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, postgres::Error> {
        postgres::Transaction::query(self, stmt, args)
    }
}

/// The statement for `sql`, prepared on first use. `suffix` is appended to
/// the rewritten SQL (and is part of the cache key).
fn statement(
    runner: &mut dyn Runner,
    statements: &RefCell<HashMap<String, Statement>>,
    sql: &str,
    suffix: &str,
) -> Result<Statement, StoreError> {
    let key = if suffix.is_empty() {
        std::borrow::Cow::Borrowed(sql)
    } else {
        std::borrow::Cow::Owned(format!("{sql}{suffix}"))
    };
    if let Some(stmt) = statements.borrow().get(key.as_ref()) {
        return Ok(stmt.clone());
    }
    let stmt = runner.prepare(&placeholders(&key))?;
    statements
        .borrow_mut()
        .insert(key.into_owned(), stmt.clone());
    Ok(stmt)
}

fn run_execute(
    runner: &mut dyn Runner,
    statements: &RefCell<HashMap<String, Statement>>,
    sql: &str,
    args: &[&dyn Param],
) -> Result<usize, StoreError> {
    let stmt = statement(runner, statements, sql, "")?;
    let values: Vec<Value<'_>> = args.iter().map(|p| p.value()).collect();
    let bound: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as _).collect();
    Ok(runner.run(&stmt, &bound)? as usize)
}

fn run_rows(
    runner: &mut dyn Runner,
    statements: &RefCell<HashMap<String, Statement>>,
    sql: &str,
    suffix: &str,
    args: &[&dyn Param],
) -> Result<Vec<postgres::Row>, StoreError> {
    let stmt = statement(runner, statements, sql, suffix)?;
    let values: Vec<Value<'_>> = args.iter().map(|p| p.value()).collect();
    let bound: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as _).collect();
    Ok(runner.rows(&stmt, &bound)?)
}

fn each_row(
    rows: Vec<postgres::Row>,
    each: &mut dyn FnMut(&Row<'_>) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    for row in &rows {
        if !each(&Row::Postgres(row))? {
            break;
        }
    }
    Ok(())
}

fn first_id(rows: Vec<postgres::Row>) -> Result<Option<i64>, StoreError> {
    rows.first().map(|row| i64::from_pg(row, 0)).transpose()
}

impl PgConn {
    fn session<R>(
        &self,
        f: impl FnOnce(&mut dyn Runner, &RefCell<HashMap<String, Statement>>) -> R,
    ) -> R {
        f(&mut *self.client.borrow_mut(), &self.statements)
    }
}

impl PgTx<'_> {
    fn session<R>(
        &self,
        f: impl FnOnce(&mut dyn Runner, &RefCell<HashMap<String, Statement>>) -> R,
    ) -> R {
        f(&mut *self.tx.borrow_mut(), self.statements)
    }
}

/// [`Db`] for a connection and for a transaction: the same statements
/// through the session each has ([`Runner`] and its statement cache).
macro_rules! pg_db {
    ($t:ty) => {
        impl Db for $t {
            fn dialect(&self) -> Dialect {
                Dialect::Postgres
            }

            fn execute(&self, sql: &str, args: &[&dyn Param]) -> Result<usize, StoreError> {
                self.session(|runner, statements| run_execute(runner, statements, sql, args))
            }

            fn insert_id(&self, sql: &str, args: &[&dyn Param]) -> Result<Option<i64>, StoreError> {
                let rows = self.session(|runner, statements| {
                    run_rows(runner, statements, sql, " RETURNING id", args)
                })?;
                first_id(rows)
            }

            fn for_each(
                &self,
                sql: &str,
                args: &[&dyn Param],
                each: &mut dyn FnMut(&Row<'_>) -> Result<bool, StoreError>,
            ) -> Result<(), StoreError> {
                // Rows are read (and the session let go) before `each`
                // runs, so `each` may run statements.
                let rows =
                    self.session(|runner, statements| run_rows(runner, statements, sql, "", args))?;
                each_row(rows, each)
            }
        }
    };
}

pg_db!(PgConn);
pg_db!(PgTx<'_>);

/// Brings a PostgreSQL schema up to date, each migration in its own
/// transaction under an advisory lock (two coordinators starting at once
/// migrate one after the other).
pub fn migrate_postgres(conn: &mut PgConn) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    loop {
        let tx = conn.transaction()?;
        let db: &dyn Db = &tx;
        db.execute(
            "SELECT pg_advisory_xact_lock(?1)",
            super::args![MIGRATION_LOCK],
        )?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )?;
        let db: &dyn Db = &tx;
        let version: i64 = db.one(
            "SELECT coalesce(max(version), 0) FROM schema_version",
            super::args![],
            |r| r.get(0),
        )?;
        if version > known {
            return Err(StoreError::SchemaTooNew {
                found: version,
                known,
            });
        }
        if version == known {
            return tx.commit();
        }
        tx.batch_execute(MIGRATIONS[version as usize])?;
        let db: &dyn Db = &tx;
        db.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
            super::args![version + 1, crate::store::unix_now_ms()],
        )?;
        tx.commit()?;
    }
}

/// Column `idx`'s type, or a corrupt-row error naming the index.
fn column_type(row: &postgres::Row, idx: usize) -> Result<&Type, StoreError> {
    row.columns()
        .get(idx)
        .map(|c| c.type_())
        .ok_or_else(|| StoreError::Corrupt(format!("no column {idx}")))
}

fn get<'a, T: FromSql<'a>>(row: &'a postgres::Row, idx: usize) -> Result<T, StoreError> {
    row.try_get(idx)
        .map_err(|e| StoreError::Corrupt(format!("column {idx}: {e}")))
}

impl Column for i64 {
    fn from_pg(row: &postgres::Row, idx: usize) -> Result<i64, StoreError> {
        match *column_type(row, idx)? {
            Type::INT4 => get::<i32>(row, idx).map(i64::from),
            Type::INT2 => get::<i16>(row, idx).map(i64::from),
            Type::BOOL => get::<bool>(row, idx).map(i64::from),
            _ => get::<i64>(row, idx),
        }
    }
}

impl Column for u32 {
    fn from_pg(row: &postgres::Row, idx: usize) -> Result<u32, StoreError> {
        let v = i64::from_pg(row, idx)?;
        u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("column {idx}: {v} is not a u32")))
    }
}

impl Column for i32 {
    fn from_pg(row: &postgres::Row, idx: usize) -> Result<i32, StoreError> {
        let v = i64::from_pg(row, idx)?;
        i32::try_from(v)
            .map_err(|_| StoreError::Corrupt(format!("column {idx}: {v} is not an i32")))
    }
}

impl Column for bool {
    fn from_pg(row: &postgres::Row, idx: usize) -> Result<bool, StoreError> {
        match *column_type(row, idx)? {
            Type::BOOL => get::<bool>(row, idx),
            _ => i64::from_pg(row, idx).map(|v| v != 0),
        }
    }
}

impl Column for f64 {
    fn from_pg(row: &postgres::Row, idx: usize) -> Result<f64, StoreError> {
        match *column_type(row, idx)? {
            Type::FLOAT4 => get::<f32>(row, idx).map(f64::from),
            Type::INT8 | Type::INT4 | Type::INT2 => i64::from_pg(row, idx).map(|v| v as f64),
            _ => get::<f64>(row, idx),
        }
    }
}

impl Column for String {
    fn from_pg(row: &postgres::Row, idx: usize) -> Result<String, StoreError> {
        get::<String>(row, idx)
    }
}

impl Column for Vec<u8> {
    fn from_pg(row: &postgres::Row, idx: usize) -> Result<Vec<u8>, StoreError> {
        get::<Vec<u8>>(row, idx)
    }
}

/// Reads any column as "is it NULL".
struct Present;

impl<'a> FromSql<'a> for Present {
    fn from_sql(_: &Type, _: &'a [u8]) -> Result<Present, Box<dyn Error + Sync + Send>> {
        Ok(Present)
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

impl<T: Column> Column for Option<T> {
    fn from_pg(row: &postgres::Row, idx: usize) -> Result<Option<T>, StoreError> {
        match get::<Option<Present>>(row, idx)? {
            None => Ok(None),
            Some(Present) => T::from_pg(row, idx).map(Some),
        }
    }
}
