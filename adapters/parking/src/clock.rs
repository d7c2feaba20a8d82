//! Where the adapter gets the time from: fees depend on how long a car parked, so tests move a
//! [`ManualClock`] forward instead of sleeping. The clocks are the partner kit's, in `proto`.

pub use proto::adapter::clock::{Clock, ManualClock, SystemClock};
