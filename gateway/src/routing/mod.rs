//! Request routing: from a car's envelope to the partner adapter that serves its method and
//! back. It knows nothing of TLS or sockets; it sees the bus and partner channels.

pub mod dispatcher;
pub mod idempotency;
pub mod partners;
mod recorded;
pub mod resilience;
pub mod sign_ins;
pub mod stats;

pub use dispatcher::{Dispatcher, RequestRouter};
pub use idempotency::Ledger;
pub use partners::{CallContext, PartnerAdapter, PartnerDirectory, PartnerError, PartnerReply};
pub use resilience::{BreakerState, PartnerHealth};
pub use sign_ins::SignInLinker;
pub use stats::{PartnerStatus, RequestStats};
