//! The `gateway fleet` command line (clap derive) and the parsers of its values: VINs,
//! instants (RFC 3339 or unix milliseconds), `PROVIDER:SUBJECT` social identities, roles.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use proto::Vin;
use proto::fleet::v1 as fleet;

/// What `--help` says of the connection settings.
const CONNECTION_HELP: &str = "Connection: --ops, --cert, --key and --ca (or CARLINK_OPS_URL, \
CARLINK_OPS_CERT, CARLINK_OPS_KEY, CARLINK_OPS_CA) name the gateway's ops listener, the operator \
certificate and key it issued you (OU=operator, from the operators CA), and the root CA that signed \
the gateway's certificate.";

/// `gateway fleet`: the connection settings, the output format and the command.
#[derive(Args)]
#[command(after_help = CONNECTION_HELP)]
pub struct FleetArgs {
    #[command(flatten)]
    pub(super) connection: ConnectionArgs,
    /// Print each response as JSON (the proto3 JSON mapping), one object per line.
    #[arg(long, global = true)]
    pub(super) json: bool,
    #[command(subcommand)]
    pub(super) command: FleetCommand,
}

/// Where the ops listener is and how to prove being an operator. Optional for clap (global
/// arguments cannot be required); checked when connecting, exit 64 if missing.
#[derive(Args)]
pub(super) struct ConnectionArgs {
    /// The gateway's ops listener, e.g. https://127.0.0.1:9443.
    #[arg(long = "ops", value_name = "URL", env = "CARLINK_OPS_URL", global = true)]
    pub(super) url: Option<String>,
    /// Your operator certificate (PEM; the leaf, then its issuing CA).
    #[arg(long, env = "CARLINK_OPS_CERT", global = true)]
    pub(super) cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "CARLINK_OPS_KEY", global = true)]
    pub(super) key: Option<PathBuf>,
    /// The root CA that signed the gateway's certificate (PEM).
    #[arg(long, env = "CARLINK_OPS_CA", global = true)]
    pub(super) ca: Option<PathBuf>,
    /// The name the gateway's certificate must bear (the development certificate's is localhost).
    #[arg(long, default_value = "localhost", env = "CARLINK_OPS_SERVER_NAME", global = true)]
    pub(super) server_name: String,
}

#[derive(Subcommand)]
pub(super) enum FleetCommand {
    /// Live sessions and the most recently closed ones, with why they ended.
    Sessions {
        /// Only VINs starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// How many recently closed sessions to show (the gateway's default is 50, at most 1000).
        #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
        closed: u32,
    },
    /// Every connect and disconnect from now on, one line each, until Ctrl-C.
    Watch {
        /// Only VINs starting with this.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// A vehicle's requests, partner events and session changes, oldest first.
    Timeline {
        /// The vehicle.
        #[arg(value_parser = vin)]
        vin: Vin,
        #[command(flatten)]
        range: TimelineArgs,
    },
    /// What happened on every vehicle a customer owned or drove while linked, oldest first.
    CustomerTimeline {
        /// The customer's id.
        id: String,
        #[command(flatten)]
        range: TimelineArgs,
    },
    /// Each partner service's request rate, latency, error rate and circuit breaker.
    Partners,
    /// Ends a vehicle's live session now (it may reconnect: revoke it to keep it out).
    Kick {
        /// The vehicle.
        #[arg(value_parser = vin)]
        vin: Vin,
    },
    /// Revokes a vehicle's certificates: its session ends and every reconnect is refused.
    Revoke {
        /// The vehicle.
        #[arg(value_parser = vin)]
        vin: Vin,
        /// Why (stolen, decommissioned, ...): kept with the revocation.
        #[arg(long, value_parser = reason)]
        reason: String,
    },
    /// The revoked vehicles, newest first.
    Revocations,
    /// Customers: create, look up, link vehicles and social identities.
    #[command(subcommand)]
    Customer(CustomerCommand),
    /// A one-time link that signs a browser in to the ops dashboard (prints the URL).
    DashboardLink {
        /// How long the link may be used (the gateway's default is 300, at most 3600).
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..=3600))]
        valid: Option<u32>,
    },
}

/// The range and paging of a timeline.
#[derive(Args, Clone)]
pub(super) struct TimelineArgs {
    /// From this instant on (inclusive): RFC 3339 (2025-06-01T08:00:00+08:00) or unix ms.
    #[arg(long, value_parser = instant)]
    pub(super) from: Option<i64>,
    /// Up to this instant (exclusive), same forms; default now.
    #[arg(long, value_parser = instant)]
    pub(super) to: Option<i64>,
    /// Every page, one after the other, instead of the first only.
    #[arg(long)]
    pub(super) all: bool,
    /// Entries per page (the gateway's default is 100, at most 1000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(super) page_size: Option<u32>,
    /// Start at this page (a previous page's token).
    #[arg(long, value_name = "TOKEN")]
    pub(super) page_token: Option<String>,
}

