//! Where the adapter gets the time from: codes expire and polls are paced, so tests move a
//! [`ManualClock`] forward instead of sleeping. The clocks are the partner kit's, in `proto`.

pub use proto::adapter::clock::{Clock, ManualClock, SystemClock};
