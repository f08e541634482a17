//! The gRPC edge: parses requests into domain types (invalid input becomes
//! `INVALID_ARGUMENT` with a field violation) and maps domain values back to proto.

use std::net::IpAddr;
use std::sync::Arc;

use domain::{
    Channel, Destination, Email, IdempotencyKey, Locale, OtpCode, PhoneNumber, Purpose, Region,
    Verification, VerificationId, VerificationStatus,
};
use policy::{Policies, PurposePolicy};
use proto::verify::v1 as pb;
use tonic::{Request, Response, Status};

use crate::auth::{self, Caller, Callers};
use crate::error::ServiceError;
use crate::service::{StartInput, VerifyCore};

/// The longest free-text field accepted (identity and similar).
const MAX_IDENTITY_LEN: usize = 256;

#[derive(Debug, Clone)]
pub struct GrpcService {
    core: VerifyCore,
    /// `None`: every call is answered (no callers configured).
    callers: Option<Arc<Callers>>,
}

impl GrpcService {
    pub fn new(core: VerifyCore, callers: Option<Arc<Callers>>) -> Self {
        GrpcService { core, callers }
    }

    /// The caller of `request`, from its bearer token and its client certificate; `None`
    /// when no callers are configured.
    fn caller<T>(&self, request: &Request<T>) -> Result<Option<Arc<Caller>>, ServiceError> {
        let Some(callers) = &self.callers else {
            return Ok(None);
        };
        let subject = request
            .extensions()
            .get::<crate::tls::Peer>()
            .and_then(|peer| peer.subject.as_deref());
        callers
            .identify(auth::bearer_token(request.metadata()), subject)
            .map(Some)
            .map_err(ServiceError::Unauthenticated)
    }

    pub fn into_server(self) -> pb::verify_service_server::VerifyServiceServer<Self> {
        pb::verify_service_server::VerifyServiceServer::new(self)
    }
}

fn parse_channel(raw: i32) -> Result<Option<Channel>, ServiceError> {
    match pb::Channel::try_from(raw) {
        Ok(pb::Channel::Unspecified) => Ok(None),
        Ok(pb::Channel::Sms) => Ok(Some(Channel::Sms)),
        Ok(pb::Channel::Call) => Ok(Some(Channel::Call)),
        Ok(pb::Channel::Email) => Ok(Some(Channel::Email)),
        Ok(pb::Channel::Whatsapp) => Ok(Some(Channel::Whatsapp)),
        Ok(pb::Channel::Sna) => Ok(Some(Channel::Sna)),
        Err(_) => Err(ServiceError::invalid(
            "channel",
            format!("unknown channel value {raw}"),
        )),
    }
}

fn channel_to_proto(c: Channel) -> pb::Channel {
    match c {
        Channel::Sms => pb::Channel::Sms,
        Channel::Call => pb::Channel::Call,
        Channel::Email => pb::Channel::Email,
        Channel::Whatsapp => pb::Channel::Whatsapp,
        Channel::Sna => pb::Channel::Sna,
    }
}

fn status_to_proto(s: VerificationStatus) -> pb::VerificationStatus {
    match s {
        VerificationStatus::Pending => pb::VerificationStatus::Pending,
        VerificationStatus::Approved => pb::VerificationStatus::Approved,
        VerificationStatus::Canceled => pb::VerificationStatus::Canceled,
        VerificationStatus::Expired => pb::VerificationStatus::Expired,
        VerificationStatus::MaxAttemptsReached => pb::VerificationStatus::MaxAttemptsReached,
        VerificationStatus::Failed => pb::VerificationStatus::Failed,
        VerificationStatus::Blocked => pb::VerificationStatus::Blocked,
    }
}

