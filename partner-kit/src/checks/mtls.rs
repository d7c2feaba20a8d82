//! Mutual TLS: the adapter completes a handshake with the gateway's client certificate, and
//! refuses a client without one, a self-made one claiming to be the gateway, and a car's.

use tonic::Code;

use super::{GIVE_UP_AFTER, needs_a_method};
use crate::connection::{Answer, CallMetadata, Connection, TimedAnswer};
use crate::report::{Contract, Outcome, section};
use crate::tls::ClientCertificate;
use crate::{Kit, Probe};

/// Require a client certificate and trust only the gateway-clients CA for it.
pub const CONNECTING: Contract = Contract::new(
    section::CONNECTING,
    "require a client certificate and take only the gateway-clients CA as trust anchor for clients",
);

/// A car's certificate must not get in.
pub const ONLY_THE_GATEWAY: Contract = Contract::new(
    section::CONNECTING,
    "never trust a CA that also signs cars, and check the role (OU=gateway-client) on every call: PERMISSION_DENIED otherwise",
);

/// Certificates from the right CA with the wrong role are refused on every call.
pub const ROLE: Contract = Contract::new(
    section::CONNECTING,
    "check the role on every call: exactly one OU, gateway-client, and one CN; PERMISSION_DENIED otherwise",
);

/// The handshake with the gateway's client certificate completes and a call is answered.
pub async fn gateway_certificate(kit: &Kit) -> Outcome {
    let mut connection = match kit.connect_as_gateway().await {
        Ok(connection) => connection,
        Err(e) => {
            return Outcome::Fail(format!(
                "the handshake with the gateway's client certificate failed: {e}"
            ));
        }
    };
    let (method, answered) = call_any(kit, &mut connection, kit.harmless_call()).await;
    match &answered.answer {
        Answer::Transport(e) => Outcome::Fail(format!(
            "the connection with the gateway's client certificate failed at the first call: {e}"
        )),
        Answer::Status(code @ (Code::PermissionDenied | Code::Unauthenticated), _) => Outcome::Fail(format!(
            "{method} refused the gateway's own client certificate with {}: {}",
            crate::connection::code_name(*code),
            answered.answer.describe()
        )),
        answer => Outcome::Pass(format!("handshake completed; {method} answered {}", answer.describe())),
    }
}

/// A client without a certificate is refused.
pub async fn no_client_certificate(kit: &Kit) -> Outcome {
    refused(kit, None, "a client without a certificate").await
}

/// A self-signed certificate claiming to be the gateway is refused.
pub async fn forged_gateway_certificate(kit: &Kit) -> Outcome {
    match ClientCertificate::forged_gateway_client() {
        Ok(forged) => {
            refused(
                kit,
                Some(&forged),
                "a self-signed certificate claiming OU=gateway-client, CN=gateway",
            )
            .await
        }
        Err(e) => Outcome::Skip(format!("could not make a certificate: {e:#}")),
    }
}

/// A car's own certificate is refused.
pub async fn vehicle_certificate(kit: &Kit) -> Outcome {
    match &kit.config.vehicle {
        Some(car) => refused(kit, Some(car), "a car's certificate").await,
        None => Outcome::Skip(
            "no --vehicle-cert/--vehicle-key (`certs vehicle <VIN>` makes one) nor --vehicles-ca-cert/--vehicles-ca-key given: a car's certificate was not tried".into(),
        ),
    }
}

/// Makes `probe` as a probe car; without one, calls a method that cannot exist, since any
/// status proves TLS and HTTP/2 work. The method called, and how it ended.
async fn call_any(kit: &Kit, connection: &mut Connection, probe: Option<Probe>) -> (String, TimedAnswer) {
    let (method, message) = match probe {
        Some(probe) => (probe.method, probe.message),
        None => (kit.method_path("PartnerKitNoSuchMethod"), bytes::Bytes::new()),
    };
    let answered = connection
        .call(&method, message, &CallMetadata::from_probe_car(), GIVE_UP_AFTER)
        .await;
    (method, answered)
}

/// PASS if the adapter refuses `who` (presenting `certificate`) at the handshake or with
/// UNAUTHENTICATED/PERMISSION_DENIED on a call that needs a car.
async fn refused(kit: &Kit, certificate: Option<&ClientCertificate>, who: &str) -> Outcome {
    let mut connection = match kit.connect(certificate).await {
        Ok(connection) => connection,
        Err(e) if e.refused_by_adapter => return Outcome::Pass(format!("{who}: refused at the handshake ({e})")),
        Err(e) => return Outcome::Fail(format!("{who}: not tried, the kit cannot connect ({e})")),
    };
    let probe = kit.call_needing_a_car();
    let had_a_method = probe.is_some();
    let (method, answered) = call_any(kit, &mut connection, probe).await;
    match &answered.answer {
        Answer::Transport(e) => Outcome::Pass(format!("{who}: refused ({e})")),
        Answer::Status(Code::PermissionDenied | Code::Unauthenticated, _) => Outcome::Pass(format!(
            "{who}: the handshake completed but {method} was refused: {}",
            answered.answer.describe()
        )),
        _ if !had_a_method => Outcome::Skip(format!(
            "{who} completed the handshake and {method} answered {}; {}",
            answered.answer.describe(),
            needs_a_method(kit).reason()
        )),
        answer => Outcome::Fail(format!(
            "{who} was let in: {method} answered {} (whoever holds such a certificate can call you directly and put any VIN in x-vehicle-vin)",
            answer.describe()
        )),
    }
}

/// Certificates the adapter's TLS trusts (signed by the gateway-clients CA) whose subject is not
/// the gateway's are refused: one with a car's role, and one with two roles, the gateway's first.
pub async fn role_check(kit: &Kit) -> Outcome {
    let Some(ca) = &kit.config.gateway_clients_ca else {
        return Outcome::Skip(
            "no --gateway-clients-ca-cert/--gateway-clients-ca-key (or --pki) given: the role check was not tried"
                .into(),
        );
    };
    let subjects: [(&[&str], &str); 2] = [
        (&[proto::identity::VEHICLE_ROLE], "OU=vehicle"),
        (
            &["gateway-client", proto::identity::VEHICLE_ROLE],
            "OU=gateway-client and OU=vehicle",
        ),
    ];
    let mut seen = Vec::new();
    for (ous, what) in subjects {
        let certificate = match ClientCertificate::mint(ca, ous, "gateway") {
            Ok(certificate) => certificate,
            Err(e) => {
                return Outcome::Skip(format!(
                    "could not sign a certificate with the gateway-clients CA: {e:#}"
                ));
            }
        };
        let who = format!("a certificate of the gateway-clients CA with {what}");
        match refused(kit, Some(&certificate), &who).await {
            Outcome::Pass(reason) => seen.push(reason),
            other => return other,
        }
    }
    Outcome::Pass(seen.join("; "))
}
