//! What the kit found: one line per check, PASS, FAIL or SKIP, with the reason, and for a
//! failure what the contract says and where.

use std::fmt;

/// Where the contract says what a check checks, and what it says, in one sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contract {
    /// A section of the partner documentation, e.g. `docs/partners.md#connecting`.
    pub section: &'static str,
    /// What the contract asks, in one sentence.
    pub says: &'static str,
}

impl Contract {
    /// What the contract says, `says`, in `section` (one of [`section`]'s).
    pub const fn new(section: &'static str, says: &'static str) -> Contract {
        Contract { section, says }
    }
}

/// The sections of the partner documentation that checks cite.
pub mod section {
    /// Mutual TLS: the client certificate, its CA and its role.
    pub const CONNECTING: &str = "docs/partners.md#connecting";
    /// The metadata of every call: the car, the idempotency key and the deadline.
    pub const EVERY_CALL: &str = "docs/partners.md#what-every-call-carries";
    /// The status codes an adapter answers.
    pub const ERRORS: &str = "docs/partners.md#errors";
    /// Publishing events through the gateway's partner API.
    pub const PUSHING_EVENTS: &str = "docs/partners.md#pushing-events-to-cars";
}

/// How one check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The adapter does what the contract says; what was seen.
    Pass(String),
    /// It does not; what it did instead.
    Fail(String),
    /// Not checked, and why (what to give the kit so that it is).
    Skip(String),
}

impl Outcome {
    /// PASS, FAIL or SKIP.
    pub fn verdict(&self) -> &'static str {
        match self {
            Outcome::Pass(_) => "PASS",
            Outcome::Fail(_) => "FAIL",
            Outcome::Skip(_) => "SKIP",
        }
    }

    /// What was seen, or why not.
    pub fn reason(&self) -> &str {
        match self {
            Outcome::Pass(r) | Outcome::Fail(r) | Outcome::Skip(r) => r,
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// The check's name, `area.what`, e.g. `idempotency.start-session`.
    pub name: &'static str,
    /// What the contract says about it.
    pub contract: Contract,
    /// How it ended.
    pub outcome: Outcome,
}

/// Every check's result, in the order they ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The service checked, e.g. `parking.v1.ParkingPayment`.
    pub service: String,
    /// The endpoint checked.
    pub endpoint: String,
    /// Notes about the run as a whole (which profile was used).
    pub notes: Vec<String>,
    /// The results.
    pub results: Vec<CheckResult>,
}

impl Report {
    /// True if no check failed.
    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }

    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &CheckResult> {
        self.results.iter().filter(|r| matches!(r.outcome, Outcome::Fail(_)))
    }

    /// The result of the check named `name`.
    pub fn get(&self, name: &str) -> Option<&CheckResult> {
        self.results.iter().find(|r| r.name == name)
    }

    fn count(&self, verdict: &str) -> usize {
        self.results.iter().filter(|r| r.outcome.verdict() == verdict).count()
    }
}

impl fmt::Display for Report {
    /// The report as the CLI prints it: a header, one line per check (and for a failure, the
    /// contract's words and section on the next line), then the totals.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "partner-kit: {} at {}", self.service, self.endpoint)?;
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        let width = self.results.iter().map(|r| r.name.len()).max().unwrap_or(0);
        for result in &self.results {
            let verdict = result.outcome.verdict();
            writeln!(f, "{verdict}  {:width$}  {}", result.name, result.outcome.reason())?;
            if verdict == "FAIL" {
                writeln!(
                    f,
                    "      {:width$}  contract: {} ({})",
                    "", result.contract.says, result.contract.section
                )?;
            }
        }
        writeln!(
            f,
            "{} passed, {} failed, {} skipped",
            self.count("PASS"),
            self.count("FAIL"),
            self.count("SKIP")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT: Contract = Contract::new(section::CONNECTING, "require a client certificate");

    #[test]
    fn a_failure_names_the_contract_and_the_totals_count_every_verdict() {
        let report = Report {
            service: "parking.v1.ParkingPayment".into(),
            endpoint: "https://localhost:1".into(),
            notes: vec![],
            results: vec![
                CheckResult {
                    name: "mtls.no-client-certificate",
                    contract: CONTRACT,
                    outcome: Outcome::Fail("answered OK".into()),
                },
                CheckResult {
                    name: "mtls.vehicle-certificate",
                    contract: CONTRACT,
                    outcome: Outcome::Skip("no --vehicle-cert given".into()),
                },
            ],
        };
        let text = report.to_string();
        assert!(!report.passed());
        assert!(
            text.contains("FAIL  mtls.no-client-certificate  answered OK\n"),
            "{text}"
        );
        assert!(
            text.contains("contract: require a client certificate (docs/partners.md#connecting)"),
            "{text}"
        );
        assert!(
            text.contains("SKIP  mtls.vehicle-certificate    no --vehicle-cert given"),
            "{text}"
        );
        assert!(text.ends_with("0 passed, 1 failed, 1 skipped\n"), "{text}");
    }
}