pub(crate) fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn to_proto(v: &Verification) -> pb::Verification {
    pb::Verification {
        id: v.id().to_string(),
        purpose: v.purpose().to_string(),
        channel: channel_to_proto(v.channel()).into(),
        status: status_to_proto(v.status()).into(),
        to_masked: v.to_masked().to_owned(),
        attempts_left: v.checks_left(),
        sends_left: v.sends_left(),
        create_time: Some(timestamp(v.created_at())),
        update_time: Some(timestamp(v.updated_at())),
        expire_time: Some(timestamp(v.expires_at())),
        failure_code: v.failure_code().unwrap_or(0),
        allow_fallback: v.allow_fallback(),
        channels_tried: v
            .channels_tried()
            .iter()
            .map(|c| channel_to_proto(*c).into())
            .collect(),
        fallback_reason: v.fallback_reason().map(|r| r.code()).unwrap_or_default(),
        // A pending verification without a provider id is only ever answered when its
        // first send was not confirmed (one in flight is answered ABORTED).
        delivery_status: match v.delivery_status() {
            Some(s) => s.as_str().to_owned(),
            None if v.status() == VerificationStatus::Pending && v.provider_sid().is_none() => {
                "unconfirmed".to_owned()
            }
            None => String::new(),
        },
        risk: v.risk().map(risk_to_proto),
    }
}

fn risk_to_proto(r: &domain::abuse::RiskAssessment) -> pb::RiskAssessment {
    use domain::abuse::RiskDecision;
    pb::RiskAssessment {
        decision: match r.decision {
            RiskDecision::Allow => pb::RiskDecision::Allow,
            RiskDecision::StepUp => pb::RiskDecision::StepUp,
            RiskDecision::Block => pb::RiskDecision::Block,
        }
        .into(),
        score: r.score,
        reasons: r
            .reasons
            .iter()
            .map(|reason| pb::RiskReason {
                code: reason.code.clone(),
                message: reason.message.clone(),
                weight: reason.weight,
            })
            .collect(),
        shadow: r.shadow,
    }
}

fn parse_id(raw: &str) -> Result<VerificationId, ServiceError> {
    if raw.is_empty() {
        return Err(ServiceError::invalid("id", "is required"));
    }
    raw.parse().map_err(|e| ServiceError::invalid("id", e))
}

fn optional<T, E: ToString>(
    raw: &str,
    field: &'static str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<Option<T>, ServiceError> {
    if raw.is_empty() {
        Ok(None)
    } else {
        parse(raw)
            .map(Some)
            .map_err(|e| ServiceError::invalid(field, e))
    }
}

impl GrpcService {
    /// Parses a start request with the purposes' policies of this service.
    fn parse_start(&self, m: &pb::StartVerificationRequest) -> Result<StartInput, ServiceError> {
        parse_start(m, |purpose| self.core.policy(purpose))
    }
}

/// Parses a start request. The purpose comes first because its policy (from `policy`)
/// gives the default region for numbers typed without a country code.
fn parse_start<'p>(
    m: &pb::StartVerificationRequest,
    policy: impl FnOnce(&Purpose) -> Result<&'p PurposePolicy, ServiceError>,
) -> Result<StartInput, ServiceError> {
    if m.purpose.is_empty() {
        return Err(ServiceError::invalid("purpose", "is required"));
    }
    let purpose = Purpose::parse(&m.purpose).map_err(|e| ServiceError::invalid("purpose", e))?;
    let policy = policy(&purpose)?;
    let region =
        optional(&m.default_region, "default_region", Region::parse)?.or(policy.default_region());
    let channel = parse_channel(m.channel)?;
    let raw_to = m.to.trim();
    if raw_to.is_empty() {
        return Err(ServiceError::invalid("to", "is required"));
    }
    let to = if channel == Some(Channel::Email) || raw_to.contains('@') {
        Email::parse(raw_to)
            .map(Destination::Email)
            .map_err(|e| ServiceError::invalid("to", e))?
    } else {
        let phone = PhoneNumber::parse(raw_to, region).map_err(|e| {
            let hint = if region.is_none() && !raw_to.starts_with('+') {
                "; write it with a country code (+1 …) or set default_region"
            } else {
                ""
            };
            ServiceError::invalid("to", format!("{e}{hint}"))
        })?;
        Destination::Phone(phone)
    };
    let identity = match m.identity.trim() {
        "" => None,
        s if s.len() > MAX_IDENTITY_LEN || s.chars().any(char::is_control) => {
            return Err(ServiceError::invalid(
                "identity",
                format!("must be at most {MAX_IDENTITY_LEN} characters without control characters"),
            ));
        }
        s => Some(s.to_owned()),
    };
    Ok(StartInput {
        purpose,
        to,
        channel,
        locale: optional(&m.locale, "locale", Locale::parse)?,
        identity,
        owner: String::new(),
        client_ip: optional(&m.client_ip, "client_ip", |s| s.parse::<IpAddr>())?,
        idempotency_key: optional(&m.idempotency_key, "idempotency_key", IdempotencyKey::parse)?,
        allow_fallback: m.allow_fallback,
        step_up_completed: m.step_up_completed,
    })
}

