//! Queries for the human-review queue.

use anyhow::Context;
use sqlx::{AnyConnection, Row, any::AnyRow};

use super::Store;

#[derive(Debug, Clone, PartialEq)]
pub struct ReviewRow {
    pub ledger_index: i64,
    pub request_id: String,
    pub system_id: String,
    pub created_at: String,
    /// JSON array text.
    pub messages: String,
    pub answer: String,
    pub status: String,
    pub verdict_by: Option<String>,
    pub verdict_at: Option<String>,
    pub correction: Option<String>,
    pub comment: Option<String>,
    pub verdict_index: Option<i64>,
}

macro_rules! review_columns {
    () => {
        "ledger_index, request_id, system_id, created_at, messages, answer, status, verdict_by, verdict_at, correction, comment, verdict_index"
    };
}

fn from_row(row: &AnyRow) -> Result<ReviewRow, sqlx::Error> {
    Ok(ReviewRow {
        ledger_index: row.try_get("ledger_index")?,
        request_id: row.try_get("request_id")?,
        system_id: row.try_get("system_id")?,
        created_at: row.try_get("created_at")?,
        messages: row.try_get("messages")?,
        answer: row.try_get("answer")?,
        status: row.try_get("status")?,
        verdict_by: row.try_get("verdict_by")?,
        verdict_at: row.try_get("verdict_at")?,
        correction: row.try_get("correction")?,
        comment: row.try_get("comment")?,
        verdict_index: row.try_get("verdict_index")?,
    })
}

impl Store {
    pub async fn insert_review(&self, row: &ReviewRow) -> anyhow::Result<()> {
        sqlx::query(concat!("INSERT INTO review_queue (", review_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"))
            .bind(row.ledger_index)
            .bind(&row.request_id)
            .bind(&row.system_id)
            .bind(&row.created_at)
            .bind(&row.messages)
            .bind(&row.answer)
            .bind(&row.status)
            .bind(&row.verdict_by)
            .bind(&row.verdict_at)
            .bind(&row.correction)
            .bind(&row.comment)
            .bind(row.verdict_index)
            .execute(&self.pool)
            .await
            .context("queueing an answer for review")?;
        Ok(())
    }

    pub async fn review(&self, ledger_index: i64) -> anyhow::Result<Option<ReviewRow>> {
        let row = sqlx::query(concat!("SELECT ", review_columns!(), " FROM review_queue WHERE ledger_index = $1"))
            .bind(ledger_index)
            .fetch_optional(&self.pool)
            .await
            .context("reading a review")?;
        row.as_ref().map(from_row).transpose().context("decoding a review")
    }

    pub async fn reviews(&self, status: Option<&str>, limit: i64) -> anyhow::Result<Vec<ReviewRow>> {
        // Two statements rather than `$1 IS NULL OR …`, whose parameter type PostgreSQL cannot infer.
        let query = match status {
            Some(status) => sqlx::query(concat!("SELECT ", review_columns!(), " FROM review_queue WHERE status = $1 ORDER BY ledger_index LIMIT $2"))
                .bind(status)
                .bind(limit),
            None => sqlx::query(concat!("SELECT ", review_columns!(), " FROM review_queue ORDER BY ledger_index LIMIT $1")).bind(limit),
        };
        let rows = query.fetch_all(&self.pool).await.context("listing reviews")?;
        rows.iter().map(from_row).collect::<Result<_, _>>().context("decoding a review")
    }

    /// Records a verdict on a pending review; false when it was no longer pending.
    #[expect(clippy::too_many_arguments, reason = "the columns of one verdict, each named at the call")]
    pub async fn decide_review(
        tx: &mut AnyConnection,
        ledger_index: i64,
        status: &str,
        by: &str,
        at: &str,
        correction: Option<&str>,
        comment: Option<&str>,
        verdict_index: i64,
    ) -> anyhow::Result<bool> {
        let done = sqlx::query(
            "UPDATE review_queue SET status = $2, verdict_by = $3, verdict_at = $4, correction = $5, comment = $6, verdict_index = $7
             WHERE ledger_index = $1 AND status = 'pending'",
        )
        .bind(ledger_index)
        .bind(status)
        .bind(by)
        .bind(at)
        .bind(correction)
        .bind(comment)
        .bind(verdict_index)
        .execute(tx)
        .await
        .context("recording a verdict")?;
        Ok(done.rows_affected() == 1)
    }
}
