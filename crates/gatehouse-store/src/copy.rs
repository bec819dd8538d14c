//! `gatehouse migrate-data`: every row of a SQLite store copied into an empty PostgreSQL one,
//! as stored — ids, audit hashes and salts included, so the chain verifies on the copy exactly
//! as it did on the original.

use std::path::Path;

use futures_util::TryStreamExt;
use sqlx::{Connection, Row};

use crate::{PgStore, SqliteStore, StoreError, StoreResult};

/// Rows per INSERT, under PostgreSQL's 65,535 parameters for the widest table.
const ROWS_PER_STATEMENT: usize = 500;

/// Copies `from` into the store at `to`, which must hold no rows; returns each table with
/// the rows copied. One transaction: a copy that fails leaves the target as it was.
pub async fn sqlite_to_postgres(from: &Path, to: &str) -> StoreResult<Vec<(String, u64)>> {
    // Both opened as the gateway would, so both schemas are at the newest version.
    let source = SqliteStore::open(from).await?;
    drop(PgStore::open(to, 1).await?);
    let mut src = source.pool.acquire().await?;
    let mut dst = sqlx::PgConnection::connect(to).await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
           AND table_name <> '_migrations' ORDER BY table_name",
    )
    .fetch_all(&mut dst)
    .await?;
    let mut tx = dst.begin().await?;
    for table in &tables {
        let any: Option<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT 1 FROM \"{table}\" LIMIT 1"
        )))
        .fetch_optional(&mut *tx)
        .await?;
        if any.is_some() {
            return Err(StoreError::Copy(format!(
                "the target already holds rows (table {table}); copy into an empty database or schema"
            )));
        }
    }
    let mut copied = Vec::with_capacity(tables.len());
    for table in tables {
        let columns: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(&table)
        .fetch_all(&mut *tx)
        .await?;
        let list = columns
            .iter()
            .map(|(c, _)| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let select = format!("SELECT {list} FROM \"{table}\"");
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(select)).fetch(&mut *src);
        let mut chunk = Vec::with_capacity(ROWS_PER_STATEMENT);
        let mut n = 0u64;
        while let Some(row) = rows.try_next().await? {
            chunk.push(row);
            if chunk.len() == ROWS_PER_STATEMENT {
                n += insert(&mut tx, &table, &list, &columns, &chunk).await?;
                chunk.clear();
            }
        }
        n += insert(&mut tx, &table, &list, &columns, &chunk).await?;
        tracing::info!(table, rows = n, "copied");
        copied.push((table, n));
    }
    tx.commit().await?;
    Ok(copied)
}

/// One multi-row INSERT of SQLite rows, each value read as the PostgreSQL column's type.
async fn insert(
    tx: &mut sqlx::PgConnection,
    table: &str,
    list: &str,
    columns: &[(String, String)],
    rows: &[sqlx::sqlite::SqliteRow],
) -> StoreResult<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let width = columns.len();
    let values = (0..rows.len())
        .map(|r| {
            let params: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
            format!("({})", params.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("INSERT INTO \"{table}\" ({list}) VALUES {values}");
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for row in rows {
        for (i, (name, ty)) in columns.iter().enumerate() {
            let bad = |e: sqlx::Error| {
                StoreError::Copy(format!(
                    "{table}.{name} of a row does not read as {ty}: {e}"
                ))
            };
            q = match ty.as_str() {
                "bigint" => q.bind(row.try_get::<Option<i64>, _>(i).map_err(bad)?),
                "double precision" => q.bind(row.try_get::<Option<f64>, _>(i).map_err(bad)?),
                "boolean" => q.bind(row.try_get::<Option<bool>, _>(i).map_err(bad)?),
                _ => q.bind(row.try_get::<Option<String>, _>(i).map_err(bad)?),
            };
        }
    }
    Ok(q.execute(&mut *tx).await?.rows_affected())
}