/// Parses a check request: the verification's id and the code.
fn parse_check(
    m: &pb::CheckVerificationRequest,
) -> Result<(VerificationId, OtpCode), ServiceError> {
    let id = parse_id(&m.id)?;
    if m.code.is_empty() {
        return Err(ServiceError::invalid("code", "is required"));
    }
    let code = OtpCode::parse(&m.code).map_err(|e| ServiceError::invalid("code", e))?;
    Ok((id, code))
}

/// The handlers' request parsing, for the fuzz targets in `fuzz/` (which decode the
/// messages from arbitrary bytes with prost first). Not an API: nothing in the gateway
/// calls it, and it may change with the handlers.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// What StartVerification makes of `m` before anything is written, with `policies`
    /// standing in for the service's.
    pub fn parse_start(
        m: &pb::StartVerificationRequest,
        policies: &Policies,
    ) -> Result<StartInput, ServiceError> {
        super::parse_start(m, |purpose| {
            policies
                .get(purpose)
                .map_err(|e| ServiceError::invalid("purpose", e))
        })
    }

    /// What CheckVerification makes of `m`.
    pub fn parse_check(
        m: &pb::CheckVerificationRequest,
    ) -> Result<(VerificationId, OtpCode), ServiceError> {
        super::parse_check(m)
    }

    /// What GetVerification and CancelVerification make of their `id`.
    pub fn parse_id(raw: &str) -> Result<VerificationId, ServiceError> {
        super::parse_id(raw)
    }

    /// A request's channel field.
    pub fn parse_channel(raw: i32) -> Result<Option<Channel>, ServiceError> {
        super::parse_channel(raw)
    }
}

/// Whether `caller` may make this start: its purpose, and a step-up asserted by itself.
fn permitted(caller: &Caller, input: &StartInput) -> Result<(), ServiceError> {
    if !caller.may_use(input.purpose.as_str()) {
        return Err(ServiceError::PermissionDenied {
            reason: "PURPOSE_NOT_ALLOWED",
            message: format!(
                "caller `{}` may not start verifications for purpose `{}`",
                caller.name, input.purpose
            ),
        });
    }
    if input.step_up_completed && !caller.trusted_step_up {
        return Err(ServiceError::PermissionDenied {
            reason: "STEP_UP_NOT_TRUSTED",
            message: format!(
                "caller `{}` may not assert step_up_completed (callers.{}.trusted_step_up)",
                caller.name, caller.name
            ),
        });
    }
    Ok(())
}

/// The owner of what `caller` starts, and of what it may read, check and cancel: its name,
/// or nobody's (empty) when the gateway serves without callers.
fn owner(caller: &Option<Arc<Caller>>) -> &str {
    caller.as_ref().map_or("", |c| c.name.as_str())
}

/// The audit line of one VerifyService call: who called, for which purpose, which RPC,
/// its gRPC code and the verification it concerned. Never a destination or a code.
struct Audit {
    rpc: &'static str,
    caller: Option<Arc<Caller>>,
    purpose: String,
    verification_id: String,
    status: Option<VerificationStatus>,
}

impl Audit {
    fn new(rpc: &'static str) -> Audit {
        Audit {
            rpc,
            caller: None,
            purpose: String::new(),
            verification_id: String::new(),
            status: None,
        }
    }

    /// Notes the verification a call asked for, when its id is one: also for a call that is
    /// then refused, which is what an audit of access attempts looks for.
    fn asked_for(&mut self, raw_id: &str) {
        if let Ok(id) = raw_id.parse::<VerificationId>() {
            self.verification_id = id.to_string();
        }
    }

    /// Notes the verification the call ended with.
    fn saw(&mut self, v: &Verification) {
        self.purpose = v.purpose().to_string();
        self.verification_id = v.id().to_string();
        self.status = Some(v.status());
    }