#[derive(Subcommand)]
pub(super) enum CustomerCommand {
    /// A new customer, with no vehicle or social identity yet.
    Create {
        /// Their display name.
        name: String,
    },
    /// A customer, found by id, by one of their vehicles or by a social identity.
    Show {
        #[command(flatten)]
        by: CustomerBy,
    },
    /// Links a vehicle to a customer.
    Link {
        /// The customer's id.
        id: String,
        /// The vehicle.
        #[arg(value_parser = vin)]
        vin: Vin,
        /// The customer's role for this vehicle.
        #[arg(long, value_enum)]
        role: Role,
    },
    /// Ends a vehicle's link to a customer.
    Unlink {
        /// The customer's id.
        id: String,
        /// The vehicle.
        #[arg(value_parser = vin)]
        vin: Vin,
    },
    /// Links a social identity to a customer.
    LinkSocial {
        /// The customer's id.
        id: String,
        /// PROVIDER:SUBJECT, e.g. wechat:o6_bmjrPTlm6_2sgVt7hMZOPfL2M.
        #[arg(value_parser = social, value_name = "PROVIDER:SUBJECT")]
        identity: Social,
    },
    /// Unlinks a social identity from its customer.
    UnlinkSocial {
        /// The customer's id.
        id: String,
        /// PROVIDER:SUBJECT.
        #[arg(value_parser = social, value_name = "PROVIDER:SUBJECT")]
        identity: Social,
    },
}

/// Exactly one way to find a customer.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub(super) struct CustomerBy {
    /// The customer's id.
    #[arg(long)]
    pub(super) id: Option<String>,
    /// A vehicle linked to the customer.
    #[arg(long, value_parser = vin)]
    pub(super) vin: Option<Vin>,
    /// A social identity linked to the customer, PROVIDER:SUBJECT.
    #[arg(long, value_parser = social, value_name = "PROVIDER:SUBJECT")]
    pub(super) social: Option<Social>,
}

/// A customer's role for a vehicle.
#[derive(Clone, Copy, ValueEnum)]
pub(super) enum Role {
    /// The vehicle's owner.
    Owner,
    /// A driver of the vehicle.
    Driver,
}

impl From<Role> for fleet::VehicleRole {
    fn from(role: Role) -> Self {
        match role {
            Role::Owner => fleet::VehicleRole::Owner,
            Role::Driver => fleet::VehicleRole::Driver,
        }
    }
}

/// A social identity as typed: `PROVIDER:SUBJECT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Social {
    provider: String,
    subject: String,
}

impl From<Social> for fleet::SocialIdentity {
    fn from(s: Social) -> Self {
        fleet::SocialIdentity {
            provider: s.provider,
            subject: s.subject,
            linked_at_ms: 0,
        }
    }
}

/// A VIN, checked here so that a typo is named before anything is sent.
fn vin(text: &str) -> Result<Vin, String> {
    Vin::parse(text).map_err(|e| e.to_string())
}

/// A revocation's reason: something must be said.
fn reason(text: &str) -> Result<String, String> {
    match text.trim() {
        "" => Err("say why (stolen, decommissioned, ...): it is kept with the revocation".into()),
        t => Ok(t.to_owned()),
    }
}

/// `PROVIDER:SUBJECT`, split at the first colon (subjects may hold colons, provider names don't).
fn social(text: &str) -> Result<Social, String> {
    match text.split_once(':') {
        Some((provider, subject)) if !provider.is_empty() && !subject.is_empty() => Ok(Social {
            provider: provider.to_owned(),
            subject: subject.to_owned(),
        }),
        _ => Err("expected PROVIDER:SUBJECT, e.g. wechat:o6_bmjrPTlm6".into()),
    }
}

/// An instant as unix milliseconds: RFC 3339, or a number of milliseconds.
fn instant(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return match ms {
            0.. => Ok(ms),
            _ => Err("unix milliseconds cannot be negative".into()),
        };
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("not RFC 3339 (2025-06-01T08:00:00+08:00) nor unix milliseconds: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_rfc3339_or_milliseconds() {
        assert_eq!(instant("1748736000000"), Ok(1_748_736_000_000));
        assert_eq!(instant("2025-06-01T08:00:00+08:00"), Ok(1_748_736_000_000));
        assert_eq!(instant("2025-06-01T00:00:00Z"), Ok(1_748_736_000_000));
        assert!(instant("-5").unwrap_err().contains("negative"));
        assert!(instant("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn a_social_identity_is_provider_then_subject() {
        assert_eq!(
            social("wechat:o6:x"),
            Ok(Social {
                provider: "wechat".into(),
                subject: "o6:x".into()
            })
        );
        for bad in ["wechat", ":x", "wechat:", ""] {
            assert!(social(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_revocation_needs_a_reason() {
        assert!(reason("  ").is_err());
        assert_eq!(reason(" stolen ").as_deref(), Ok("stolen"));
    }
}
