//! AdminService: operators list, impose and lift blocks. Every call needs the admin bearer
//! token when one is configured (checked in constant time); without one the service is
//! only served on a loopback address.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use domain::abuse::{Block, BlockKind, BlockSource, BlockTarget, RiskStore};
use domain::ports::Clock;
use proto::verify::admin::v1 as pb;
use secrecy::{ExposeSecret, SecretString};
use tonic::{Request, Response, Status};

use crate::error::ServiceError;
use crate::grpc::timestamp;
use crate::metrics::Metrics;

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
const MIN_BLOCK: Duration = Duration::from_secs(60);
const MAX_BLOCK: Duration = Duration::from_secs(365 * 86_400);
const MAX_DETAIL_LEN: usize = 500;

#[derive(Debug, Clone)]
pub struct AdminService {
    risk: Arc<dyn RiskStore>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

impl AdminService {
    pub fn new(risk: Arc<dyn RiskStore>, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Self {
        AdminService {
            risk,
            clock,
            metrics,
        }
    }

    /// The service behind the bearer-token check (`token` `None`: no check).
    pub fn into_server(
        self,
        token: Option<SecretString>,
    ) -> tonic::service::interceptor::InterceptedService<
        pb::admin_service_server::AdminServiceServer<Self>,
        impl tonic::service::Interceptor + Clone,
    > {
        // Digests of one length are compared, so the comparison's time says nothing of
        // the token's length or of how much of it matched.
        let digest = token.map(|t| crate::auth::token_digest(t.expose_secret()));
        let check = move |request: Request<()>| -> Result<Request<()>, Status> {
            let Some(digest) = &digest else {
                return Ok(request);
            };
            let given = crate::auth::bearer_token(request.metadata()).unwrap_or("");
            use subtle::ConstantTimeEq;
            if bool::from(crate::auth::token_digest(given).ct_eq(digest)) {
                Ok(request)
            } else {
                Err(Status::unauthenticated(
                    "AdminService needs `authorization: Bearer <admin token>`",
                ))
            }
        };
        pb::admin_service_server::AdminServiceServer::with_interceptor(self, check)
    }
}

fn kind_from_proto(raw: i32, field: &'static str) -> Result<Option<BlockKind>, ServiceError> {
    match pb::BlockKind::try_from(raw) {
        Ok(pb::BlockKind::Unspecified) => Ok(None),
        Ok(pb::BlockKind::Prefix) => Ok(Some(BlockKind::Prefix)),
        Ok(pb::BlockKind::Country) => Ok(Some(BlockKind::Country)),
        Ok(pb::BlockKind::DestinationHash) => Ok(Some(BlockKind::Destination)),
        Ok(pb::BlockKind::Ip) => Ok(Some(BlockKind::Ip)),
        Err(_) => Err(ServiceError::invalid(
            field,
            format!("unknown block kind {raw}"),
        )),
    }
}

fn kind_to_proto(k: BlockKind) -> pb::BlockKind {
    match k {
        BlockKind::Prefix => pb::BlockKind::Prefix,
        BlockKind::Country => pb::BlockKind::Country,
        BlockKind::Destination => pb::BlockKind::DestinationHash,
        BlockKind::Ip => pb::BlockKind::Ip,
    }
}

fn source_to_proto(s: BlockSource) -> pb::BlockSource {
    match s {
        BlockSource::Scoring => pb::BlockSource::Scoring,
        BlockSource::Provider => pb::BlockSource::Provider,
        BlockSource::Operator => pb::BlockSource::Operator,
    }
}

/// The target a request names, in the canonical form blocks are stored in.
fn target(kind: i32, value: &str) -> Result<BlockTarget, ServiceError> {
    let kind = kind_from_proto(kind, "kind")?
        .ok_or_else(|| ServiceError::invalid("kind", "is required"))?;
    let value = value.trim();
    if value.is_empty() {
        return Err(ServiceError::invalid("value", "is required"));
    }
    let value = match kind {
        BlockKind::Prefix => {
            let digits = value.strip_prefix('+').unwrap_or("");
            if !(2..=14).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ServiceError::invalid(
                    "value",
                    "a range is `+` and 2 to 14 digits, e.g. `+4479111`",
                ));
            }
            value.to_owned()
        }
        BlockKind::Country => domain::Region::parse(&value.to_ascii_uppercase())
            .map_err(|e| ServiceError::invalid("value", e))?
            .as_str()
            .to_owned(),
        BlockKind::Destination => {
            let hex = value.to_ascii_lowercase();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ServiceError::invalid(
                    "value",
                    "a destination hash is 64 hex digits (the `destination_hash` of the logs)",
                ));
            }
            hex
        }
        BlockKind::Ip => {
            let bad = || {
                ServiceError::invalid(
                    "value",
                    "an IP address (`203.0.113.7`, `2001:db8:1:2::/64`) or a network of \
                     scoring's size (`203.0.113.0/24`, `2001:db8:1::/48`)",
                )
            };
            let (address, length) = match value.split_once('/') {
                Some((address, length)) => (address, Some(length)),
                None => (value, None),
            };
            let ip: IpAddr = address.parse().map_err(|_| bad())?;
            match (length, ip) {
                (None, _) | (Some("64"), IpAddr::V6(_)) => ratelimit::ip_key(ip),
                (Some("24"), IpAddr::V4(_)) | (Some("48"), IpAddr::V6(_)) => fraud::network_of(ip),
                _ => return Err(bad()),
            }
        }
    };
    Ok(BlockTarget { kind, value })
}