    fn log<T>(&self, result: &Result<T, Status>) {
        let code = match result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        tracing::info!(
            target: "audit",
            rpc = self.rpc,
            caller = owner(&self.caller),
            purpose = %self.purpose,
            code = ?code,
            verification_id = %self.verification_id,
            status = self.status.map_or("", VerificationStatus::as_str),
            "call"
        );
    }
}

impl GrpcService {
    async fn start(
        &self,
        request: Request<pb::StartVerificationRequest>,
        audit: &mut Audit,
    ) -> Result<Response<pb::StartVerificationResponse>, Status> {
        audit.caller = self.caller(&request)?;
        let mut input = self.parse_start(request.get_ref())?;
        audit.purpose = input.purpose.to_string();
        if let Some(caller) = &audit.caller {
            permitted(caller, &input)?;
            input.owner.clone_from(&caller.name);
        }
        let started = self.core.start(input).await?;
        audit.saw(&started.verification);
        Ok(Response::new(pb::StartVerificationResponse {
            verification: Some(to_proto(&started.verification)),
            starts_left: started.starts_left,
        }))
    }

    async fn check(
        &self,
        request: Request<pb::CheckVerificationRequest>,
        audit: &mut Audit,
    ) -> Result<Response<pb::CheckVerificationResponse>, Status> {
        audit.asked_for(&request.get_ref().id);
        audit.caller = self.caller(&request)?;
        let (id, code) = parse_check(request.get_ref())?;
        let checked = self.core.check(&id, &code, owner(&audit.caller)).await?;
        audit.saw(&checked.verification);
        Ok(Response::new(pb::CheckVerificationResponse {
            verification: Some(to_proto(&checked.verification)),
            valid: checked.valid,
            attempts_left: checked.attempts_left,
        }))
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelVerificationRequest>,
        audit: &mut Audit,
    ) -> Result<Response<pb::CancelVerificationResponse>, Status> {
        audit.asked_for(&request.get_ref().id);
        audit.caller = self.caller(&request)?;
        let id = parse_id(&request.get_ref().id)?;
        let v = self.core.cancel(&id, owner(&audit.caller)).await?;
        audit.saw(&v);
        Ok(Response::new(pb::CancelVerificationResponse {
            verification: Some(to_proto(&v)),
        }))
    }

    async fn get(
        &self,
        request: Request<pb::GetVerificationRequest>,
        audit: &mut Audit,
    ) -> Result<Response<pb::GetVerificationResponse>, Status> {
        audit.asked_for(&request.get_ref().id);
        audit.caller = self.caller(&request)?;
        let id = parse_id(&request.get_ref().id)?;
        let v = self.core.get(&id, owner(&audit.caller)).await?;
        audit.saw(&v);
        Ok(Response::new(pb::GetVerificationResponse {
            verification: Some(to_proto(&v)),
        }))
    }
}

#[tonic::async_trait]
impl pb::verify_service_server::VerifyService for GrpcService {
    async fn start_verification(
        &self,
        request: Request<pb::StartVerificationRequest>,
    ) -> Result<Response<pb::StartVerificationResponse>, Status> {
        let mut audit = Audit::new("StartVerification");
        let result = self.start(request, &mut audit).await;
        audit.log(&result);
        result
    }

    async fn check_verification(
        &self,
        request: Request<pb::CheckVerificationRequest>,
    ) -> Result<Response<pb::CheckVerificationResponse>, Status> {
        let mut audit = Audit::new("CheckVerification");
        let result = self.check(request, &mut audit).await;
        audit.log(&result);
        result
    }

    async fn cancel_verification(
        &self,
        request: Request<pb::CancelVerificationRequest>,
    ) -> Result<Response<pb::CancelVerificationResponse>, Status> {
        let mut audit = Audit::new("CancelVerification");
        let result = self.cancel(request, &mut audit).await;
        audit.log(&result);
        result
    }

    async fn get_verification(
        &self,
        request: Request<pb::GetVerificationRequest>,
    ) -> Result<Response<pb::GetVerificationResponse>, Status> {
        let mut audit = Audit::new("GetVerification");
        let result = self.get(request, &mut audit).await;
        audit.log(&result);
        result
    }
}
