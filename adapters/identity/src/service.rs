//! The `identity.v1.SocialLogin` implementation: the car's side of a device login.
//!
//! Each handler reads the caller from the metadata, checks the request, then asks
//! [`DeviceLogins`]. Logs carry the VIN and request id, never a code or a token: the device code
//! and the link token are bearer secrets, the user code is one while it is pending.

use proto::metadata;
use proto::social_login::v1::poll_device_login_response::Outcome;
use proto::social_login::v1::social_login_server::{SocialLogin, SocialLoginServer};
use proto::social_login::v1::{
    PollDeviceLoginRequest, PollDeviceLoginResponse, SocialProvider, StartDeviceLoginRequest, StartDeviceLoginResponse,
};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::codes;
use crate::logins::{DeviceLogins, NotFound, StartRefused, provider_name};

/// Longest idempotency key remembered; longer ones are INVALID_ARGUMENT.
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;

/// The reference `SocialLogin` service; clones share the same logins.
#[derive(Clone)]
pub struct SocialLoginService {
    logins: DeviceLogins,
}

impl SocialLoginService {
    /// The car's side of `logins`, whose other side is the verification page.
    pub fn new(logins: DeviceLogins) -> Self {
        SocialLoginService { logins }
    }

    /// Wraps the service in the generated tonic server, ready for `Server::add_service`.
    pub fn into_server(self) -> SocialLoginServer<SocialLoginService> {
        SocialLoginServer::new(self)
    }
}

/// Identity and correlation data of one call, read from its metadata.
struct Caller {
    vin: Option<String>,
    request_id: String,
}

impl Caller {
    fn of(metadata: &MetadataMap) -> Caller {
        let text = |name: &str| {
            metadata
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        Caller {
            // Only the gateway writes this header (see `require_gateway_client`); an unreadable
            // one is as good as none.
            vin: text(metadata::VIN),
            request_id: text(metadata::REQUEST_ID).unwrap_or_else(|| "-".into()),
        }
    }

    fn vin(&self) -> Result<&str, Status> {
        self.vin
            .as_deref()
            .ok_or_else(|| Status::unauthenticated(format!("{} metadata is missing", metadata::VIN)))
    }
}

fn idempotency_key(metadata: &MetadataMap) -> Result<Option<String>, Status> {
    match metadata.get(metadata::IDEMPOTENCY_KEY).map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(key)) if key.trim().is_empty() => Ok(None),
        Some(Ok(key)) if key.len() <= MAX_IDEMPOTENCY_KEY_CHARS => Ok(Some(key.trim().to_owned())),
        Some(Ok(_)) => Err(Status::invalid_argument(format!(
            "{} is longer than {MAX_IDEMPOTENCY_KEY_CHARS} characters",
            metadata::IDEMPOTENCY_KEY
        ))),
        Some(Err(_)) => Err(Status::invalid_argument(format!(
            "{} metadata is not valid ASCII text",
            metadata::IDEMPOTENCY_KEY
        ))),
    }
}

fn logged<T>(
    method: &'static str,
    caller: &Caller,
    result: Result<T, Status>,
    outcome: impl Fn(&T) -> &'static str,
) -> Result<Response<T>, Status> {
    let vin = caller.vin.as_deref().unwrap_or("-");
    match &result {
        Ok(answer) => tracing::info!(method, vin, request_id = %caller.request_id, outcome = outcome(answer), "ok"),
        Err(status) => {
            tracing::info!(method, vin, request_id = %caller.request_id, code = ?status.code(), message = status.message(), "rejected")
        }
    }
    result.map(Response::new)
}

impl SocialLoginService {
    fn start(
        &self,
        caller: &Caller,
        request: &Request<StartDeviceLoginRequest>,
    ) -> Result<StartDeviceLoginResponse, Status> {
        let vin = caller.vin()?;
        let key = idempotency_key(request.metadata())?;
        let provider = match SocialProvider::try_from(request.get_ref().provider) {
            Ok(SocialProvider::Unspecified) | Err(_) => {
                return Err(Status::invalid_argument(
                    "provider must be one of SOCIAL_PROVIDER_WECHAT, SOCIAL_PROVIDER_ALIPAY, SOCIAL_PROVIDER_WEIBO",
                ));
            }
            Ok(provider) => provider,
        };
        let settings = self.logins.settings();
        let started = self
            .logins
            .start(vin, key.as_deref(), provider)
            .map_err(|refused| match refused {
                StartRefused::Full => Status::resource_exhausted(format!(
                    "{} device logins are waiting, the most this partner holds; try again in a few minutes",
                    settings.max_logins
                )),
                StartRefused::TooManyForCar => Status::resource_exhausted(format!(
                    "this car already has {} device logins waiting; finish or let one expire",
                    settings.max_pending_per_car
                )),
            })?;
        tracing::debug!(provider = provider_name(provider), "device login started");
        Ok(started)
    }

    fn poll(&self, caller: &Caller, request: &PollDeviceLoginRequest) -> Result<PollDeviceLoginResponse, Status> {
        let vin = caller.vin()?;
        let device_code = &request.device_code;
        if !codes::is_device_code_shaped(device_code) {
            return Err(Status::invalid_argument(format!(
                "device_code must be the 1 to {} letters, digits, '-' or '_' StartDeviceLogin returned",
                codes::MAX_DEVICE_CODE_CHARS
            )));
        }
        // Unknown and another car's are one answer: a car learns nothing of other cars' codes.
        let outcome = self
            .logins
            .poll(vin, device_code)
            .map_err(|NotFound| Status::not_found("no device login with this device_code for this car"))?;
        Ok(PollDeviceLoginResponse { outcome: Some(outcome) })
    }
}

#[tonic::async_trait]
impl SocialLogin for SocialLoginService {
    async fn start_device_login(
        &self,
        request: Request<StartDeviceLoginRequest>,
    ) -> Result<Response<StartDeviceLoginResponse>, Status> {
        let caller = Caller::of(request.metadata());
        let result = self.start(&caller, &request);
        logged("StartDeviceLogin", &caller, result, |_| "started")
    }

    async fn poll_device_login(
        &self,
        request: Request<PollDeviceLoginRequest>,
    ) -> Result<Response<PollDeviceLoginResponse>, Status> {
        let caller = Caller::of(request.metadata());
        let result = self.poll(&caller, request.get_ref());
        // The sign-in is reported to the gateway in a header, so that it links the social
        // identity to the car's customer without decoding this contract.
        let signed_in = match &result {
            Ok(PollDeviceLoginResponse {
                outcome: Some(Outcome::Linked(linked)),
            }) => SocialProvider::try_from(linked.provider)
                .ok()
                .and_then(|p| metadata::format_signed_in(&provider_name(p).to_ascii_lowercase(), &linked.subject_id))
                .and_then(|value| value.parse().ok()),
            _ => None,
        };
        let mut response = logged("PollDeviceLogin", &caller, result, |answer| match answer.outcome {
            Some(Outcome::Pending(_)) => "authorization_pending",
            Some(Outcome::SlowDown(_)) => "slow_down",
            Some(Outcome::Denied(_)) => "access_denied",
            Some(Outcome::Expired(_)) => "expired_token",
            Some(Outcome::Linked(_)) => "linked",
            None => "-",
        })?;
        if let Some(value) = signed_in {
            response.metadata_mut().insert(metadata::SIGNED_IN, value);
        }
        Ok(response)
    }
}