fn block_to_proto(b: &Block) -> pb::Block {
    pb::Block {
        kind: kind_to_proto(b.target.kind).into(),
        value: b.target.value.clone(),
        reason: b.reason.clone(),
        detail: b.detail.clone(),
        source: source_to_proto(b.source).into(),
        shadow: b.shadow,
        create_time: Some(timestamp(b.created_at)),
        expire_time: Some(timestamp(b.expires_at)),
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminService {
    async fn list_blocks(
        &self,
        request: Request<pb::ListBlocksRequest>,
    ) -> Result<Response<pb::ListBlocksResponse>, Status> {
        let m = request.get_ref();
        let kind = kind_from_proto(m.kind, "kind")?;
        let limit = match m.page_size {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(ServiceError::invalid(
                    "page_size",
                    format!("must be at most {MAX_PAGE}"),
                )
                .into());
            }
            n => n,
        };
        let blocks = self
            .risk
            .list_blocks(kind, self.clock.now(), limit)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::ListBlocksResponse {
            blocks: blocks.iter().map(block_to_proto).collect(),
        }))
    }

    async fn create_block(
        &self,
        request: Request<pb::CreateBlockRequest>,
    ) -> Result<Response<pb::CreateBlockResponse>, Status> {
        let m = request.get_ref();
        let target = target(m.kind, &m.value)?;
        let detail = m.detail.trim();
        if detail.is_empty()
            || detail.len() > MAX_DETAIL_LEN
            || detail.chars().any(char::is_control)
        {
            return Err(ServiceError::invalid(
                "detail",
                format!("say why, in 1 to {MAX_DETAIL_LEN} characters without control characters"),
            )
            .into());
        }
        let duration = m
            .duration
            .as_ref()
            .and_then(|d| Duration::try_from(*d).ok())
            .filter(|d| (MIN_BLOCK..=MAX_BLOCK).contains(d))
            .ok_or_else(|| {
                ServiceError::invalid("duration", "must be from 1 minute to 365 days")
            })?;
        let now = self.clock.now();
        let block = Block {
            target: target.clone(),
            reason: "OPERATOR".into(),
            detail: detail.to_owned(),
            source: BlockSource::Operator,
            shadow: false,
            created_at: now,
            expires_at: now
                + chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::days(365)),
        };
        self.risk
            .add_block(&block)
            .await
            .map_err(ServiceError::from)?;
        self.metrics.block_imposed(
            target.kind.as_str(),
            BlockSource::Operator.as_str(),
            "OPERATOR",
        );
        tracing::info!(block = %target, "block imposed by an operator");
        let in_force = self
            .risk
            .active_blocks(std::slice::from_ref(&target), now)
            .await
            .map_err(ServiceError::from)?
            .into_iter()
            .find(|b| !b.shadow)
            .unwrap_or(block);
        Ok(Response::new(pb::CreateBlockResponse {
            block: Some(block_to_proto(&in_force)),
        }))
    }

    async fn lift_block(
        &self,
        request: Request<pb::LiftBlockRequest>,
    ) -> Result<Response<pb::LiftBlockResponse>, Status> {
        let m = request.get_ref();
        let target = target(m.kind, &m.value)?;
        let lifted = self
            .risk
            .lift_block(&target, self.clock.now())
            .await
            .map_err(ServiceError::from)?;
        tracing::info!(block = %target, lifted, "block lifted by an operator");
        Ok(Response::new(pb::LiftBlockResponse { lifted }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_canonical_or_refused_with_the_field() {
        let t = |k: pb::BlockKind, v: &str| target(k.into(), v);
        assert_eq!(t(pb::BlockKind::Country, "gb").expect("ok").value, "GB");
        assert_eq!(
            t(pb::BlockKind::Prefix, "+4479111").expect("ok").value,
            "+4479111"
        );
        assert_eq!(
            t(pb::BlockKind::Ip, "2001:db8:1:2:3:4:5:6")
                .expect("ok")
                .value,
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            t(pb::BlockKind::Ip, "2001:db8:1:2::/64").expect("ok").value,
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            t(pb::BlockKind::DestinationHash, &"AB".repeat(32))
                .expect("ok")
                .value,
            "ab".repeat(32)
        );
        // Networks of scoring's size, by any address inside them.
        assert_eq!(
            t(pb::BlockKind::Ip, "203.0.113.77/24").expect("ok").value,
            "203.0.113.0/24"
        );
        assert_eq!(
            t(pb::BlockKind::Ip, "2001:db8:1:2::/48").expect("ok").value,
            "2001:db8:1::/48"
        );
        for (kind, value) in [
            (pb::BlockKind::Unspecified, "+44"),
            (pb::BlockKind::Prefix, "4479111"),
            (pb::BlockKind::Prefix, "+44 79"),
            (pb::BlockKind::Country, "XX"),
            (pb::BlockKind::DestinationHash, "abc"),
            (pb::BlockKind::Ip, "nowhere"),
            (pb::BlockKind::Ip, ""),
            (pb::BlockKind::Ip, "203.0.113.0/16"),
            (pb::BlockKind::Ip, "203.0.113.0/64"),
            (pb::BlockKind::Ip, "2001:db8::/24"),
            (pb::BlockKind::Ip, "203.0.113.0/"),
        ] {
            let err = target(kind.into(), value).expect_err(value);
            assert!(
                matches!(err, ServiceError::InvalidArgument { .. }),
                "{value}"
            );
        }
    }
}
