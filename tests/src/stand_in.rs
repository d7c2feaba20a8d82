//! Stand-ins for the parking partner: the reference adapter's state behind faults a test
//! scripts ([`ScriptedParking`]: on EndSession) or steers while it runs ([`SteeredParking`]:
//! on ListNearbyLots and StartSession), with the calls they watch counted and held.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_adapter::ParkingService;
use proto::parking::v1::parking_payment_server::ParkingPayment;
use proto::parking::v1::{
    EndSessionRequest, EndSessionResponse, GetReceiptRequest, ListNearbyLotsRequest, ListNearbyLotsResponse, Receipt,
    RefundSessionRequest, RefundSessionResponse, StartSessionRequest, StartSessionResponse,
};
use tokio::sync::{Notify, Semaphore};
use tonic::{Request, Response, Status};

/// A call of the parking service, as a stand-in partner tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkingCall {
    /// ListNearbyLots.
    ListNearbyLots,
    /// StartSession.
    StartSession,
    /// EndSession: the payment.
    EndSession,
    /// GetReceipt.
    GetReceipt,
    /// RefundSession.
    RefundSession,
}

/// What a stand-in parking partner does with a call before the reference adapter answers it:
/// the faults a test scripts ([`ScriptedParking`]) or steers ([`SteeredParking`]).
#[tonic::async_trait]
pub trait BeforeAnswering: Clone + Send + Sync + 'static {
    /// Runs before `call` is answered; an error is the answer instead.
    async fn before(&self, call: ParkingCall) -> Result<(), Status>;
}

/// The reference parking adapter's state behind a test's [`BeforeAnswering`].
#[derive(Clone)]
pub struct StandIn<B> {
    inner: ParkingService,
    before: B,
}

#[tonic::async_trait]
impl<B: BeforeAnswering> ParkingPayment for StandIn<B> {
    async fn list_nearby_lots(
        &self,
        r: Request<ListNearbyLotsRequest>,
    ) -> Result<Response<ListNearbyLotsResponse>, Status> {
        self.before.before(ParkingCall::ListNearbyLots).await?;
        self.inner.list_nearby_lots(r).await
    }

    async fn start_session(&self, r: Request<StartSessionRequest>) -> Result<Response<StartSessionResponse>, Status> {
        self.before.before(ParkingCall::StartSession).await?;
        self.inner.start_session(r).await
    }

    async fn end_session(&self, r: Request<EndSessionRequest>) -> Result<Response<EndSessionResponse>, Status> {
        self.before.before(ParkingCall::EndSession).await?;
        self.inner.end_session(r).await
    }

    async fn get_receipt(&self, r: Request<GetReceiptRequest>) -> Result<Response<Receipt>, Status> {
        self.before.before(ParkingCall::GetReceipt).await?;
        self.inner.get_receipt(r).await
    }

    async fn refund_session(
        &self,
        r: Request<RefundSessionRequest>,
    ) -> Result<Response<RefundSessionResponse>, Status> {
        self.before.before(ParkingCall::RefundSession).await?;
        self.inner.refund_session(r).await
    }
}

/// The calls a stand-in watches: counted as they arrive, announced to a test waiting for them,
/// and held, when the stand-in holds them, until the test releases them.
#[derive(Clone)]
struct Arrivals {
    count: Arc<AtomicU64>,
    arrived: Arc<Notify>,
    hold: Arc<Semaphore>,
}

impl Arrivals {
    fn new() -> Arrivals {
        Arrivals {
            count: Arc::default(),
            arrived: Arc::default(),
            hold: Arc::new(Semaphore::new(0)),
        }
    }

    /// Counts a call and announces it.
    fn arrive(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.arrived.notify_waiters();
    }

    /// Waits for the test to release one held call.
    async fn held(&self) {
        self.hold.acquire().await.expect("hold semaphore").forget();
    }

    fn release(&self, n: usize) {
        self.hold.add_permits(n);
    }

