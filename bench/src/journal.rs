//! The journal scenario: how many rows a second the gateway's [`Journal`] writer sustains into
//! SQLite (a file) and PostgreSQL, recording request rows as fast as a caller can hand them over.

use std::time::{Duration, Instant};

use gateway::config::JournalConfig;
use gateway::journal::Journal;
use gateway::store::{Amount, Interaction, JournalEntry, RequestRecord, Store};
use proto::Vin;

/// One database's figures.
#[derive(Debug, Clone)]
pub struct JournalRun {
    /// `sqlite (file)` or `postgres`.
    pub database: String,
    /// Rows recorded.
    pub rows: u64,
    /// `journal.max_batch_rows`.
    pub batch: usize,
    /// Rows dropped because the queue was full.
    pub dropped: u64,
    /// From the first row recorded to the last one written.
    pub elapsed: Duration,
}

impl JournalRun {
    /// Rows written per second.
    pub fn rows_per_second(&self) -> f64 {
        (self.rows - self.dropped) as f64 / self.elapsed.as_secs_f64()
    }
}

/// A request row of car `i % 1000`, as the router records one (no bodies, an amount).
fn row(i: u64) -> JournalEntry {
    let vin = Vin::parse(&format!("LSVAU2180N{:07}", i % 1000)).expect("valid VIN");
    JournalEntry {
        id: 0,
        at_ms: 1_700_000_000_000 + i as i64,
        vin,
        what: Interaction::Request(RequestRecord {
            service: "parking.v1.ParkingPayment".into(),
            method: "EndSession".into(),
            code: 0,
            latency_us: 1_500,
            amount: Some(Amount {
                minor_units: 1_250,
                currency: "CNY".into(),
            }),
            request_id: format!("req-{i}"),
            request_payload: None,
            response_payload: None,
        }),
    }
}

/// Records `rows` rows into a journal on `store` (queue as large as the run, so nothing is
/// dropped and the figure is the writer's) and waits until every one is written.
pub async fn run(database: &str, store: Store, rows: u64, batch: usize) -> anyhow::Result<JournalRun> {
    let config = JournalConfig {
        max_queued_rows: usize::try_from(rows)?.max(1),
        max_batch_rows: batch,
        ..JournalConfig::default()
    };
    let journal = Journal::spawn(store.clone(), &config);
    let started = Instant::now();
    for i in 0..rows {
        journal.record(row(i));
    }
    journal.flushed().await;
    let elapsed = started.elapsed();
    let stats = journal.stats();
    journal.close().await;
    store.close().await;
    Ok(JournalRun {
        database: database.to_owned(),
        rows,
        batch,
        dropped: stats.dropped,
        elapsed,
    })
}

/// The runs as a Markdown table.
pub fn table(runs: &[JournalRun]) -> String {
    let mut out = String::from("| database | rows | batch rows | seconds | rows/s |\n|---|---:|---:|---:|---:|\n");
    for r in runs {
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.0} |\n",
            r.database,
            r.rows - r.dropped,
            r.batch,
            r.elapsed.as_secs_f64(),
            r.rows_per_second()
        ));
    }
    out
}

/// Runs the scenario on a fresh SQLite file in `dir` and on a fresh schema of the PostgreSQL
/// database at `postgres` (dropped afterwards), and returns both runs.
pub async fn sqlite_and_postgres(
    dir: &std::path::Path,
    postgres: &str,
    rows: u64,
    batch: usize,
) -> anyhow::Result<Vec<JournalRun>> {
    let sqlite = Store::connect(&format!("sqlite://{}", dir.join("journal.db").display())).await?;
    let mut runs = vec![run("sqlite (file)", sqlite, rows, batch).await?];

    let schema =
        gateway::store::ScratchSchema::create(postgres, &format!("journal_bench_{}", std::process::id())).await?;
    let outcome = async { run("postgres", Store::connect(schema.url()).await?, rows, batch).await }.await;
    schema.drop().await?;
    runs.push(outcome?);
    Ok(runs)
}
