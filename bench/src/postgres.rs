//! `--database`: a fresh PostgreSQL database per coordinator run, created
//! on the admin URL given and dropped after the run.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};
use tokio_postgres::NoTls;

/// Databases made by this process so far (their names stay unique).
static MADE: AtomicUsize = AtomicUsize::new(0);

/// A database made for one figure's coordinator(s).
pub(crate) struct Database {
    admin_url: String,
    name: String,
    /// Its URL, as `kobo-coord serve --database` takes it.
    pub(crate) url: String,
}

impl Database {
    /// Creates `kobo_bench_<pid>_<figure>_<n>` on the server of `admin_url`.
    pub(crate) async fn create(admin_url: &str, figure: &str) -> anyhow::Result<Database> {
        let name = format!(
            "kobo_bench_{}_{}_{}",
            std::process::id(),
            figure.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            MADE.fetch_add(1, Ordering::Relaxed)
        );
        let client = connect(admin_url).await?;
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("--database: creating database {name}"))?;
        Ok(Database {
            url: with_database(admin_url, &name)?,
            admin_url: admin_url.to_string(),
            name,
        })
    }

    /// Drops the database (its coordinators stopped or killed first).
    pub(crate) async fn drop(self) -> anyhow::Result<()> {
        let client = connect(&self.admin_url).await?;
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .await
            .with_context(|| format!("--database: dropping database {}", self.name))
    }
}

/// Checks at start that the admin URL connects and may create databases.
pub(crate) async fn check(admin_url: &str) -> anyhow::Result<()> {
    let client = connect(admin_url).await?;
    let row = client
        .query_one(
            "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .context("--database: reading the role's rights")?;
    if !row.get::<_, bool>(0) {
        bail!("--database: the role of {admin_url:?} may not create databases (CREATEDB)");
    }
    Ok(())
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("--database: connecting to {url:?}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// `url` with its database (the path) replaced by `name`, query kept.
fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let Some(scheme_end) = url.find("://") else {
        bail!("--database: {url:?} is not a URL (postgres://user@host:port/database)");
    };
    let authority_start = scheme_end + 3;
    let (head, query) = match url.find('?') {
        Some(q) => url.split_at(q),
        None => (url, ""),
    };
    let authority_end = head[authority_start..]
        .find('/')
        .map_or(head.len(), |i| authority_start + i);
    Ok(format!("{}/{name}{query}", &head[..authority_end]))
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_of_a_url_is_replaced_and_its_query_kept() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "b").unwrap(),
            "postgres://postgres@127.0.0.1:5432/b"
        );
        assert_eq!(
            with_database("postgres://u:p@h:1/postgres?sslmode=disable", "b").unwrap(),
            "postgres://u:p@h:1/b?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u@h:1", "b").unwrap(),
            "postgres://u@h:1/b"
        );
        assert!(with_database("localhost:5432", "b").is_err());
    }
}