    fn next(&self) -> tokio::sync::futures::OwnedNotified {
        self.arrived.clone().notified_owned()
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    async fn reached(&self, n: u64) {
        loop {
            // Registered before the check, so an arrival in between is not missed.
            let arrived = self.next();
            if self.count() >= n {
                return;
            }
            arrived.await;
        }
    }
}

/// The faults of a [`ScriptedParking`], all on EndSession.
#[derive(Clone)]
pub struct EndSessionFaults {
    fail_first: Arc<AtomicBool>,
    holding: bool,
    ends: Arrivals,
}

#[tonic::async_trait]
impl BeforeAnswering for EndSessionFaults {
    async fn before(&self, call: ParkingCall) -> Result<(), Status> {
        if call != ParkingCall::EndSession {
            return Ok(());
        }
        self.ends.arrive();
        if self.fail_first.swap(false, Ordering::SeqCst) {
            return Err(Status::unavailable("payment provider briefly unavailable"));
        }
        if self.holding {
            self.ends.held().await;
        }
        Ok(())
    }
}

/// A parking partner that wraps the reference one with scripted faults: it can fail the first
/// EndSession with UNAVAILABLE, or hold EndSession calls until the test releases them. It
/// counts the EndSession calls that reach it (the reference service counts actual charges).
pub type ScriptedParking = StandIn<EndSessionFaults>;

impl ScriptedParking {
    /// Behaves exactly like `inner`.
    pub fn new(inner: ParkingService) -> ScriptedParking {
        let faults = EndSessionFaults {
            fail_first: Arc::default(),
            holding: false,
            ends: Arrivals::new(),
        };
        StandIn { inner, before: faults }
    }

    /// The first EndSession answers UNAVAILABLE without touching the session.
    pub fn failing_first_end(self) -> Self {
        self.before.fail_first.store(true, Ordering::SeqCst);
        self
    }

    /// Every EndSession waits for [`ScriptedParking::release`] before running.
    pub fn holding_ends(mut self) -> Self {
        self.before.holding = true;
        self
    }

    /// Lets `n` held EndSession calls proceed.
    pub fn release(&self, n: usize) {
        self.before.ends.release(n);
    }

    /// Resolves when an EndSession call has reached the partner (register before triggering).
    pub fn end_arrived(&self) -> tokio::sync::futures::OwnedNotified {
        self.before.ends.next()
    }

    /// EndSession calls that reached this partner.
    pub fn end_calls(&self) -> u64 {
        self.before.ends.count()
    }

    /// Resolves once `n` EndSession calls in all have reached the partner.
    pub async fn ends_arrived(&self, n: u64) {
        self.before.ends.reached(n).await
    }
}

/// What a [`SteeredParking`] does with the calls it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steering {
    /// Answers as the reference adapter does.
    Answer,
    /// Holds every call until [`SteeredParking::release`], then answers.
    Hang,
    /// Fails every call with this code.
    Fail(tonic::Code),
}

/// The steering of a [`SteeredParking`], applied to ListNearbyLots and StartSession.
#[derive(Clone)]
pub struct Steered {
    steering: Arc<std::sync::Mutex<Steering>>,
    calls: Arrivals,
}

#[tonic::async_trait]
impl BeforeAnswering for Steered {
    async fn before(&self, call: ParkingCall) -> Result<(), Status> {
        if !matches!(call, ParkingCall::ListNearbyLots | ParkingCall::StartSession) {
            return Ok(());
        }
        self.calls.arrive();
        let steering = *self.steering.lock().expect("steering");
        match steering {
            Steering::Answer => Ok(()),
            Steering::Hang => {
                self.calls.held().await;
                Ok(())
            }
            Steering::Fail(code) => Err(Status::new(code, "steered to fail")),
        }
    }
}

/// A parking partner the test steers while it runs: it answers, hangs, or fails with a
/// chosen code, and recovers when told to ([`Steering`]). It counts the ListNearbyLots and
/// StartSession calls that reach it, which are the ones it steers.
pub type SteeredParking = StandIn<Steered>;

impl SteeredParking {
    /// Answers like `inner` until steered otherwise.
    pub fn new(inner: ParkingService) -> SteeredParking {
        let steered = Steered {
            steering: Arc::new(std::sync::Mutex::new(Steering::Answer)),
            calls: Arrivals::new(),
        };
        StandIn { inner, before: steered }
    }

    /// What calls arriving from now on get.
    pub fn steer(&self, steering: Steering) {
        *self.before.steering.lock().expect("steering") = steering;
    }

    /// Lets `n` calls held by [`Steering::Hang`] go on and answer.
    pub fn release(&self, n: usize) {
        self.before.calls.release(n);
    }

    /// Steered calls that reached this partner.
    pub fn calls(&self) -> u64 {
        self.before.calls.count()
    }

    /// Resolves once `n` steered calls in all have reached the partner.
    pub async fn calls_arrived(&self, n: u64) {
        self.before.calls.reached(n).await
    }
}
